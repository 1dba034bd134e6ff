"""Reading the audit trail back: per workspace in chain order, for verification and
export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from blueline.persistence.database import Database

COLUMNS = (
    "id",
    "workspace_id",
    "seq",
    "occurred_at",
    "action",
    "actor",
    "setup_id",
    "phone_line_id",
    "request_id",
    "changes",
    "prev_hash",
    "hash",
    "key_id",
)
_PAGE = 1000


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        p = db.dialect.placeholder
        self._workspaces = "SELECT id, name, audit_seq, audit_head FROM workspace ORDER BY name"
        self._page = (
            f"SELECT {', '.join(COLUMNS)} FROM audit_event WHERE workspace_id = {p(1, 'text')} "
            f"AND seq > {p(2, 'bigint')} ORDER BY seq LIMIT {p(3, 'bigint')}"
        )

    async def workspaces(self) -> list[tuple[str, str, int, str]]:
        async with self._db.read() as conn:
            rows = await conn.fetch(self._workspaces)
        return [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    async def records(self, workspace_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every record of a workspace, in seq order (pages, so memory stays flat)."""
        last = 0
        while True:
            async with self._db.read() as conn:
                rows = await conn.fetch(self._page, (workspace_id, last, _PAGE))
            for row in rows:
                record = dict(zip(COLUMNS, row, strict=True))
                record["seq"] = int(record["seq"])
                occurred = self._db.dialect.read_timestamp(record["occurred_at"])
                assert isinstance(occurred, datetime)
                record["occurred_at"] = occurred
                last = record["seq"]
                yield record
            if len(rows) < _PAGE:
                return
