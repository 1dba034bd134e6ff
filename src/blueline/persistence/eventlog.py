"""The event log: committed events as subscribers receive them, and the reads that
replay them.

Events are numbered per workspace under the workspace row's lock (see ``journal``),
so within a workspace seq order is commit order and ``seq > n`` is exactly "after n".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blueline import ids
from blueline.batching import Batcher
from blueline.persistence.database import Database, SqlConnection
from blueline.persistence.dialect import Dialect

# Event ids clients see: fixed-width base32 of the workspace's seq, so they sort as
# strings. The width differs from the global ids used before per-workspace numbering,
# so an id from then is refused rather than misread.
_EVENT_ID_PREFIX = "evt_"
_EVENT_ID_WIDTH = 13


def format_event_id(seq: int) -> str:
    return _EVENT_ID_PREFIX + ids.encode_sortable(seq, _EVENT_ID_WIDTH)


def parse_event_id(value: str) -> int | None:
    body = value.removeprefix(_EVENT_ID_PREFIX)
    if body == value or len(body) != _EVENT_ID_WIDTH:
        return None
    seq = ids.decode_sortable(body)
    # 13 base32 digits reach past a BIGINT: such an id names no event.
    return seq if seq is not None and seq < 2**63 else None


@dataclass(frozen=True)
class LiveEvent:
    """A committed event: the change, and the snapshot (JSON text) it left."""

    workspace_id: str
    seq: int
    row_id: str
    setup_id: str
    line_id: str | None
    change: str
    payload: str
    # Per-process memo of decoded and rendered forms, shared by every subscriber.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def event_id(self) -> str:
        return format_event_id(self.seq)

    def snapshot(self) -> dict[str, Any]:
        found = self.memo.get("snapshot")
        if found is None:
            found = self.memo["snapshot"] = json.loads(self.payload)
        return dict(found)

    def to_message(self) -> str:
        """The bus message: the snapshot travels as the text it was stored as."""
        head = json.dumps(
            [self.workspace_id, self.seq, self.row_id, self.setup_id, self.line_id, self.change],
            separators=(",", ":"),
        )
        return head + "\n" + self.payload

    @classmethod
    def from_message(cls, raw: str | bytes) -> LiveEvent:
        text = raw.decode() if isinstance(raw, bytes) else raw
        head, sep, payload = text.partition("\n")
        if not sep:
            raise ValueError("not an event message")
        workspace_id, seq, row_id, setup_id, line_id, change = json.loads(head)
        return cls(
            workspace_id=str(workspace_id),
            seq=int(seq),
            row_id=str(row_id),
            setup_id=str(setup_id),
            line_id=None if line_id is None else str(line_id),
            change=str(change),
            payload=payload,
        )


_COLUMNS = "workspace_id, seq, id, setup_id, line_id, type, payload"


def _from_row(row: Any) -> LiveEvent:
    return LiveEvent(
        workspace_id=row[0],
        seq=int(row[1]),
        row_id=row[2],
        setup_id=row[3],
        line_id=row[4],
        change=row[5],
        payload=row[6],
    )


class EventLog:
    def __init__(self, db: Database) -> None:
        self._db = db
        p = db.dialect.placeholder
        self._current = f"SELECT id, event_seq FROM workspace WHERE {db.dialect.member_of('id', 1)}"
        # Subscriptions opened together share one lookup of their workspaces' seqs.
        self._seqs: Batcher[str, int] = Batcher(
            self._current_seqs, max_size=256, concurrency=2, name="blueline-current-seqs"
        )
        self._exists = (
            f"SELECT 1 FROM event WHERE workspace_id = {p(1, 'text')} AND seq = {p(2, 'bigint')}"
        )
        self._after = (
            f"SELECT {_COLUMNS} FROM event WHERE workspace_id = {p(1, 'text')} "
            f"AND seq > {p(2, 'bigint')} ORDER BY seq LIMIT {p(3, 'bigint')}"
        )
        self._after_for_setup = (
            f"SELECT {_COLUMNS} FROM event WHERE workspace_id = {p(1, 'text')} "
            f"AND setup_id = {p(4, 'text')} AND seq > {p(2, 'bigint')} "
            f"ORDER BY seq LIMIT {p(3, 'bigint')}"
        )
        picked = ", ".join(f"e.{name}" for name in _COLUMNS.split(", "))
        self._unpublished = (
            f"SELECT {picked} FROM event_outbox o JOIN event e ON e.id = o.event_id "
            f"WHERE o.created_at < {p(1, 'timestamptz')} ORDER BY e.workspace_id, e.seq "
            f"LIMIT {p(2, 'bigint')}"
        )
        self._mark_published = (
            f"DELETE FROM event_outbox WHERE {db.dialect.member_of('event_id', 1)}"
        )

    @property
    def dialect(self) -> Dialect:
        return self._db.dialect

    async def current_seq(self, workspace_id: str) -> int:
        """The workspace's newest committed seq: a subscription starting now delivers
        what comes after it."""
        return await self._seqs.submit(workspace_id)

    async def _current_seqs(self, workspace_ids: list[str]) -> list[int]:
        wanted = sorted(set(workspace_ids))
        async with self._db.read() as conn:
            rows = await conn.fetch(self._current, (self._db.dialect.members(wanted),))
        found = {str(row[0]): int(row[1] or 0) for row in rows}
        return [found.get(workspace_id, 0) for workspace_id in workspace_ids]

    async def seq_known(self, workspace_id: str, seq: int) -> bool:
        async with self._db.read() as conn:
            return await conn.fetchval(self._exists, (workspace_id, seq)) is not None

    async def after(
        self, workspace_id: str, seq: int, setup_id: str | None, limit: int
    ) -> list[LiveEvent]:
        async with self._db.read() as conn:
            if setup_id is None:
                rows = await conn.fetch(self._after, (workspace_id, seq, limit))
            else:
                rows = await conn.fetch(self._after_for_setup, (workspace_id, seq, limit, setup_id))
        return [_from_row(row) for row in rows]

    async def unpublished(self, older_than: datetime, limit: int) -> list[LiveEvent]:
        async with self._db.read() as conn:
            rows = await conn.fetch(self._unpublished, (self.dialect.timestamp(older_than), limit))
        return [_from_row(row) for row in rows]

    async def mark_published(self, row_ids: list[str]) -> None:
        """Take the events off the outbox: the sweep no longer sends them."""
        if not row_ids:
            return
        async with self._db.write() as conn:
            await conn.execute(self._mark_published, (self.dialect.members(row_ids),))


async def fetch_live(conn: SqlConnection, sql: str, args: tuple[Any, ...]) -> list[LiveEvent]:
    return [_from_row(row) for row in await conn.fetch(sql, args)]
