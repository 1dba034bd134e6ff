"""Webhook intake, independent of the web framework: verify, record, apply, decide the
outcome (the route maps outcomes to HTTP).

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
from typing import Any

from blueline import ids
from blueline.domain import ACTOR_PROVIDER, Origin
from blueline.errors import DecryptionFailed
from blueline.events.publisher import Publisher
from blueline.persistence.database import Database
from blueline.persistence.types import utcnow
from blueline.persistence.webhooks import DeliveryStore
from blueline.provisioning.assignment import Assigner, AssignResult
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

    async def handle(
        self, setup_id: str, headers: Mapping[str, str | None], body: bytes, client: str
    ) -> Outcome:
        if len(body) > MAX_BODY_BYTES:
            return Outcome.TOO_LARGE
        if not self._limits.rejections.has_tokens(client):
            return Outcome.RATE_LIMITED
        lookup = setup_id if _well_formed(setup_id) else DECOY_SETUP_ID
        async with self._db.read() as conn:
            found = await self._store.secret_of(conn, lookup)
        if found is None or found.sealed_secret is None:
            token, aad = self._decoy, webhook_secret_aad(DECOY_SETUP_ID)
        else:
            token, aad = found.sealed_secret, webhook_secret_aad(found.setup_id)
        try:
            secret = self._vault.decrypt(token, aad=aad)
        except DecryptionFailed:
            logger.error("the webhook secret of a setup does not decrypt")
            found, secret = None, signature.generate_secret()
        verified = signature.verify(
            [secret],
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            body,
            self._clock(),
        )
        if not verified or found is None or found.sealed_secret is None:
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
        return await self._apply(
            found.workspace_id, found.setup_id, webhook_id, event_type, assignment
        )

    async def _apply(
        self,
        workspace_id: str,
        setup_id: str,
        webhook_id: str,
        event_type: str,
        assignment: Assignment | None,
    ) -> Outcome:
        """Apply and record in one transaction.

        A re-delivery is evaluated again rather than looked up: assignments only move
        forward, so the same delivery always yields the same answer and never a second
        change, and a delivery that once named an unknown request is applied once the
        line exists.
        """
        origin = Origin(ACTOR_PROVIDER, webhook_id[:64])
        release_operation: str | None = None
        now = utcnow()
        async with self._db.write() as conn:
            logged = "ignored"
            if assignment is None:
                outcome = Outcome.IGNORED
                events: list[Any] = []
            else:
                assigned = await self._assigner.assign(
                    conn,
                    workspace_id=workspace_id,
                    setup_id=setup_id,
                    request_id=assignment.request_id,
                    phone_number=assignment.phone_number,
                    origin=origin,
                    now=now,
                )
                outcome = _OUTCOMES[assigned.result]
                logged = assigned.result.value
                events = assigned.events
                if assigned.result is AssignResult.RELEASED and assigned.line_id is not None:
                    release_operation = await self._lifecycle.note_release_upstream(
                        conn, setup_id, assigned.line_id, assignment.request_id, origin
                    )
            await self._store.record(
                conn,
                delivery_id=ids.new_id(ids.DELIVERY),
                setup_id=setup_id,
                webhook_id=webhook_id,
                event_type=event_type[:64],
                outcome=logged,
                now=now,
            )
        await self._publisher.publish(events)
        if release_operation is not None:
            self._lifecycle.release_upstream_soon(release_operation, origin)
        if outcome is Outcome.CONFLICT:
            logger.warning(
                "conflicting assignment refused: setup %s request %s already has another number",
                setup_id,
                assignment.request_id if assignment else "",
            )
        return outcome


_OUTCOMES = {
    AssignResult.APPLIED: Outcome.ACCEPTED,
    AssignResult.DUPLICATE: Outcome.DUPLICATE,
    AssignResult.CONFLICT: Outcome.CONFLICT,
    AssignResult.UNKNOWN_REQUEST: Outcome.UNKNOWN_REQUEST,
    AssignResult.RELEASED: Outcome.RELEASED,
}


def _well_formed(setup_id: str) -> bool:
    return ids.prefix_of(setup_id) == ids.SETUP
