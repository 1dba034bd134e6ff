"""Provisioning: create setups and request lines, and recover creates a crash interrupted.

A create writes its row first (state PROVISIONING, invisible to clients), calls the
provider with the setup id as ``external_id``, then finishes in one transaction that
stores the encrypted credentials, the lines, their events and audit records. A crash
between the two writes is completed by :meth:`Provisioning.recover_setups`, which the
provider's idempotency on ``external_id`` makes safe to run at any time.

This service owns its transactions because each change spans two of them around a
network call, and no database connection is held while the provider is waited on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from blueline import ids
from blueline.domain import (
    AuditAction,
    LineStatus,
    Origin,
    SetupChange,
    SetupState,
    derive_status,
)
from blueline.errors import (
    IdempotencyKeyReused,
    LineLimitReached,
    NotFound,
    ProviderRejected,
    ProviderUnavailable,
    SetupClosed,
    SetupSuspended,
)
from blueline.events.publisher import Publisher
from blueline.persistence import queries
from blueline.persistence.database import Database, SqlConnection
from blueline.persistence.eventlog import LiveEvent
from blueline.persistence.journal import Audit, Change, Entry, Journal
from blueline.persistence.setups import SetupFacts, SetupStore
from blueline.persistence.types import utcnow
from blueline.provider.client import (
    ProviderClient,
    ProviderLine,
    Subaccount,
    SubaccountGone,
    SubaccountSuspended,
)
from blueline.provisioning.validation import fingerprint, validate_setup_input
from blueline.security.vault import Vault, credentials_aad, webhook_secret_aad

logger = logging.getLogger(__name__)

SETUP_NOT_FOUND = "No iMessage setup with this id exists in your workspace"
LINE_NOT_FOUND = "No phone line with this id exists in your workspace"
SETUP_CLOSED = "This setup is closed: it takes no more changes"
SETUP_SUSPENDED = "This setup is suspended: reactivate it before requesting lines"
# Open (pending or assigned) lines per setup: every snapshot of a setup carries its lines.
MAX_OPEN_LINES = 50


@dataclass
class RecoveryReport:
    completed: int = 0
    failed: int = 0
    discarded: int = 0
    deferred: int = 0
    lines_assigned: int = 0
    lines_adopted: int = 0
    lines_released: int = 0
    operations_finished: int = 0
    setups_synced: int = 0

    def any(self) -> bool:
        return any(vars(self).values())


def line_change(line: ProviderLine) -> SetupChange:
    return SetupChange.LINE_ASSIGNED if line.is_assigned else SetupChange.LINE_ADDED


def provider_line_entry(
    store: SetupStore, setup: SetupFacts, line: ProviderLine, now: datetime
) -> tuple[str, tuple[str, tuple[Any, ...]], Change, Audit]:
    """A line the provider reported: its id, the statement inserting its row, its event
    and its audit record."""
    line_id = ids.new_id(ids.PHONE_LINE)
    status = LineStatus.ASSIGNED if line.is_assigned else LineStatus.PENDING
    statement = store.line_insert(
        line_id=line_id,
        setup=setup,
        status=status,
        phone_number=line.phone_number if line.is_assigned else None,
        request_id=line.request_id,
        now=now,
    )
    changes: dict[str, tuple[object, object]] = {"status": (None, status.value)}
    if line.is_assigned:
        changes["phoneNumber"] = (None, line.phone_number)
    return (
        line_id,
        statement,
        Change(line_change(line), setup.id, line_id),
        Audit(AuditAction.LINE_REQUESTED, setup.id, line_id, changes),
    )


async def insert_provider_line(
    store: SetupStore,
    conn: SqlConnection,
    setup: SetupFacts,
    line: ProviderLine,
    now: datetime,
) -> tuple[str, Change, Audit]:
    """A line the provider reported, as a row, its event and its audit record."""
    line_id, statement, change, audit = provider_line_entry(store, setup, line, now)
    await conn.execute(*statement)
    return line_id, change, audit


class Provisioning:
    def __init__(
        self,
        db: Database,
        provider: ProviderClient,
        vault: Vault,
        journal: Journal,
        publisher: Publisher,
        public_base_url: str,
    ) -> None:
        self._db = db
        self._provider = provider
        self._vault = vault
        self._journal = journal
        self._publisher = publisher
        self._store = SetupStore(db.dialect)
        self._base_url = public_base_url.rstrip("/")

    def webhook_url(self, setup_id: str) -> str:
        return f"{self._base_url}/webhooks/imessage/{setup_id}"

    # -- create ---------------------------------------------------------------------

    async def create_setup(
        self,
        workspace_id: str,
        origin: Origin,
        business_name: str,
        label: str,
        idempotency_key: str | None = None,
    ) -> str:
        name, label, key = validate_setup_input(business_name, label, idempotency_key)
        setup_id, state = await self._claim(workspace_id, name, label, key)
        if state != SetupState.READY:
            try:
                account = await self._provider.create_subaccount(
                    business_name=name, external_id=setup_id, webhook_url=self.webhook_url(setup_id)
                )
            except (ProviderUnavailable, ProviderRejected) as exc:
                await self._mark_failed(setup_id, exc.code)
                raise
            if await self._complete(setup_id, account, origin):
                return setup_id
        # A retry with the key of a finished create, or recovery got there first.
        async with self._db.read() as conn:
            found = await self._store.visible(conn, workspace_id, setup_id)
        if found is None:  # recovery failed it between our two writes
            raise ProviderUnavailable("the setup could not be completed; try again")
        return setup_id

    async def _claim(
        self, workspace_id: str, name: str, label: str, key: str | None
    ) -> tuple[str, SetupState]:
        """Insert the PROVISIONING row, or find the one an earlier call with this key made."""
        digest = fingerprint(name, label)
        for _ in range(3):
            setup_id = ids.new_id(ids.SETUP)
            # One statement, durable before the provider hears of the setup.
            async with self._db.autocommit() as conn:
                claimed = await self._store.claim(
                    conn,
                    setup_id=setup_id,
                    workspace_id=workspace_id,
                    business_name=name,
                    label=label,
                    idempotency_key=key,
                    input_fingerprint=digest,
                    now=utcnow(),
                )
            if claimed:
                return setup_id, SetupState.PROVISIONING
            assert key is not None  # only a key can conflict
            async with self._db.read() as conn:
                existing = await self._store.by_idempotency_key(conn, workspace_id, key)
            if existing is None:
                continue  # its create failed and gave the key back meanwhile: claim anew
            existing_id, existing_state, existing_digest = existing
            if existing_digest != digest:
                raise IdempotencyKeyReused(
                    "This idempotency key was used with different input",
                    field=["input", "idempotencyKey"],
                )
            return existing_id, existing_state
        raise ProviderUnavailable("could not reserve the setup; try again")

    async def _mark_failed(self, setup_id: str, reason: str) -> None:
        async with self._db.transaction() as session:
            await queries.mark_failed(session, setup_id, reason)

    async def _complete(self, setup_id: str, account: Subaccount, origin: Origin) -> bool:
        """Finish a PROVISIONING setup from the provider's subaccount; False if it was not.

        Three round trips: the row made READY (locked and re-checked by that update),
        then its lines with the journal's counters, then events and audit records."""
        store = self._store
        now = utcnow()
        lines = [line for line in account.lines if not line.is_released]
        status = derive_status(
            closed=False,
            suspended=False,
            has_assigned_line=any(line.is_assigned for line in lines),
        )
        async with self._db.write() as conn:
            setup = await store.complete(
                conn,
                setup_id,
                subaccount_id=account.id,
                credentials_enc=self._vault.encrypt(
                    f"{account.api_key}\n{account.api_secret}", aad=credentials_aad(setup_id)
                ),
                webhook_secret_enc=self._vault.encrypt(
                    account.webhook_secret, aad=webhook_secret_aad(setup_id)
                ),
                status=status,
                now=now,
            )
            if setup is None:
                return False
            events = [Change(SetupChange.CREATED, setup_id)]
            audits = [
                Audit(
                    AuditAction.SETUP_CREATED,
                    setup_id,
                    None,
                    {"businessName": (None, setup.business_name), "label": (None, setup.label)},
                )
            ]
            inserts = []
            for provider_line in lines:
                _line_id, statement, change, audit = provider_line_entry(
                    store, setup, provider_line, now
                )
                inserts.append(statement)
                events.append(change)
                audits.append(audit)
            [live] = await self._journal.append_many(
                conn, [Entry(setup.workspace_id, origin, events, audits)], now, along=inserts
            )
        self._publisher.publish_soon(live)
        return True

    # -- more lines -----------------------------------------------------------------

    async def request_line(self, workspace_id: str, origin: Origin, setup_id: str) -> str:
        """A new line request; written ahead so recovery can adopt what a crash or a
        lost answer left at the provider (the call itself is never repeated: a repeat
        could create a second line)."""
        store = self._store
        now = utcnow()
        operation_id = ids.new_id(ids.OPERATION)
        async with self._db.write() as conn:
            setup = await store.visible(conn, workspace_id, setup_id)
            if setup is None or setup.subaccount_id is None:
                raise NotFound(SETUP_NOT_FOUND, field=["input", "setupId"])
            self._check_open(setup)
            if await store.count_open_lines(conn, setup_id) >= MAX_OPEN_LINES:
                raise LineLimitReached(
                    f"A setup has at most {MAX_OPEN_LINES} open lines; release one first",
                    field=["input", "setupId"],
                )
            await store.begin_operation(
                conn,
                operation_id=operation_id,
                setup=setup,
                line_id=None,
                kind="request_line",
                exclusive=False,
                params={},
                actor=origin.actor,
                request_id=origin.request_id,
                now=now,
            )
        subaccount_id = setup.subaccount_id
        try:
            provider_line = await self._provider.request_line(subaccount_id)
        except SubaccountSuspended:
            await self._finish(operation_id, "failed", "suspended_upstream")
            raise SetupSuspended(SETUP_SUSPENDED, field=["input", "setupId"]) from None
        except SubaccountGone:
            await self._finish(operation_id, "failed", "closed_upstream")
            raise SetupClosed(SETUP_CLOSED, field=["input", "setupId"]) from None
        except (ProviderUnavailable, ProviderRejected) as exc:
            await self._finish(operation_id, "failed", exc.code)
            raise
        line_id, live = await self._record_line(setup_id, provider_line, origin, operation_id)
        self._publisher.publish_soon(live)
        if line_id is None:
            # Closed while the provider answered: give the new line back at once.
            try:
                await self._provider.release_line(subaccount_id, provider_line.request_id)
            except (ProviderUnavailable, ProviderRejected):
                logger.warning("could not release a line requested for a closed setup")
            raise SetupClosed(SETUP_CLOSED, field=["input", "setupId"])
        return line_id

    async def _record_line(
        self, setup_id: str, provider_line: ProviderLine, origin: Origin, operation_id: str
    ) -> tuple[str | None, list[LiveEvent]]:
        store = self._store
        now = utcnow()
        async with self._db.write() as conn:
            setup = await store.lock(conn, setup_id)
            assert setup is not None
            known = await store.line_by_request(conn, setup_id, provider_line.request_id)
            if setup.closed:
                await store.finish_operation(conn, operation_id, "done", "setup_closed", now)
                return None, []
            if known is not None:  # reconciliation adopted it first
                await store.finish_operation(conn, operation_id, "done", "adopted", now)
                return known.id, []
            line_id, change, audit = await insert_provider_line(
                store, conn, setup, provider_line, now
            )
            await store.refresh_status(conn, setup_id, now)
            await store.finish_operation(conn, operation_id, "done", "applied", now)
            live = await self._journal.append(
                conn, setup.workspace_id, origin, [change], [audit], now
            )
        return line_id, live

    async def _finish(self, operation_id: str, state: str, outcome: str) -> None:
        async with self._db.write() as conn:
            await self._store.finish_operation(conn, operation_id, state, outcome, utcnow())

    @staticmethod
    def _check_open(setup: SetupFacts) -> None:
        if setup.closed:
            raise SetupClosed(SETUP_CLOSED, field=["input", "setupId"])
        if setup.suspended:
            raise SetupSuspended(SETUP_SUSPENDED, field=["input", "setupId"])

    # -- recovery -------------------------------------------------------------------

    async def recover_setups(
        self, min_age_s: float, report: RecoveryReport, origin: Origin
    ) -> None:
        """Complete or fail setups left PROVISIONING; close what failed ones left upstream."""
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        async with self._db.session() as session:
            stuck = await queries.setups_in_state(session, SetupState.PROVISIONING, cutoff)
            failed = await queries.setups_in_state(session, SetupState.FAILED, cutoff)
        for setup in stuck:
            try:
                account = await self._provider.find_subaccount(setup.id)
                if account is None:
                    account = await self._provider.create_subaccount(
                        business_name=setup.business_name,
                        external_id=setup.id,
                        webhook_url=self.webhook_url(setup.id),
                    )
            except ProviderUnavailable:
                report.deferred += 1
                continue
            except ProviderRejected as exc:
                await self._mark_failed(setup.id, exc.code)
                report.failed += 1
                continue
            if await self._complete(setup.id, account, origin):
                report.completed += 1
        for setup in failed:
            try:
                account = await self._provider.find_subaccount(setup.id)
                if account is not None:
                    await self._provider.close_subaccount(account.id)
            except SubaccountGone:
                pass  # nothing left upstream to close
            except (ProviderUnavailable, ProviderRejected) as exc:
                # Until the provider confirms, the row stays FAILED: discarding it would
                # leave an open subaccount nobody ever looks at again.
                logger.warning(
                    "could not close the upstream subaccount of failed setup %s (%s); will retry",
                    setup.id,
                    exc.code,
                )
                report.deferred += 1
                continue
            async with self._db.transaction() as session:
                await queries.discard_failed(session, setup.id)
            report.discarded += 1
