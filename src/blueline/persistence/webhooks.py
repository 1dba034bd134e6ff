"""The webhook intake's statements: the secret lookup every delivery makes, and the
durable delivery log (unique per setup and ``webhook-id``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from blueline.domain import SetupState
from blueline.persistence.database import SqlConnection
from blueline.persistence.dialect import Dialect, sql_literal


@dataclass(frozen=True)
class SetupSecret:
    setup_id: str
    workspace_id: str
    subaccount_id: str | None
    sealed_secret: str | None  # None once the setup is closed


class DeliveryStore:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        p = dialect.placeholder
        self._secret = (
            "SELECT id, workspace_id, subaccount_id, webhook_secret_enc FROM imessage_setup "
            f"WHERE id = {p(1, 'text')} AND state = {sql_literal(SetupState.READY)}"
        )
        # The first record of a webhook-id stays, except that one which named a request
        # not yet known is updated once it applies.
        self._record = (
            "INSERT INTO webhook_delivery (id, setup_id, webhook_id, event_type, outcome, "
            f"received_at) VALUES ({p(1, 'text')}, {p(2, 'text')}, {p(3, 'text')}, "
            f"{p(4, 'text')}, {p(5, 'text')}, {p(6, 'timestamptz')}) "
            "ON CONFLICT (setup_id, webhook_id) DO UPDATE SET outcome = excluded.outcome "
            "WHERE webhook_delivery.outcome = 'unknown_request'"
        )

    async def secret_of(self, conn: SqlConnection, setup_id: str) -> SetupSecret | None:
        row = await conn.fetchrow(self._secret, (setup_id,))
        return None if row is None else SetupSecret(row[0], row[1], row[2], row[3])

    async def record(
        self,
        conn: SqlConnection,
        *,
        delivery_id: str,
        setup_id: str,
        webhook_id: str,
        event_type: str,
        outcome: str,
        now: datetime,
    ) -> None:
        await conn.execute(
            self._record,
            (delivery_id, setup_id, webhook_id, event_type, outcome, self.dialect.timestamp(now)),
        )
