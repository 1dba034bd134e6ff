"""Provisioning: create setups, request and assign lines, recover interrupted work.

A create writes its row first (state PROVISIONING, invisible to clients), calls the
provider with the setup id as ``external_id``, then finishes in one transaction that
stores the encrypted credentials, the lines and their events. A crash between the two
writes is completed by :meth:`Provisioning.recover_setups`, which the provider's
idempotency on ``external_id`` makes safe to run at any time.

This service owns its transactions because a create spans two of them around a
network call; the single-transaction path (:func:`~blueline.provisioning.assignment.
assign_line`) takes a connection and leaves the commit to its caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from blueline import ids
from blueline.errors import (
    IdempotencyKeyReused,
    NotFound,
    ProviderRejected,
    ProviderUnavailable,
)
from blueline.events import outbox
from blueline.persistence import queries
from blueline.persistence.database import Database
from blueline.persistence.models import (
    IMessageSetup,
    LineStatus,
    PhoneLine,
    SetupState,
    SetupStatus,
)
from blueline.persistence.types import utcnow
from blueline.provider.client import ProviderClient, ProviderLine, Subaccount, SubaccountGone
from blueline.provisioning.assignment import AssignResult, assign_line
from blueline.provisioning.validation import fingerprint, validate_setup_input
from blueline.security.vault import Vault

logger = logging.getLogger(__name__)

SETUP_NOT_FOUND = "No iMessage setup with this id exists in your workspace"


def credentials_aad(setup_id: str) -> str:
    return f"imessage_setup:{setup_id}:credentials"


def webhook_secret_aad(setup_id: str) -> str:
    return f"imessage_setup:{setup_id}:webhook_secret"


@dataclass
class RecoveryReport:
    completed: int = 0
    failed: int = 0
    discarded: int = 0
    deferred: int = 0
    lines_assigned: int = 0


class Provisioning:
    def __init__(
        self,
        db: Database,
        provider: ProviderClient,
        vault: Vault,
        public_base_url: str,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._provider = provider
        self._vault = vault
        self._base_url = public_base_url.rstrip("/")
        # Called after every commit that wrote events, so the relay publishes at once.
        self._on_commit = on_commit

    def webhook_url(self, setup_id: str) -> str:
        return f"{self._base_url}/webhooks/imessage/{setup_id}"

    # -- create ---------------------------------------------------------------------

    async def create_setup(
        self,
        workspace_id: str,
        business_name: str,
        label: str,
        idempotency_key: str | None = None,
    ) -> queries.SetupRow:
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
            await self._complete(setup_id, account)
        async with self._db.session() as session:
            row = await queries.get_setup_row(session, workspace_id, setup_id)
        if row is None:  # recovery failed it between our two writes
            raise ProviderUnavailable("the setup could not be completed; try again")
        return row

    async def _claim(
        self, workspace_id: str, name: str, label: str, key: str | None
    ) -> tuple[str, SetupState]:
        """Insert the PROVISIONING row, or find the one an earlier call with this key made."""
        digest = fingerprint(name, label)
        for _ in range(3):
            try:
                async with self._db.transaction() as session:
                    if key is not None:
                        existing = await queries.find_by_idempotency_key(session, workspace_id, key)
                        if existing is not None:
                            if existing.input_fingerprint != digest:
                                raise IdempotencyKeyReused(
                                    "This idempotency key was used with different input",
                                    field=["input", "idempotencyKey"],
                                )
                            return existing.id, existing.state
                    now = utcnow()
                    setup = IMessageSetup(
                        id=ids.new_id(ids.SETUP),
                        workspace_id=workspace_id,
                        business_name=name,
                        label=label,
                        state=SetupState.PROVISIONING,
                        status=SetupStatus.PENDING,
                        idempotency_key=key,
                        input_fingerprint=digest,
                        created_at=now,
                        updated_at=now,
                    )
                    session.add(setup)
                return setup.id, setup.state
            except IntegrityError:
                # Another call inserted the same key first: read what it made.
                continue
        raise ProviderUnavailable("could not reserve the setup; try again")

    async def _mark_failed(self, setup_id: str, reason: str) -> None:
        async with self._db.transaction() as session:
            # The key is released so a retry with it starts a fresh setup rather than
            # returning this one; recovery closes any subaccount it left upstream.
            await session.execute(
                update(IMessageSetup)
                .where(col(IMessageSetup.id) == setup_id)
                .where(col(IMessageSetup.state) == SetupState.PROVISIONING)
                .values(
                    state=SetupState.FAILED,
                    idempotency_key=None,
                    failure_reason=reason,
                    updated_at=utcnow(),
                )
            )

    async def _complete(self, setup_id: str, account: Subaccount) -> bool:
        """Finish a PROVISIONING setup from the provider's subaccount; False if it was not."""
        async with self._db.transaction() as session:
            setup = await queries.lock_setup(session, setup_id)
            if setup is None or setup.state != SetupState.PROVISIONING:
                return False
            setup.subaccount_id = account.id
            setup.credentials_enc = self._vault.encrypt(
                f"{account.api_key}\n{account.api_secret}", aad=credentials_aad(setup_id)
            )
            setup.webhook_secret_enc = self._vault.encrypt(
                account.webhook_secret, aad=webhook_secret_aad(setup_id)
            )
            setup.state = SetupState.READY
            setup.updated_at = utcnow()
            for count, provider_line in enumerate(account.lines, start=1):
                await self._add_line(session, setup, provider_line, count)
            session.add(setup)
        self._on_commit()
        return True

    async def _add_line(
        self, session: AsyncSession, setup: IMessageSetup, provider_line: ProviderLine, count: int
    ) -> PhoneLine:
        now = utcnow()
        assigned = provider_line.is_assigned
        line = PhoneLine(
            id=ids.new_id(ids.PHONE_LINE),
            setup_id=setup.id,
            workspace_id=setup.workspace_id,
            status=LineStatus.ASSIGNED if assigned else LineStatus.PENDING,
            phone_number=provider_line.phone_number if assigned else None,
            request_id=provider_line.request_id,
            requested_at=now,
            assigned_at=now if assigned else None,
        )
        if assigned:
            setup.status = SetupStatus.ACTIVE
        session.add(line)
        event_type = outbox.LINE_ASSIGNED if assigned else outbox.LINE_REQUESTED
        await outbox.record(await session.connection(), event_type, setup, line, count)
        return line

    # -- more lines -----------------------------------------------------------------

    async def request_line(self, workspace_id: str, setup_id: str) -> PhoneLine:
        async with self._db.session() as session:
            row = await queries.get_setup_row(session, workspace_id, setup_id)
        if row is None or row.setup.subaccount_id is None:
            raise NotFound(SETUP_NOT_FOUND, field=["input", "setupId"])
        provider_line = await self._provider.request_line(row.setup.subaccount_id)
        async with self._db.transaction() as session:
            setup = await queries.lock_setup(session, setup_id)
            assert setup is not None
            count = await queries.count_lines(session, setup_id) + 1
            setup.updated_at = utcnow()
            line = await self._add_line(session, setup, provider_line, count)
            session.add(setup)
        self._on_commit()
        return line

    # -- recovery and reconciliation --------------------------------------------------

    async def recover_setups(self, min_age_s: float, report: RecoveryReport) -> None:
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
            if await self._complete(setup.id, account):
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
                await session.execute(
                    update(IMessageSetup)
                    .where(col(IMessageSetup.id) == setup.id)
                    .where(col(IMessageSetup.state) == SetupState.FAILED)
                    .values(state=SetupState.DISCARDED, updated_at=utcnow())
                )
            report.discarded += 1

    async def reconcile_lines(self, min_age_s: float, report: RecoveryReport) -> None:
        """Ask the provider about lines still pending: catches webhooks that never came."""
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        async with self._db.session() as session:
            pending = await queries.pending_lines(session, cutoff)
        by_setup: dict[str, tuple[IMessageSetup, list[PhoneLine]]] = {}
        for line, setup in pending:
            by_setup.setdefault(setup.id, (setup, []))[1].append(line)
        for setup, lines in by_setup.values():
            if setup.subaccount_id is None:
                continue
            try:
                upstream = await self._provider.list_lines(setup.subaccount_id)
            except (ProviderUnavailable, ProviderRejected):
                report.deferred += 1
                continue
            placed = {u.request_id: u.phone_number for u in upstream if u.is_assigned}
            for line in lines:
                number = placed.get(line.request_id or "")
                if number is None:
                    continue
                async with self._db.transaction() as session:
                    result = await assign_line(
                        await session.connection(), setup.id, line.request_id or "", number
                    )
                if result is AssignResult.APPLIED:
                    report.lines_assigned += 1
                    self._on_commit()

    async def reconcile(self, min_age_s: float) -> RecoveryReport:
        report = RecoveryReport()
        await self.recover_setups(min_age_s, report)
        await self.reconcile_lines(min_age_s, report)
        return report
