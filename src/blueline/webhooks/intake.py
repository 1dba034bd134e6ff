"""Webhook intake, independent of the web framework: verify, record, apply, decide the
outcome (the route maps outcomes to HTTP). Concurrent deliveries are looked up and
applied in batches (``batching``).

Every failure before verification succeeds (unknown setup, bad signature, stale
timestamp, a closed setup) ends as :attr:`Outcome.REJECTED` after the same work: any path
id, well-formed or not, costs one indexed lookup of one fixed-length key, and a miss is
checked against a decoy secret that goes through the same vault decryption and HMAC as
a real one. Nothing before verification depends on the id: the only rate limit charged
then is the client address's budget for *rejections*, so a flood of forged deliveries
spends its sender's budget and never a setup's.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from blueline import ids
from blueline.batching import Batcher
from blueline.domain import ACTOR_PROVIDER, Origin
from blueline.errors import DecryptionFailed, StorageUnavailable
from blueline.events.publisher import Publisher
from blueline.persistence.database import Database
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.types import utcnow
from blueline.persistence.webhooks import DeliveryStore, SetupSecret
from blueline.provisioning.assignment import Assigner, AssignResult, Placement
from blueline.provisioning.lifecycle import Lifecycle
from blueline.rate_limit import RateLimiter
from blueline.security.vault import Vault, webhook_secret_aad
from blueline.webhooks import signature

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
DECOY_SETUP_ID = "ims_00000000000000000000000000"


class Outcome(StrEnum):
    REJECTED = "rejected"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    MALFORMED = "malformed"
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    UNKNOWN_REQUEST = "unknown_request"
    CONFLICT = "conflict"
    # A placement for a line already released: acknowledged, changes nothing.
    RELEASED = "released"


@dataclass(frozen=True)
class Assignment:
    subaccount_id: str
    request_id: str
    phone_number: str


@dataclass(frozen=True)
class Delivery:
    """A verified delivery, waiting for its batch."""

    workspace_id: str
    setup_id: str
    webhook_id: str
    event_type: str
    assignment: Assignment | None


def parse_event(body: bytes) -> tuple[str, Assignment | None] | None:
    """``(type, assignment)``; None when the body is not a well-formed event."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return None
    if data["type"] != "line.assigned":
        return data["type"], None
    payload = data.get("data")
    if not isinstance(payload, dict):
        return None
    fields = (payload.get("subaccount_id"), payload.get("request_id"), payload.get("phone_number"))
    if not all(isinstance(f, str) and 0 < len(f) <= 64 for f in fields):
        return None
    subaccount_id, request_id, number = (str(f) for f in fields)
    if not E164.match(number):
        return None
    return data["type"], Assignment(subaccount_id, request_id, number)


class WebhookLimits:
    """Rejections per client address (charged only when a delivery fails verification)
    and verified deliveries per setup (charged only after verification)."""

    def __init__(self, rejections_per_client_per_s: float, per_setup_per_s: float) -> None:
        self.rejections = RateLimiter(
            rejections_per_client_per_s, burst=max(rejections_per_client_per_s * 2, 1)
        )
        self.verified = RateLimiter(per_setup_per_s, burst=max(per_setup_per_s * 2, 1))


class WebhookIntake:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        assigner: Assigner,
        lifecycle: Lifecycle,
        publisher: Publisher,
        limits: WebhookLimits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._vault = vault
        self._assigner = assigner
        self._lifecycle = lifecycle
        self._publisher = publisher
        self._limits = limits
        self._clock = clock
        self._store = DeliveryStore(db.dialect)
        self._decoy = vault.encrypt(
            signature.generate_secret(), aad=webhook_secret_aad(DECOY_SETUP_ID)
        )
        # Concurrent deliveries share their round trips: the lookups of those that
        # arrive together are one statement, their applies one transaction. Alone, a
        # delivery is a batch of one. A setup's deliveries never share an apply batch.
        self._lookups: Batcher[str, SetupSecret] = Batcher(
            self._lookup_batch, max_size=128, concurrency=2, name="blueline-webhook-lookups"
        )
        # A workspace's deliveries are in one running batch at most: every batch locks
        # the counters of its workspaces from the assignment to commit, so a second
        # batch of the same workspace would only wait for that lock, and the deliveries
        # it took would miss the next batch. Two batches at once, so other workspaces'
        # deliveries have a lane while one workspace's batch runs.
        self._applies: Batcher[Delivery, Outcome] = Batcher(
            self._apply_batch,
            max_size=64,
            concurrency=2,
            key=lambda d: d.setup_id,
            group=lambda d: d.workspace_id,
            # Anything but an outage may be one delivery's doing: the others go on alone.
            alone_on=lambda exc: not isinstance(exc, StorageUnavailable),
            name="blueline-webhook-applies",
        )

    async def handle(
        self, setup_id: str, headers: Mapping[str, str | None], body: bytes, client: str
    ) -> Outcome:
        if len(body) > MAX_BODY_BYTES:
            return Outcome.TOO_LARGE
        if not self._limits.rejections.has_tokens(client):
            return Outcome.RATE_LIMITED
        lookup = setup_id if _well_formed(setup_id) else DECOY_SETUP_ID
        found = await self._lookups.submit(lookup)
        usable = found.usable
        aad = webhook_secret_aad(found.setup_id if usable else DECOY_SETUP_ID)
        try:
            secret = self._vault.decrypt(found.sealed_secret, aad=aad)
        except DecryptionFailed:
            logger.error("the webhook secret of a setup does not decrypt")
            usable, secret = False, signature.generate_secret()
        verified = signature.verify(
            [secret],
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            body,
            self._clock(),
        )
        if not verified or not usable or found.workspace_id is None:
            self._limits.rejections.allow(client)
            return Outcome.REJECTED
        if not self._limits.verified.allow(found.setup_id):
            return Outcome.RATE_LIMITED
        webhook_id = headers["webhook-id"]
        assert webhook_id is not None  # verified above
        parsed = parse_event(body)
        if parsed is None:
            return Outcome.MALFORMED
        event_type, assignment = parsed
        if assignment is not None and assignment.subaccount_id != found.subaccount_id:
            return Outcome.MALFORMED
        return await self._applies.submit(
            Delivery(found.workspace_id, found.setup_id, webhook_id, event_type[:64], assignment)
        )

    async def _lookup_batch(self, setup_ids: list[str]) -> list[SetupSecret]:
        async with self._db.read() as conn:
            found = await self._store.secrets_of(conn, sorted(set(setup_ids)), self._decoy)
        return [found[setup_id] for setup_id in setup_ids]

    async def _apply_batch(self, deliveries: list[Delivery]) -> list[Outcome]:
        """Apply and record a batch in one transaction (one delivery per setup).

        A re-delivery is evaluated again rather than looked up: assignments only move
        forward, so the same delivery always yields the same answer and never a second
        change, and a delivery that once named an unknown request is applied once the
        line exists.
        """
        now = utcnow()
        placements = [
            Placement(
                d.workspace_id,
                d.setup_id,
                d.assignment.request_id,
                d.assignment.phone_number,
                Origin(ACTOR_PROVIDER, d.webhook_id[:64]),
            )
            for d in deliveries
            if d.assignment is not None
        ]
        outcomes: list[Outcome] = []
        events: list[LiveEvent] = []
        releases: list[tuple[str, Origin]] = []
        # Built before the transaction: from the assignment on, the workspace is locked
        # until commit, and every delivery of the workspace waits on that lock.
        log = [
            {
                "id": ids.new_id(ids.DELIVERY),
                "setup_id": d.setup_id,
                "webhook_id": d.webhook_id,
                "event_type": d.event_type,
                "outcome": "ignored",
            }
            for d in deliveries
        ]
        async with self._db.write() as conn:
            placed = await self._assigner.place(conn, placements, now)
            assigned = iter(placed.results)
            for delivery, logged_row in zip(deliveries, log, strict=True):
                logged = "ignored"
                outcome = Outcome.IGNORED
                if delivery.assignment is not None:
                    result = next(assigned)
                    outcome = _OUTCOMES[result.result]
                    logged = result.result.value
                    if result.result is AssignResult.RELEASED and result.line_id is not None:
                        origin = Origin(ACTOR_PROVIDER, delivery.webhook_id[:64])
                        operation = await self._lifecycle.note_release_upstream(
                            conn,
                            delivery.setup_id,
                            result.line_id,
                            delivery.assignment.request_id,
                            origin,
                        )
                        releases.append((operation, origin))
                    if outcome is Outcome.CONFLICT:
                        logger.warning(
                            "conflicting assignment refused: setup %s request %s already has "
                            "another number",
                            delivery.setup_id,
                            delivery.assignment.request_id,
                        )
                outcomes.append(outcome)
                logged_row["outcome"] = logged
            await self._assigner.finish(
                conn, placed, now, along=[self._store.record_many(log, now)]
            )
        for result in placed.results:
            events += result.events
        self._publisher.publish_soon(events)
        for operation, origin in releases:
            self._lifecycle.release_upstream_soon(operation, origin)
        return outcomes

    async def close(self) -> None:
        await self._lookups.close()
        await self._applies.close()


_OUTCOMES = {
    AssignResult.APPLIED: Outcome.ACCEPTED,
    AssignResult.DUPLICATE: Outcome.DUPLICATE,
    AssignResult.CONFLICT: Outcome.CONFLICT,
    AssignResult.UNKNOWN_REQUEST: Outcome.UNKNOWN_REQUEST,
    AssignResult.RELEASED: Outcome.RELEASED,
}


def _well_formed(setup_id: str) -> bool:
    return ids.prefix_of(setup_id) == ids.SETUP
