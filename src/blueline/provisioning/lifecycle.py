"""The rest of a channel's life: rename, suspend, reactivate, close, release lines, and
keeping all of it in step with the provider.

Each change that needs the provider follows the create's write-ahead pattern:

1. one transaction checks the change is allowed (or already holds: then nothing
   happens and the current object is returned) and writes an ``operation`` row;
2. the provider is called with no database connection held;
3. one transaction applies the change, its events and audit record, and finishes the
   operation.

A provider that stays unavailable fails the operation and nothing changes locally. A
crash between 2 and 3 leaves the operation pending; :meth:`Lifecycle.recover_operations`
repeats the (idempotent) provider call and applies it. Update, suspend, reactivate and
close are exclusive per setup (a second waits for the first, briefly), so upstream and
local states change in the same order; releases and line requests may interleave with
them and with each other, and every order ends consistent (close releases everything).

Reconciliation compares setups with the provider and applies what changed upstream
without Blueline: a subaccount closed or suspended there, lines released there, lines
placed whose webhook never came, and lines Blueline has no row for (a line request
whose answer was lost), each with its event and audit record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from blueline import ids
from blueline.domain import (
    ACTOR_RECONCILE,
    ACTOR_RECOVERY,
    AuditAction,
    LineStatus,
    Origin,
    SetupChange,
    SetupStatus,
)
from blueline.errors import (
    NotFound,
    OperationInProgress,
    ProviderRejected,
    ProviderUnavailable,
    SetupClosed,
)
from blueline.events.publisher import Publisher
from blueline.persistence.database import Database, SqlConnection
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.journal import Audit, Change, Journal
from blueline.persistence.setups import OperationRow, SetupFacts, SetupStore
from blueline.persistence.types import utcnow
from blueline.provider.client import ProviderClient, Subaccount, SubaccountGone
from blueline.provisioning.assignment import Assigner, AssignResult
from blueline.provisioning.service import (
    LINE_NOT_FOUND,
    SETUP_CLOSED,
    SETUP_NOT_FOUND,
    RecoveryReport,
    insert_provider_line,
)
from blueline.provisioning.validation import validate_update_input

logger = logging.getLogger(__name__)


class Kind(StrEnum):
    UPDATE = "update"
    SUSPEND = "suspend"
    REACTIVATE = "reactivate"
    CLOSE = "close"
    RELEASE = "release"
    REQUEST_LINE = "request_line"
    # A number the provider placed on a line we had released: give it back again.
    RELEASE_UPSTREAM = "release_upstream"


EXCLUSIVE = frozenset({Kind.UPDATE, Kind.SUSPEND, Kind.REACTIVATE, Kind.CLOSE})


@dataclass(frozen=True)
class Applied:
    events: list[Change]
    audits: list[Audit]


class Lifecycle:
    def __init__(
        self,
        db: Database,
        provider: ProviderClient,
        journal: Journal,
        publisher: Publisher,
        *,
        wait_for_other_s: float = 10.0,
    ) -> None:
        self._db = db
        self._provider = provider
        self._journal = journal
        self._publisher = publisher
        self._store = SetupStore(db.dialect)
        self._assigner = Assigner(self._store, journal)
        self._wait_s = wait_for_other_s
        self._background: set[asyncio.Task[None]] = set()

    # -- the mutations --------------------------------------------------------------

    async def update(
        self,
        workspace_id: str,
        origin: Origin,
        setup_id: str,
        business_name: str | None,
        label: str | None,
    ) -> str:
        name, new_label = validate_update_input(business_name, label)

        def decide(setup: SetupFacts) -> dict[str, Any] | None:
            _refuse_closed(setup)
            changes: dict[str, Any] = {}
            if name is not None and name != setup.business_name:
                changes["businessName"] = name
            if new_label is not None and new_label != setup.label:
                changes["label"] = new_label
            return changes or None

        return await self._setup_operation(workspace_id, origin, setup_id, Kind.UPDATE, decide)

    async def suspend(self, workspace_id: str, origin: Origin, setup_id: str) -> str:
        def decide(setup: SetupFacts) -> dict[str, Any] | None:
            _refuse_closed(setup)
            return None if setup.suspended else {}

        return await self._setup_operation(workspace_id, origin, setup_id, Kind.SUSPEND, decide)

    async def reactivate(self, workspace_id: str, origin: Origin, setup_id: str) -> str:
        def decide(setup: SetupFacts) -> dict[str, Any] | None:
            _refuse_closed(setup)
            return {} if setup.suspended else None

        return await self._setup_operation(workspace_id, origin, setup_id, Kind.REACTIVATE, decide)

    async def close(self, workspace_id: str, origin: Origin, setup_id: str) -> str:
        def decide(setup: SetupFacts) -> dict[str, Any] | None:
            return None if setup.closed else {}

        return await self._setup_operation(workspace_id, origin, setup_id, Kind.CLOSE, decide)

    async def release_line(self, workspace_id: str, origin: Origin, line_id: str) -> str:
        store = self._store
        now = utcnow()
        operation_id = ids.new_id(ids.OPERATION)
        async with self._db.write() as conn:
            line = await store.visible_line(conn, workspace_id, line_id)
            if line is None:
                raise NotFound(LINE_NOT_FOUND, field=["input", "phoneLineId"])
            if line.status == LineStatus.RELEASED:
                return line_id
            setup = await store.lock(conn, line.setup_id)
            assert setup is not None
            await store.begin_operation(
                conn,
                operation_id=operation_id,
                setup=setup,
                line_id=line_id,
                kind=Kind.RELEASE,
                exclusive=False,
                params={},
                actor=origin.actor,
                request_id=origin.request_id,
                now=now,
            )
            operation = await store.operation(conn, operation_id)
        assert operation is not None
        await self._drive(operation, origin)
        return line_id

    # -- write-ahead plumbing ---------------------------------------------------------

    async def _setup_operation(
        self,
        workspace_id: str,
        origin: Origin,
        setup_id: str,
        kind: Kind,
        decide: Callable[[SetupFacts], dict[str, Any] | None],
    ) -> str:
        """Write the operation ahead (or find the change already holds), then drive it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        store = self._store
        while True:
            operation: OperationRow | None = None
            async with self._db.write() as conn:
                setup = await store.lock_visible(conn, workspace_id, setup_id)
                if setup is None:
                    raise NotFound(SETUP_NOT_FOUND, field=["input", "setupId"])
                if await store.exclusive_pending(conn, setup_id) is None:
                    params = decide(setup)
                    if params is None:
                        return setup_id
                    operation_id = ids.new_id(ids.OPERATION)
                    await store.begin_operation(
                        conn,
                        operation_id=operation_id,
                        setup=setup,
                        line_id=None,
                        kind=kind,
                        exclusive=True,
                        params=params,
                        actor=origin.actor,
                        request_id=origin.request_id,
                        now=utcnow(),
                    )
                    operation = await store.operation(conn, operation_id)
            if operation is not None:
                await self._drive(operation, origin)
                return setup_id
            if loop.time() > deadline:
                raise OperationInProgress(
                    "Another change to this setup is still in progress; try again shortly",
                    field=["input", "setupId"],
                )
            await asyncio.sleep(0.05)

    async def _drive(self, operation: OperationRow, origin: Origin) -> None:
        """Call the provider for a written-ahead operation, then apply it."""
        async with self._db.read() as conn:
            setup = await self._store.get(conn, operation.setup_id)
        assert setup is not None
        assert setup.subaccount_id is not None
        try:
            await self._call_provider(operation, setup.subaccount_id)
        except SubaccountGone:
            if operation.kind not in (Kind.CLOSE, Kind.RELEASE, Kind.RELEASE_UPSTREAM):
                # Closed upstream without us: reconciliation closes it here too.
                await self._finish(operation, "failed", "closed_upstream")
                raise SetupClosed(SETUP_CLOSED, field=["input", "setupId"]) from None
            # Already gone upstream: the release or close holds there.
        except (ProviderUnavailable, ProviderRejected) as exc:
            await self._finish(operation, "failed", exc.code)
            raise
        live = await self._apply(operation, origin)
        self._publisher.publish_soon(live)

    async def _call_provider(self, operation: OperationRow, subaccount_id: str) -> None:
        kind = operation.kind
        if kind == Kind.UPDATE:
            name = operation.params.get("businessName")
            if name is not None:
                await self._provider.rename_subaccount(subaccount_id, name)
        elif kind == Kind.SUSPEND:
            await self._provider.suspend_subaccount(subaccount_id)
        elif kind == Kind.REACTIVATE:
            await self._provider.reactivate_subaccount(subaccount_id)
        elif kind == Kind.CLOSE:
            await self._provider.close_subaccount(subaccount_id)
        elif kind in (Kind.RELEASE, Kind.RELEASE_UPSTREAM):
            request_id = operation.params.get("request_id")
            if request_id is None:
                async with self._db.read() as conn:
                    line = await self._store.line(conn, operation.line_id or "")
                request_id = line.request_id if line else None
            if request_id:
                await self._provider.release_line(subaccount_id, request_id)

    async def _finish(self, operation: OperationRow, state: str, outcome: str) -> None:
        async with self._db.write() as conn:
            await self._store.finish_operation(conn, operation.id, state, outcome, utcnow())

    async def _apply(self, operation: OperationRow, origin: Origin) -> list[LiveEvent]:
        store = self._store
        now = utcnow()
        async with self._db.write() as conn:
            setup = await store.lock(conn, operation.setup_id)
            assert setup is not None
            if not await store.finish_operation(conn, operation.id, "done", "applied", now):
                return []  # recovery (or another process) finished it already
            applied = await self._local_change(conn, setup, operation, now)
            return await self._journal.append(
                conn, setup.workspace_id, origin, applied.events, applied.audits, now
            )

    async def _local_change(
        self, conn: SqlConnection, setup: SetupFacts, operation: OperationRow, now: datetime
    ) -> Applied:
        kind = operation.kind
        if kind == Kind.UPDATE:
            return await self._rename(conn, setup, operation.params, now)
        if kind == Kind.SUSPEND:
            return await self._set_suspended(conn, setup, True, now)
        if kind == Kind.REACTIVATE:
            return await self._set_suspended(conn, setup, False, now)
        if kind == Kind.CLOSE:
            return await self._close_locally(conn, setup, now)
        if kind == Kind.RELEASE:
            return await self._release_locally(conn, setup, operation.line_id or "", now)
        return Applied([], [])  # RELEASE_UPSTREAM changes nothing here

    # -- local changes (shared by mutations, recovery and reconciliation) ------------

    async def _rename(
        self, conn: SqlConnection, setup: SetupFacts, params: dict[str, Any], now: datetime
    ) -> Applied:
        if setup.closed:
            return Applied([], [])
        name, label = params.get("businessName"), params.get("label")
        await self._store.rename(conn, setup.id, name, label)
        await self._store.refresh_status(conn, setup.id, now)
        changes: dict[str, tuple[Any, Any]] = {}
        if name is not None:
            changes["businessName"] = (setup.business_name, name)
        if label is not None:
            changes["label"] = (setup.label, label)
        return Applied(
            [Change(SetupChange.UPDATED, setup.id)],
            [Audit(AuditAction.SETUP_UPDATED, setup.id, None, changes)],
        )

    async def _set_suspended(
        self, conn: SqlConnection, setup: SetupFacts, suspended: bool, now: datetime
    ) -> Applied:
        if setup.closed or setup.suspended == suspended:
            return Applied([], [])
        if suspended:
            await self._store.suspend(conn, setup.id, now)
        else:
            await self._store.reactivate(conn, setup.id)
        status = await self._store.refresh_status(conn, setup.id, now)
        change, action = (
            (SetupChange.SUSPENDED, AuditAction.SETUP_SUSPENDED)
            if suspended
            else (SetupChange.REACTIVATED, AuditAction.SETUP_REACTIVATED)
        )
        return Applied(
            [Change(change, setup.id)],
            [Audit(action, setup.id, None, {"status": (setup.status, status)})],
        )

    async def _close_locally(
        self, conn: SqlConnection, setup: SetupFacts, now: datetime
    ) -> Applied:
        if setup.closed:
            return Applied([], [])
        store = self._store
        # Locked, so a placement committing meanwhile cannot change what each line was
        # before this close released it.
        open_lines = await store.lock_open_lines(conn, setup.id)
        released = set(await store.release_all(conn, setup.id, now))
        await store.close(conn, setup.id, now)
        await store.refresh_status(conn, setup.id, now)
        events: list[Change] = []
        # Each line's release is recorded as such whoever released it: a release racing
        # the close, or the close itself; the trail of a line never depends on which won.
        audits: list[Audit] = []
        for line in open_lines:
            if line.id not in released:
                continue
            events.append(Change(SetupChange.LINE_RELEASED, setup.id, line.id))
            audits.append(
                Audit(
                    AuditAction.LINE_RELEASED,
                    setup.id,
                    line.id,
                    {"status": (line.status, LineStatus.RELEASED.value)},
                )
            )
        events.append(Change(SetupChange.CLOSED, setup.id))
        audits.append(
            Audit(
                AuditAction.SETUP_CLOSED,
                setup.id,
                None,
                {
                    "status": (setup.status, SetupStatus.CLOSED.value),
                    "phoneLineCount": (len(open_lines), 0),
                },
            )
        )
        return Applied(events, audits)

    async def _release_locally(
        self, conn: SqlConnection, setup: SetupFacts, line_id: str, now: datetime
    ) -> Applied:
        line = await self._store.line(conn, line_id)
        if line is None or line.status == LineStatus.RELEASED:
            return Applied([], [])
        await self._store.release(conn, line_id, now)
        await self._store.refresh_status(conn, setup.id, now)
        return Applied(
            [Change(SetupChange.LINE_RELEASED, setup.id, line_id)],
            [
                Audit(
                    AuditAction.LINE_RELEASED,
                    setup.id,
                    line_id,
                    {"status": (line.status, LineStatus.RELEASED.value)},
                )
            ],
        )

    # -- late placements of released lines --------------------------------------------

    async def note_release_upstream(
        self, conn: SqlConnection, setup_id: str, line_id: str, request_id: str, origin: Origin
    ) -> str:
        """In the caller's transaction: remember to give a late-placed number back."""
        setup = await self._store.lock(conn, setup_id)
        assert setup is not None
        operation_id = ids.new_id(ids.OPERATION)
        await self._store.begin_operation(
            conn,
            operation_id=operation_id,
            setup=setup,
            line_id=line_id,
            kind=Kind.RELEASE_UPSTREAM,
            exclusive=False,
            params={"request_id": request_id},
            actor=origin.actor,
            request_id=origin.request_id,
            now=utcnow(),
        )
        return operation_id

    def release_upstream_soon(self, operation_id: str, origin: Origin) -> None:
        """After commit: release in the background (recovery retries if this fails)."""

        async def run() -> None:
            async with self._db.read() as conn:
                operation = await self._store.operation(conn, operation_id)
            if operation is None:
                return
            try:
                await self._drive(operation, origin)
            except Exception as exc:  # retried by recovery; never lost
                logger.warning("releasing a late-placed number failed (%s)", type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run(), name="blueline-release-upstream")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_background(self) -> None:
        while self._background:
            await asyncio.gather(*tuple(self._background), return_exceptions=True)

    # -- recovery and reconciliation --------------------------------------------------

    async def recover_operations(self, min_age_s: float, report: RecoveryReport) -> None:
        """Finish operations a crash left pending (their provider calls are repeated:
        each is idempotent upstream), and adopt what interrupted line requests made."""
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        async with self._db.read() as conn:
            pending = await self._store.pending_operations(conn, cutoff, 100)
        for operation in pending:
            origin = Origin(ACTOR_RECOVERY, operation.request_id)
            try:
                if operation.kind == Kind.REQUEST_LINE:
                    await self.reconcile_setup(operation.setup_id, report, origin)
                    await self._finish(operation, "done", "reconciled")
                else:
                    await self._drive(operation, origin)
                report.operations_finished += 1
            except (ProviderUnavailable, ProviderRejected, SetupClosed) as exc:
                logger.warning(
                    "recovering operation %s (%s) failed: %s",
                    operation.id,
                    operation.kind,
                    exc.code,
                )
                report.deferred += 1

    async def reconcile(self, min_age_s: float, report: RecoveryReport, limit: int = 50) -> None:
        """Compare setups with the provider: first those with lines pending longer than
        ``min_age_s`` (their webhook may be lost), then the least recently compared."""
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        async with self._db.read() as conn:
            candidates = await self._store.with_pending_lines(conn, cutoff, limit * 2)
            candidates += await self._store.due_for_reconcile(conn, cutoff, limit)
        seen: set[str] = set()
        for setup in candidates:
            if setup.id in seen:
                continue
            seen.add(setup.id)
            await self.reconcile_setup(setup.id, report, Origin(ACTOR_RECONCILE))

    async def reconcile_setup(self, setup_id: str, report: RecoveryReport, origin: Origin) -> None:
        async with self._db.read() as conn:
            setup = await self._store.get(conn, setup_id)
            busy = await self._store.exclusive_pending(conn, setup_id) is not None
        if setup is None or setup.closed or busy:
            return  # an operation in flight settles it; the next pass looks again
        asked_at = utcnow()
        try:
            account = await self._provider.find_subaccount(setup.id)
        except (ProviderUnavailable, ProviderRejected):
            report.deferred += 1
            return
        give_back: list[str] = []
        live: list[LiveEvent] = []
        async with self._db.write() as conn:
            current = await self._store.lock(conn, setup_id)
            if current is None or current.closed:
                return
            if await self._store.changed_since(conn, setup_id, asked_at):
                # It changed while we asked the provider: what we read may no longer
                # hold there (a reactivation read as still suspended would be undone
                # here). The next pass reads again.
                return
            now = utcnow()
            if account is not None:
                synced = await self._sync(conn, current, account, report, origin, now)
                give_back = synced.give_back
                live += synced.live
            await self._store.mark_reconciled(conn, setup_id, now)
        self._publisher.publish_soon(live)
        if give_back and setup.subaccount_id:
            for request_id in give_back:
                try:
                    await self._provider.release_line(setup.subaccount_id, request_id)
                except (ProviderUnavailable, ProviderRejected):
                    report.deferred += 1

    async def _sync(
        self,
        conn: SqlConnection,
        setup: SetupFacts,
        account: Subaccount,
        report: RecoveryReport,
        origin: Origin,
        now: datetime,
    ) -> _Synced:
        """Apply upstream's state locally. Each change is journaled as soon as it is
        applied (assignments journal themselves), so the log and the audit chain follow
        the order of application and every event's snapshot is the state it left."""
        live: list[LiveEvent] = []

        async def journal(events: list[Change], audits: list[Audit]) -> None:
            live.extend(
                await self._journal.append(conn, setup.workspace_id, origin, events, audits, now)
            )

        if account.status == "closed":
            applied = await self._close_locally(conn, setup, now)
            await journal(applied.events, applied.audits)
            report.setups_synced += 1
            return _Synced(live, [])
        if account.status in ("suspended", "active") and setup.suspended != (
            account.status == "suspended"
        ):
            applied = await self._set_suspended(conn, setup, account.status == "suspended", now)
            await journal(applied.events, applied.audits)
            report.setups_synced += 1
        local = {line.request_id: line for line in await self._store.lines_of(conn, setup.id)}
        give_back: list[str] = []
        for upstream in account.lines:
            line = local.get(upstream.request_id)
            if line is None:
                if upstream.is_released:
                    continue
                _line_id, change, audit = await insert_provider_line(
                    self._store, conn, setup, upstream, now
                )
                await self._store.refresh_status(conn, setup.id, now)
                await journal([change], [audit])
                report.lines_adopted += 1
            elif line.status == LineStatus.RELEASED:
                if not upstream.is_released:
                    give_back.append(upstream.request_id)
            elif upstream.is_released:
                applied = await self._release_locally(conn, setup, line.id, now)
                await journal(applied.events, applied.audits)
                report.lines_released += 1
            elif line.status == LineStatus.PENDING and upstream.is_assigned:
                assert upstream.phone_number is not None
                result = await self._assigner.assign(
                    conn,
                    workspace_id=setup.workspace_id,
                    setup_id=setup.id,
                    request_id=upstream.request_id,
                    phone_number=upstream.phone_number,
                    origin=origin,
                    now=now,
                )
                if result.result is AssignResult.APPLIED:
                    report.lines_assigned += 1
                    live += result.events
        return _Synced(live, give_back)


@dataclass(frozen=True)
class _Synced:
    # The journaled events, in commit order, to publish once committed.
    live: list[LiveEvent]
    # Lines released here but still placed upstream: released there again.
    give_back: list[str]


def _refuse_closed(setup: SetupFacts) -> None:
    if setup.closed:
        raise SetupClosed(SETUP_CLOSED, field=["input", "setupId"])
