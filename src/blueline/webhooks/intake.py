"""Webhook intake, independent of the web framework: verify, record, apply, answer.

Every failure before verification succeeds (unknown setup, bad signature, stale
timestamp) returns the same :data:`REJECTED` answer after the same work: an unknown
setup is checked against a decoy secret that goes through the same vault decryption
and HMAC as a real one, so neither the answer nor its timing tells accounts apart.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from blueline import ids
from blueline.errors import DecryptionFailed
from blueline.persistence.database import READ_ONLY, Database
from blueline.persistence.models import IMessageSetup, SetupState, WebhookDelivery
from blueline.persistence.types import utcnow
from blueline.provisioning.assignment import AssignResult, assign_line
from blueline.provisioning.service import webhook_secret_aad
from blueline.rate_limit import RateLimiter
from blueline.security.vault import Vault
from blueline.webhooks import signature

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
DECOY_SETUP_ID = "ims_00000000000000000000000000"
_SETUPS = IMessageSetup.__table__  # type: ignore[attr-defined]
_DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    outcome: str  # for metrics; never sent


REJECTED = Answer(401, {"error": "unauthorized"}, "rejected")
TOO_LARGE = Answer(413, {"error": "payload too large"}, "too_large")
RATE_LIMITED = Answer(429, {"error": "too many requests"}, "rate_limited")
MALFORMED = Answer(400, {"error": "malformed event"}, "malformed")
ACCEPTED = Answer(200, {"status": "accepted"}, "accepted")
DUPLICATE = Answer(200, {"status": "accepted"}, "duplicate")
IGNORED = Answer(200, {"status": "ignored"}, "ignored")
UNKNOWN_REQUEST = Answer(404, {"error": "unknown line request"}, "unknown_request")
CONFLICT = Answer(409, {"error": "line already assigned to another number"}, "conflict")


@dataclass(frozen=True)
class Assignment:
    subaccount_id: str
    request_id: str
    phone_number: str


def parse_event(body: bytes) -> tuple[str, Assignment | None] | None:
    """``(type, assignment)``; None when the body is not a well-formed event."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
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


_SECRET_LOOKUP = (
    select(_SETUPS.c.id, _SETUPS.c.subaccount_id, _SETUPS.c.webhook_secret_enc)
    .where(_SETUPS.c.id == bindparam("w_setup"))
    .where(_SETUPS.c.state == SetupState.READY.value)
)


def _record_delivery_statement(postgresql: bool) -> Any:
    """INSERT of the delivery log entry; the first record of a webhook-id stays, except
    that one which named a request not yet known is updated once it applies."""
    statement = (pg_insert if postgresql else sqlite_insert)(_DELIVERIES)
    return statement.on_conflict_do_update(
        index_elements=["setup_id", "webhook_id"],
        set_={"outcome": statement.excluded.outcome},
        where=_DELIVERIES.c.outcome == "unknown_request",
    )


class WebhookLimits:
    """Per client address and per path setup id, the same for real and unknown setups."""

    def __init__(self, per_client_per_s: float, per_setup_per_s: float) -> None:
        self._clients = RateLimiter(per_client_per_s, burst=max(per_client_per_s * 2, 1))
        self._setups = RateLimiter(per_setup_per_s, burst=max(per_setup_per_s * 2, 1))

    def allow(self, client: str, setup_id: str) -> bool:
        # Both buckets are always charged, so the answer does not depend on which ran out.
        client_ok = self._clients.allow(client)
        setup_ok = self._setups.allow(setup_id[:64])
        return client_ok and setup_ok


class WebhookIntake:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        on_applied: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._vault = vault
        self._on_applied = on_applied
        self._clock = clock
        self._record_delivery = _record_delivery_statement(db.is_postgresql)
        self._decoy = vault.encrypt(
            signature.generate_secret(), aad=webhook_secret_aad(DECOY_SETUP_ID)
        )

    async def _secret_of(self, conn: AsyncConnection, setup_id: str) -> tuple[Row[Any] | None, str]:
        # A malformed id still costs one lookup (of the decoy), so it takes the same time.
        lookup = setup_id if ids.prefix_of(setup_id) == ids.SETUP else DECOY_SETUP_ID
        setup = (await conn.execute(_SECRET_LOOKUP, {"w_setup": lookup})).first()
        # Close the read's implicit transaction: the apply opens its own.
        await conn.rollback()
        if setup is None or setup.webhook_secret_enc is None:
            token, aad, setup = self._decoy, webhook_secret_aad(DECOY_SETUP_ID), None
        else:
            token, aad = setup.webhook_secret_enc, webhook_secret_aad(setup.id)
        try:
            return setup, self._vault.decrypt(token, aad=aad)
        except DecryptionFailed:
            logger.error("webhook secret of setup %s does not decrypt", setup_id)
            return None, signature.generate_secret()

    async def handle(self, setup_id: str, headers: Mapping[str, str | None], body: bytes) -> Answer:
        if len(body) > MAX_BODY_BYTES:
            return TOO_LARGE
        # One pooled connection serves the lookup and the apply.
        async with self._db.connect() as conn:
            return await self._handle(conn, setup_id, headers, body)

    async def _handle(
        self,
        conn: AsyncConnection,
        setup_id: str,
        headers: Mapping[str, str | None],
        body: bytes,
    ) -> Answer:
        setup, secret = await self._secret_of(conn, setup_id)
        verified = signature.verify(
            [secret],
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            body,
            self._clock(),
        )
        if not verified or setup is None:
            return REJECTED
        webhook_id = headers["webhook-id"]
        assert webhook_id is not None  # verified above
        parsed = parse_event(body)
        if parsed is None:
            return MALFORMED
        event_type, assignment = parsed
        if assignment is not None and assignment.subaccount_id != setup.subaccount_id:
            return MALFORMED
        return await self._apply(conn, setup.id, webhook_id, event_type, assignment)

    async def _apply(
        self,
        conn: AsyncConnection,
        setup_id: str,
        webhook_id: str,
        event_type: str,
        assignment: Assignment | None,
    ) -> Answer:
        """Apply and record in one transaction.

        A re-delivery is evaluated again rather than looked up: assignments only move
        forward, so the same delivery always yields the same answer and never a second
        change, and a delivery that once named an unknown request is applied once the
        line exists.
        """
        await conn.execution_options(**{READ_ONLY: False})
        async with conn.begin():
            result = (
                await assign_line(conn, setup_id, assignment.request_id, assignment.phone_number)
                if assignment is not None
                else None
            )
            await conn.execute(
                self._record_delivery,
                {
                    "id": ids.new_id(ids.DELIVERY),
                    "setup_id": setup_id,
                    "webhook_id": webhook_id,
                    "event_type": event_type[:64],
                    "outcome": str(result) if result is not None else "ignored",
                    "received_at": utcnow(),
                },
            )
        if result is None:
            return IGNORED
        if result is AssignResult.APPLIED:
            self._on_applied()
            return ACCEPTED
        if result is AssignResult.DUPLICATE:
            return DUPLICATE
        if result is AssignResult.CONFLICT:
            logger.warning(
                "conflicting assignment refused: setup %s request %s already has another number",
                setup_id,
                assignment.request_id if assignment else "",
            )
            return CONFLICT
        return UNKNOWN_REQUEST
