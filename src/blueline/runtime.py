"""Composition root: builds every long-lived object from a :class:`Settings`.

Framework-free, so the API server and the CLI commands share one wiring. The caller
decides which background loops run (the API starts publishing, the revocation poll,
start-up recovery and periodic reconciliation; a one-shot CLI command starts none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from blueline.access import Authenticator
from blueline.domain import ACTOR_RECOVERY, Origin
from blueline.events.bus import EventBus, create_bus
from blueline.events.publisher import Publisher
from blueline.events.updates import Updates
from blueline.observability.metrics import metrics, observe_provider_call
from blueline.persistence.database import Database, Limits
from blueline.persistence.eventlog import EventLog
from blueline.persistence.journal import Journal
from blueline.persistence.reads import Reads
from blueline.persistence.setups import SetupStore
from blueline.provider.client import (
    KEEPALIVE_EXPIRY_S,
    HttpProviderClient,
    ProviderClient,
    RetryPolicy,
)
from blueline.provisioning.assignment import Assigner
from blueline.provisioning.lifecycle import Lifecycle
from blueline.provisioning.service import Provisioning, RecoveryReport
from blueline.rate_limit import RateLimiter
from blueline.security.chain import Sealer
from blueline.security.vault import Keyring, Vault
from blueline.settings import Settings
from blueline.webhooks.intake import WebhookIntake, WebhookLimits

logger = logging.getLogger(__name__)

# Mount point of the embedded sandbox provider inside the API server.
EMBEDDED_PROVIDER_PATH = "/_sandbox-provider"


def load_vault(settings: Settings, *, create_keyring: bool = False) -> Vault:
    if settings.encryption_keys is not None:
        return Vault(Keyring.parse(settings.encryption_keys.get_secret_value()))
    return Vault(Keyring.load_or_create_file(settings.keyring_file, create=create_keyring))


def provider_base_url(settings: Settings) -> str:
    if settings.provider_url:
        return settings.provider_url
    return settings.base_url() + EMBEDDED_PROVIDER_PATH


def database_for(settings: Settings) -> Database:
    return Database(
        settings.database_url.get_secret_value(),
        Limits(
            connect_timeout_s=settings.db_connect_timeout_s,
            pool_timeout_s=settings.db_pool_timeout_s,
            statement_timeout_s=settings.db_statement_timeout_s,
            pool_size=settings.db_pool_size,
            raw_pool_size=settings.db_pool_size,
        ),
    )


@dataclass
class Runtime:
    settings: Settings
    db: Database
    vault: Vault
    http: httpx.AsyncClient
    provider: ProviderClient
    bus: EventBus
    publisher: Publisher
    reads: Reads
    updates: Updates
    provisioning: Provisioning
    lifecycle: Lifecycle
    intake: WebhookIntake
    authenticator: Authenticator
    # Tokens per API key: one per query or subscription, one per mutation field.
    api_key_limits: RateLimiter
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Runtime(env={self.settings.env.value!r})"

    async def start_background(self) -> None:
        await self.bus.start()
        await self.publisher.start()
        await self.authenticator.start()
        # Work a crash left half-done is finished once at start-up (in the background:
        # the provider may be slow), then periodically if configured.
        self._tasks.append(asyncio.create_task(self._recover_at_start(), name="blueline-recover"))
        if self.settings.reconcile_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(self._reconcile_forever(), name="blueline-reconcile")
            )

    async def recover(self, min_age_s: float, report: RecoveryReport) -> None:
        origin = Origin(ACTOR_RECOVERY)
        await self.provisioning.recover_setups(min_age_s, report, origin)
        await self.lifecycle.recover_operations(min_age_s, report)

    async def reconcile(self, min_age_s: float) -> RecoveryReport:
        """One pass: recovery, then comparison with the provider."""
        report = RecoveryReport()
        await self.recover(min_age_s, report)
        await self.lifecycle.reconcile(min_age_s, report)
        return report

    async def _pass(self, *, recovery_only: bool) -> None:
        min_age = self.settings.reconcile_min_age_s
        try:
            if recovery_only:
                report = RecoveryReport()
                await self.recover(min_age, report)
            else:
                report = await self.reconcile(min_age)
        except Exception as exc:  # a failed pass must not end the loop
            logger.warning("reconciliation pass failed (%s)", type(exc).__name__)
            return
        if report.any():
            logger.info("reconciliation: %s", report)

    async def _recover_at_start(self) -> None:
        await self._pass(recovery_only=True)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_s)
            await self._pass(recovery_only=False)

    async def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.intake.close()
        await self.reads.close()
        await self.lifecycle.wait_background()
        await self.authenticator.stop()
        await self.publisher.stop()
        await self.bus.stop()


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, http: httpx.AsyncClient | None = None, command: bool = False
) -> AsyncIterator[Runtime]:
    """``command``: a one-shot CLI process (without Redis it leaves publishing to the
    API process, which sweeps the log)."""
    db = database_for(settings)
    vault = load_vault(settings)
    owned_http = http is None
    client = http or httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
    )
    bus = create_bus(settings.redis_url_value, settings.subscriber_queue_size, detached=command)
    metrics().subscribers.set_function(lambda: bus.hub.subscriber_count)
    log = EventLog(db)
    publisher = Publisher(
        log,
        bus,
        sweep_interval_s=settings.relay_poll_interval_s,
        grace_s=settings.publish_grace_s,
    )
    provider = HttpProviderClient(
        client,
        provider_base_url(settings),
        settings.provider_api_key.get_secret_value(),
        retry=RetryPolicy(
            attempts=settings.provider_attempts, base_delay_s=settings.provider_backoff_s
        ),
        timeout_s=settings.provider_timeout_s,
        observe=observe_provider_call,
    )
    journal = Journal(db.dialect, Sealer(vault))
    provisioning = Provisioning(db, provider, vault, journal, publisher, settings.base_url())
    lifecycle = Lifecycle(db, provider, journal, publisher)
    intake = WebhookIntake(
        db,
        vault,
        Assigner(SetupStore(db.dialect), journal),
        lifecycle,
        publisher,
        WebhookLimits(
            settings.webhook_rejections_per_client_per_s, settings.webhook_rate_per_setup_per_s
        ),
    )
    authenticator = Authenticator(
        db,
        ttl_s=settings.api_key_cache_ttl_s,
        poll_interval_s=settings.revocation_poll_interval_s,
    )
    bus.on_control(authenticator.handle_control)
    per_key = settings.graphql_rate_per_key_per_s
    runtime = Runtime(
        settings=settings,
        db=db,
        vault=vault,
        http=client,
        provider=provider,
        bus=bus,
        publisher=publisher,
        reads=Reads(db),
        updates=Updates(db, log, bus.hub),
        provisioning=provisioning,
        lifecycle=lifecycle,
        intake=intake,
        authenticator=authenticator,
        api_key_limits=RateLimiter(per_key, burst=max(per_key * 2, 1)),
    )
    try:
        yield runtime
    finally:
        await runtime.stop_background()
        if owned_http:
            await client.aclose()
        await db.dispose()
