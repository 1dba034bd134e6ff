"""The webhook intake's statements: the secret lookup every delivery makes, and the
durable delivery log (unique per setup and ``webhook-id``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blueline.domain import SetupState
from blueline.persistence.database import SqlConnection
from blueline.persistence.dialect import Dialect, sql_literal


@dataclass(frozen=True)
class SetupSecret:
    """What the lookup found for one path id. Every id gets one: a setup that can take
    deliveries (``usable``), or, for an unknown or closed setup, the decoy's sealed
    secret in the same shape, so both are read, sent and decoded alike."""

    setup_id: str
    workspace_id: str | None
    subaccount_id: str | None
    sealed_secret: str
    usable: bool


class DeliveryStore:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        p = dialect.placeholder
        d = dialect
        self._secrets = (
            "SELECT r.id, s.workspace_id, s.subaccount_id, "
            f"COALESCE(s.webhook_secret_enc, {p(2, 'text')}), s.webhook_secret_enc IS NOT NULL "
            f"FROM {d.texts(1, 'r', 'id')} LEFT JOIN imessage_setup s "
            f"ON s.id = r.id AND s.state = {sql_literal(SetupState.READY)}"
        )
        columns = ("id", "setup_id", "webhook_id", "event_type", "outcome")
        # The first record of a webhook-id stays, except that one which named a request
        # not yet known is updated once it applies. (`WHERE TRUE`: SQLite reads an
        # INSERT … SELECT … ON CONFLICT as a join's ON without it.)
        self._record_many = (
            f"INSERT INTO webhook_delivery ({', '.join(columns)}, received_at) "
            f"SELECT {', '.join('d.' + c for c in columns)}, {p(2, 'timestamptz')} FROM "
            + d.rows(1, "d", tuple((c, "text") for c in columns))
            + " WHERE TRUE ON CONFLICT (setup_id, webhook_id) DO UPDATE "
            "SET outcome = excluded.outcome WHERE webhook_delivery.outcome = 'unknown_request'"
        )

    async def secrets_of(
        self, conn: SqlConnection, setup_ids: list[str], decoy: str
    ) -> dict[str, SetupSecret]:
        """Every path id of a batch costs the same: one indexed probe of one key, and
        one row back (``decoy`` standing in for a secret there is none of)."""
        rows = await conn.fetch(self._secrets, (self.dialect.members(setup_ids), decoy))
        return {str(r[0]): SetupSecret(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows}

    def record_many(
        self, deliveries: list[dict[str, str]], now: datetime
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement recording ``id, setup_id, webhook_id, event_type, outcome`` of
        each delivery (at most one per setup and webhook id in a batch), to run in the
        apply's transaction."""
        return (
            self._record_many,
            (self.dialect.rows_value(deliveries), self.dialect.timestamp(now)),
        )
