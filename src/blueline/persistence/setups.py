"""Writes to setups, lines and operations, as prebuilt statements on a
:class:`~blueline.persistence.database.SqlConnection` in the caller's transaction.

Every change that could move a setup's status recomputes it with
:data:`DERIVED_STATUS`, the SQL form of ``domain.derive_status`` (a test holds the two
to the same answer for every combination).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blueline.domain import LineStatus, SetupState, SetupStatus
from blueline.persistence.database import SqlConnection
from blueline.persistence.dialect import Dialect, sql_literal
from blueline.persistence.journal import Reserved, advance_rows_sql, advance_sql


def derived_status_sql(alias: str, assigned_also: str | None = None) -> str:
    """``assigned_also``: a query of setup ids that have an assigned line the statement
    cannot see yet (one assigned by another part of the same statement)."""
    assigned = (
        f"EXISTS (SELECT 1 FROM phone_line dl WHERE dl.setup_id = {alias}.id "
        f"AND dl.status = {sql_literal(LineStatus.ASSIGNED)})"
    )
    if assigned_also is not None:
        assigned = f"({assigned} OR {alias}.id IN ({assigned_also}))"
    return (
        f"CASE WHEN {alias}.closed_at IS NOT NULL THEN {sql_literal(SetupStatus.CLOSED)} "
        f"WHEN {alias}.suspended_at IS NOT NULL THEN {sql_literal(SetupStatus.SUSPENDED)} "
        f"WHEN {assigned} THEN {sql_literal(SetupStatus.ACTIVE)} "
        f"ELSE {sql_literal(SetupStatus.PENDING)} END"
    )


@dataclass(frozen=True)
class SetupFacts:
    """What services decide on (never the sealed secrets)."""

    id: str
    workspace_id: str
    business_name: str
    label: str
    state: str
    status: str
    subaccount_id: str | None
    suspended: bool
    closed: bool


@dataclass(frozen=True)
class LineFacts:
    id: str
    setup_id: str
    workspace_id: str
    status: str
    phone_number: str | None
    request_id: str | None


@dataclass(frozen=True)
class OperationRow:
    id: str
    workspace_id: str
    setup_id: str
    line_id: str | None
    kind: str
    params: dict[str, Any]
    actor: str
    request_id: str | None


_SETUP_COLUMNS = (
    "id, workspace_id, business_name, label, state, status, subaccount_id, "
    "suspended_at IS NOT NULL, closed_at IS NOT NULL"
)
_LINE_COLUMNS = "id, setup_id, workspace_id, status, phone_number, request_id"
_OPERATION_COLUMNS = "id, workspace_id, setup_id, line_id, kind, params, actor, request_id"


def _setup(row: Any) -> SetupFacts:
    return SetupFacts(
        id=row[0],
        workspace_id=row[1],
        business_name=row[2],
        label=row[3],
        state=row[4],
        status=row[5],
        subaccount_id=row[6],
        suspended=bool(row[7]),
        closed=bool(row[8]),
    )


def _line(row: Any) -> LineFacts:
    return LineFacts(*row)


def _operation(row: Any) -> OperationRow:
    return OperationRow(
        id=row[0],
        workspace_id=row[1],
        setup_id=row[2],
        line_id=row[3],
        kind=row[4],
        params=json.loads(row[5]),
        actor=row[6],
        request_id=row[7],
    )


class SetupStore:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = d = dialect
        p = d.placeholder
        lock = " FOR UPDATE" if d.is_postgresql else ""
        ready = sql_literal(SetupState.READY)
        self._lock = f"SELECT {_SETUP_COLUMNS} FROM imessage_setup WHERE id = {p(1, 'text')}{lock}"
        self._get = f"SELECT {_SETUP_COLUMNS} FROM imessage_setup WHERE id = {p(1, 'text')}"
        self._visible = (
            f"SELECT {_SETUP_COLUMNS} FROM imessage_setup WHERE id = {p(1, 'text')} "
            f"AND workspace_id = {p(2, 'text')} AND state = {ready}"
        )
        self._status = (
            f"UPDATE imessage_setup SET status = {derived_status_sql('imessage_setup')}, "
            f"updated_at = {p(2, 'timestamptz')} WHERE id = {p(1, 'text')} RETURNING status"
        )
        self._line = f"SELECT {_LINE_COLUMNS} FROM phone_line WHERE id = {p(1, 'text')}{lock}"
        self._visible_line = (
            f"SELECT l.id, l.setup_id, l.workspace_id, l.status, l.phone_number, l.request_id "
            f"FROM phone_line l JOIN imessage_setup s ON s.id = l.setup_id "
            f"WHERE l.id = {p(1, 'text')} AND l.workspace_id = {p(2, 'text')} AND s.state = {ready}"
        )
        self._line_by_request = (
            f"SELECT {_LINE_COLUMNS} FROM phone_line WHERE setup_id = {p(1, 'text')} "
            f"AND request_id = {p(2, 'text')}"
        )
        self._lines_of = (
            f"SELECT {_LINE_COLUMNS} FROM phone_line WHERE setup_id = {p(1, 'text')} ORDER BY id"
        )
        self._lock_open_lines = (
            f"SELECT {_LINE_COLUMNS} FROM phone_line WHERE setup_id = {p(1, 'text')} "
            f"AND status <> {sql_literal(LineStatus.RELEASED)} ORDER BY id{lock}"
        )
        self._count_open = (
            f"SELECT count(*) FROM phone_line WHERE setup_id = {p(1, 'text')} "
            f"AND status <> {sql_literal(LineStatus.RELEASED)}"
        )
        self._insert_line = (
            "INSERT INTO phone_line (id, setup_id, workspace_id, status, phone_number, "
            f"request_id, requested_at, assigned_at) VALUES ({p(1, 'text')}, {p(2, 'text')}, "
            f"{p(3, 'text')}, {p(4, 'text')}, {p(5, 'text')}, {p(6, 'text')}, "
            f"{p(7, 'timestamptz')}, {p(8, 'timestamptz')})"
        )
        self._release = (
            f"UPDATE phone_line SET status = {sql_literal(LineStatus.RELEASED)}, "
            f"released_at = {p(2, 'timestamptz')} WHERE id = {p(1, 'text')} "
            f"AND status <> {sql_literal(LineStatus.RELEASED)} RETURNING id"
        )
        self._release_all = (
            f"UPDATE phone_line SET status = {sql_literal(LineStatus.RELEASED)}, "
            f"released_at = {p(2, 'timestamptz')} WHERE setup_id = {p(1, 'text')} "
            f"AND status <> {sql_literal(LineStatus.RELEASED)} RETURNING id"
        )
        self._suspend = (
            f"UPDATE imessage_setup SET suspended_at = {p(2, 'timestamptz')} "
            f"WHERE id = {p(1, 'text')}"
        )
        self._reactivate = "UPDATE imessage_setup SET suspended_at = NULL WHERE id = " + p(
            1, "text"
        )
        # Closing destroys the sealed secrets: the credentials and the webhook secret
        # are gone for good (webhooks for the setup then meet the unknown-setup answer).
        self._close = (
            f"UPDATE imessage_setup SET closed_at = {p(2, 'timestamptz')}, "
            "credentials_enc = NULL, webhook_secret_enc = NULL, suspended_at = NULL "
            f"WHERE id = {p(1, 'text')}"
        )
        self._rename = (
            f"UPDATE imessage_setup SET business_name = COALESCE({p(2, 'text')}, business_name), "
            f"label = COALESCE({p(3, 'text')}, label) WHERE id = {p(1, 'text')}"
        )
        provisioning = sql_literal(SetupState.PROVISIONING)
        # A new setup's row before its provider call: invisible until completed, and the
        # idempotency key's claim (a concurrent insert with the same key waits for this
        # one's commit, then inserts nothing).
        self._claim = (
            "INSERT INTO imessage_setup (id, workspace_id, business_name, label, state, "
            "status, idempotency_key, input_fingerprint, created_at, updated_at) VALUES ("
            f"{p(1, 'text')}, {p(2, 'text')}, {p(3, 'text')}, {p(4, 'text')}, {provisioning}, "
            f"{sql_literal(SetupStatus.PENDING)}, {p(5, 'text')}, {p(6, 'text')}, "
            f"{p(7, 'timestamptz')}, {p(7, 'timestamptz')}) "
            "ON CONFLICT (workspace_id, idempotency_key) DO NOTHING RETURNING id"
        )
        self._by_key = (
            "SELECT id, state, input_fingerprint FROM imessage_setup "
            f"WHERE workspace_id = {p(1, 'text')} AND idempotency_key = {p(2, 'text')}"
        )
        # Locks the row and re-checks its state in one statement; the status is given
        # (the caller derives it from the lines it is about to insert).
        self._complete = (
            f"UPDATE imessage_setup SET state = {ready}, status = {p(6, 'text')}, "
            f"subaccount_id = {p(2, 'text')}, credentials_enc = {p(3, 'text')}, "
            f"webhook_secret_enc = {p(4, 'text')}, updated_at = {p(5, 'timestamptz')} "
            f"WHERE id = {p(1, 'text')} AND state = {provisioning} RETURNING {_SETUP_COLUMNS}"
        )
        self._reconciled = (
            f"UPDATE imessage_setup SET reconciled_at = {p(2, 'timestamptz')} "
            f"WHERE id = {p(1, 'text')}"
        )
        self._insert_operation = (
            "INSERT INTO operation (id, workspace_id, setup_id, line_id, kind, exclusive, params, "
            "actor, request_id, state, created_at, updated_at) VALUES ("
            f"{p(1, 'text')}, {p(2, 'text')}, {p(3, 'text')}, {p(4, 'text')}, {p(5, 'text')}, "
            f"{p(6, 'boolean')}, {p(7, 'text')}, {p(8, 'text')}, {p(9, 'text')}, 'pending', "
            f"{p(10, 'timestamptz')}, {p(10, 'timestamptz')})"
        )
        self._finish_operation = (
            f"UPDATE operation SET state = {p(2, 'text')}, outcome = {p(3, 'text')}, "
            f"updated_at = {p(4, 'timestamptz')} WHERE id = {p(1, 'text')} AND state = 'pending' "
            "RETURNING id"
        )
        self._operation_by_id = (
            f"SELECT {_OPERATION_COLUMNS} FROM operation WHERE id = {p(1, 'text')}"
        )
        self._exclusive_pending = (
            f"SELECT id FROM operation WHERE setup_id = {p(1, 'text')} AND state = 'pending' "
            "AND exclusive"
        )
        # Both by index: the setup's key, and the partial index of pending exclusive
        # operations (finished ones are in no index by setup).
        self._changed_since = (
            f"SELECT 1 FROM imessage_setup s WHERE s.id = {p(1, 'text')} "
            f"AND (s.updated_at >= {p(2, 'timestamptz')} OR EXISTS (SELECT 1 FROM operation o "
            "WHERE o.setup_id = s.id AND o.state = 'pending' AND o.exclusive))"
        )
        self._pending_operations = (
            f"SELECT {_OPERATION_COLUMNS} FROM operation WHERE state = 'pending' "
            f"AND created_at <= {p(1, 'timestamptz')} ORDER BY created_at LIMIT {p(2, 'bigint')}"
        )
        self._due_for_reconcile = (
            f"SELECT {_SETUP_COLUMNS} FROM imessage_setup WHERE state = {ready} "
            f"AND closed_at IS NULL AND created_at <= {p(1, 'timestamptz')} "
            "ORDER BY CASE WHEN reconciled_at IS NULL THEN 0 ELSE 1 END, reconciled_at, id "
            f"LIMIT {p(2, 'bigint')}"
        )
        self._with_pending_lines = (
            f"SELECT DISTINCT s.id, s.workspace_id, s.business_name, s.label, s.state, s.status, "
            "s.subaccount_id, s.suspended_at IS NOT NULL, s.closed_at IS NOT NULL "
            "FROM imessage_setup s JOIN phone_line l ON l.setup_id = s.id "
            f"WHERE l.status = {sql_literal(LineStatus.PENDING)} AND l.requested_at <= "
            f"{p(1, 'timestamptz')} AND s.state = {ready} AND s.closed_at IS NULL "
            f"LIMIT {p(2, 'bigint')}"
        )

        # -- batches (the webhook intake applies concurrent deliveries together)
        # The batch's setups are locked first, in id order, as every other writer takes
        # them (setup, then its lines, then the workspace): a batch never deadlocks
        # with a lifecycle change of one of its setups. One statement either way.
        locked = (
            "locked AS (SELECT s.id FROM imessage_setup s WHERE "
            f"{d.member_of('s.id', 3)} ORDER BY s.id{d.lock_rows})"
        )
        assign = (
            f"UPDATE phone_line SET status = {sql_literal(LineStatus.ASSIGNED)}, "
            f"phone_number = b.number, assigned_at = {p(2, 'timestamptz')} FROM "
            + d.rows(1, "b", (("setup_id", "text"), ("request_id", "text"), ("number", "text")))
            + " WHERE phone_line.setup_id = b.setup_id AND phone_line.request_id = b.request_id "
            f"AND phone_line.status = {sql_literal(LineStatus.PENDING)} "
            "AND b.setup_id IN (SELECT id FROM locked) "
            "RETURNING phone_line.id, phone_line.setup_id, phone_line.request_id, "
            "phone_line.workspace_id"
        )
        self._assign_many = f"WITH {locked} {assign}"
        self._statuses = (
            f"UPDATE imessage_setup SET status = {derived_status_sql('imessage_setup')}, "
            f"updated_at = {p(2, 'timestamptz')} WHERE {d.member_of('id', 1)}"
        )
        # The same three steps as one statement on PostgreSQL (a round trip and a
        # statement fewer per batch): the assignment, the statuses it moves, and the
        # journal's numbers for what it applied. Each step reads the one before, so
        # the locks come in the order every writer takes them: setups, lines, then
        # the workspace. Nothing is reserved for an assignment that did not apply.
        reserve = advance_sql(
            f"(SELECT workspace_id AS id, count(*) * {p(4, 'bigint')} AS events, "
            f"count(*) * {p(5, 'bigint')} AS audits FROM assigned GROUP BY workspace_id) AS c"
        )
        self._assign_reserving = (
            f"WITH {locked}, assigned AS ({assign}), "
            "statuses AS (UPDATE imessage_setup SET status = "
            f"{derived_status_sql('imessage_setup', 'SELECT setup_id FROM assigned')}, "
            f"updated_at = {p(2, 'timestamptz')} WHERE {d.member_of('id', 3)} "
            "AND id IN (SELECT setup_id FROM assigned)), "
            f"reserved AS ({reserve}) "
            "SELECT a.id, a.setup_id, a.request_id, a.workspace_id, NULL::bigint, NULL::bigint, "
            "NULL::text FROM assigned a UNION ALL "
            "SELECT NULL, NULL, NULL, r.id, r.event_seq, r.audit_seq, r.audit_head FROM reserved r"
        )
        self._reserve_rows = advance_rows_sql(d)
        self._lines_by_requests = (
            "SELECT l.id, l.setup_id, l.workspace_id, l.status, l.phone_number, l.request_id "
            "FROM phone_line l JOIN "
            + d.rows(1, "b", (("setup_id", "text"), ("request_id", "text")))
            + " ON l.setup_id = b.setup_id AND l.request_id = b.request_id"
        )

    def ts(self, value: datetime) -> Any:
        return self.dialect.timestamp(value)

    async def lock_visible(
        self, conn: SqlConnection, workspace_id: str, setup_id: str
    ) -> SetupFacts | None:
        """The caller's setup, locked for the rest of the transaction (SQLite's write
        lock already serialises writers)."""
        setup = await self.lock(conn, setup_id)
        if setup is None or setup.workspace_id != workspace_id or setup.state != SetupState.READY:
            return None
        return setup

    async def get(self, conn: SqlConnection, setup_id: str) -> SetupFacts | None:
        row = await conn.fetchrow(self._get, (setup_id,))
        return None if row is None else _setup(row)

    async def lock(self, conn: SqlConnection, setup_id: str) -> SetupFacts | None:
        row = await conn.fetchrow(self._lock, (setup_id,))
        return None if row is None else _setup(row)

    async def visible(
        self, conn: SqlConnection, workspace_id: str, setup_id: str
    ) -> SetupFacts | None:
        row = await conn.fetchrow(self._visible, (setup_id, workspace_id))
        return None if row is None else _setup(row)

    async def refresh_status(self, conn: SqlConnection, setup_id: str, now: datetime) -> str:
        """Recompute the stored status (and touch ``updated_at``); the new status."""
        return str(await conn.fetchval(self._status, (setup_id, self.ts(now))))

    async def line(self, conn: SqlConnection, line_id: str) -> LineFacts | None:
        row = await conn.fetchrow(self._line, (line_id,))
        return None if row is None else _line(row)

    async def operation(self, conn: SqlConnection, operation_id: str) -> OperationRow | None:
        row = await conn.fetchrow(self._operation_by_id, (operation_id,))
        return None if row is None else _operation(row)

    async def visible_line(
        self, conn: SqlConnection, workspace_id: str, line_id: str
    ) -> LineFacts | None:
        row = await conn.fetchrow(self._visible_line, (line_id, workspace_id))
        return None if row is None else _line(row)

    async def line_by_request(
        self, conn: SqlConnection, setup_id: str, request_id: str
    ) -> LineFacts | None:
        row = await conn.fetchrow(self._line_by_request, (setup_id, request_id))
        return None if row is None else _line(row)

    async def lines_of(self, conn: SqlConnection, setup_id: str) -> list[LineFacts]:
        return [_line(row) for row in await conn.fetch(self._lines_of, (setup_id,))]

    async def lock_open_lines(self, conn: SqlConnection, setup_id: str) -> list[LineFacts]:
        """The setup's pending and assigned lines, oldest first, locked until commit."""
        return [_line(row) for row in await conn.fetch(self._lock_open_lines, (setup_id,))]

    async def count_open_lines(self, conn: SqlConnection, setup_id: str) -> int:
        return int(await conn.fetchval(self._count_open, (setup_id,)) or 0)

    def line_insert(
        self,
        *,
        line_id: str,
        setup: SetupFacts,
        status: LineStatus,
        phone_number: str | None,
        request_id: str,
        now: datetime,
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement inserting one line, to run or to send along with others."""
        assigned = self.ts(now) if status is LineStatus.ASSIGNED else None
        return self._insert_line, (
            line_id,
            setup.id,
            setup.workspace_id,
            status.value,
            phone_number,
            request_id,
            self.ts(now),
            assigned,
        )

    async def assign_reserving(
        self,
        conn: SqlConnection,
        items: list[tuple[str, str, str]],
        now: datetime,
        per_assignment: tuple[int, int],
    ) -> tuple[dict[tuple[str, str], str], list[Reserved]]:
        """Pending lines moved to ASSIGNED (forward only), by (setup id, request id),
        at most one item per line (the caller's batch keeps them apart); the statuses of
        the setups they moved recomputed; and the journal's numbers reserved for what
        applied (``per_assignment``: events and audit records each), its workspaces
        locked to commit. One statement on PostgreSQL; on SQLite, whose write lock
        already serialises writers, three."""
        d = self.dialect
        rows = [{"setup_id": s, "request_id": r, "number": n} for s, r, n in items]
        setups = sorted({row["setup_id"] for row in rows})
        events, audits = per_assignment

        def counted(lines: list[Sequence[Any]]) -> dict[str, tuple[int, int]]:
            per_workspace = Counter(str(line[3]) for line in lines)
            return {ws: (n * events, n * audits) for ws, n in per_workspace.items()}

        if d.is_postgresql:
            found = await conn.fetch(
                self._assign_reserving,
                (d.rows_value(rows), self.ts(now), d.members(setups), events, audits),
            )
            lines = [row[:4] for row in found if row[0] is not None]
            counts = counted(lines)
            counters = [row[3:] for row in found if row[0] is None]
        else:
            lines = await conn.fetch(
                self._assign_many, (d.rows_value(rows), self.ts(now), d.members(setups))
            )
            counts = counted(lines)
            counters = []
            if lines:
                moved = sorted({str(line[1]) for line in lines})
                await conn.execute(self._statuses, (d.members(moved), self.ts(now)))
                reserve = [
                    {"id": w, "events": e, "audits": a} for w, (e, a) in sorted(counts.items())
                ]
                counters = await conn.fetch(self._reserve_rows, (d.rows_value(reserve),))
        reserved = [Reserved.of(row, counts) for row in counters]
        applied = {
            (str(setup_id), str(request_id)): str(line_id)
            for line_id, setup_id, request_id, _workspace in lines
        }
        return applied, reserved

    async def lines_by_requests(
        self, conn: SqlConnection, pairs: list[tuple[str, str]]
    ) -> dict[tuple[str, str], LineFacts]:
        rows = [{"setup_id": s, "request_id": r} for s, r in pairs]
        found = await conn.fetch(self._lines_by_requests, (self.dialect.rows_value(rows),))
        lines = [_line(row) for row in found]
        return {(line.setup_id, line.request_id or ""): line for line in lines}

    async def release(self, conn: SqlConnection, line_id: str, now: datetime) -> bool:
        return await conn.fetchval(self._release, (line_id, self.ts(now))) is not None

    async def release_all(self, conn: SqlConnection, setup_id: str, now: datetime) -> list[str]:
        return [str(r[0]) for r in await conn.fetch(self._release_all, (setup_id, self.ts(now)))]

    async def suspend(self, conn: SqlConnection, setup_id: str, now: datetime) -> None:
        await conn.execute(self._suspend, (setup_id, self.ts(now)))

    async def reactivate(self, conn: SqlConnection, setup_id: str) -> None:
        await conn.execute(self._reactivate, (setup_id,))

    async def close(self, conn: SqlConnection, setup_id: str, now: datetime) -> None:
        await conn.execute(self._close, (setup_id, self.ts(now)))

    async def rename(
        self, conn: SqlConnection, setup_id: str, business_name: str | None, label: str | None
    ) -> None:
        await conn.execute(self._rename, (setup_id, business_name, label))

    async def claim(
        self,
        conn: SqlConnection,
        *,
        setup_id: str,
        workspace_id: str,
        business_name: str,
        label: str,
        idempotency_key: str | None,
        input_fingerprint: str,
        now: datetime,
    ) -> bool:
        """Insert a PROVISIONING setup; False when the idempotency key is taken."""
        row = await conn.fetchrow(
            self._claim,
            (
                setup_id,
                workspace_id,
                business_name,
                label,
                idempotency_key,
                input_fingerprint,
                self.ts(now),
            ),
        )
        return row is not None

    async def by_idempotency_key(
        self, conn: SqlConnection, workspace_id: str, key: str
    ) -> tuple[str, SetupState, str | None] | None:
        """(id, state, input fingerprint) of the setup holding ``key``, if any."""
        row = await conn.fetchrow(self._by_key, (workspace_id, key))
        return None if row is None else (str(row[0]), SetupState(row[1]), row[2])

    async def complete(
        self,
        conn: SqlConnection,
        setup_id: str,
        *,
        subaccount_id: str,
        credentials_enc: str,
        webhook_secret_enc: str,
        status: SetupStatus,
        now: datetime,
    ) -> SetupFacts | None:
        """Make a PROVISIONING setup READY; None (and no change) if it is not one."""
        row = await conn.fetchrow(
            self._complete,
            (
                setup_id,
                subaccount_id,
                credentials_enc,
                webhook_secret_enc,
                self.ts(now),
                status.value,
            ),
        )
        return None if row is None else _setup(row)

    async def mark_reconciled(self, conn: SqlConnection, setup_id: str, now: datetime) -> None:
        await conn.execute(self._reconciled, (setup_id, self.ts(now)))

    # -- write-ahead operations

    async def begin_operation(
        self,
        conn: SqlConnection,
        *,
        operation_id: str,
        setup: SetupFacts,
        line_id: str | None,
        kind: str,
        exclusive: bool,
        params: dict[str, Any],
        actor: str,
        request_id: str | None,
        now: datetime,
    ) -> None:
        await conn.execute(
            self._insert_operation,
            (
                operation_id,
                setup.workspace_id,
                setup.id,
                line_id,
                kind,
                exclusive,
                json.dumps(params, separators=(",", ":")),
                actor,
                request_id,
                self.ts(now),
            ),
        )

    async def finish_operation(
        self, conn: SqlConnection, operation_id: str, state: str, outcome: str, now: datetime
    ) -> bool:
        """Whether this call finished it (False: someone else already did)."""
        finished = await conn.fetchval(
            self._finish_operation, (operation_id, state, outcome, self.ts(now))
        )
        return finished is not None

    async def exclusive_pending(self, conn: SqlConnection, setup_id: str) -> str | None:
        value = await conn.fetchval(self._exclusive_pending, (setup_id,))
        return None if value is None else str(value)

    async def changed_since(self, conn: SqlConnection, setup_id: str, since: datetime) -> bool:
        """Whether the setup changed at or after ``since`` (every change touches
        ``updated_at``), or an update, suspend, reactivate or close is in flight."""
        return await conn.fetchval(self._changed_since, (setup_id, self.ts(since))) is not None

    async def pending_operations(
        self, conn: SqlConnection, older_than: datetime, limit: int
    ) -> list[OperationRow]:
        rows = await conn.fetch(self._pending_operations, (self.ts(older_than), limit))
        return [_operation(row) for row in rows]

    async def due_for_reconcile(
        self, conn: SqlConnection, older_than: datetime, limit: int
    ) -> list[SetupFacts]:
        rows = await conn.fetch(self._due_for_reconcile, (self.ts(older_than), limit))
        return [_setup(row) for row in rows]

    async def with_pending_lines(
        self, conn: SqlConnection, older_than: datetime, limit: int
    ) -> list[SetupFacts]:
        rows = await conn.fetch(self._with_pending_lines, (self.ts(older_than), limit))
        return [_setup(row) for row in rows]
