"""Composition root: builds every long-lived object from a :class:`Settings`.

Framework-free, so the API server and the CLI commands share one wiring. The caller
decides which background loops run (the API starts the relay and the periodic
reconciliation; a one-shot CLI command starts none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from blueline.events.bus import EventBus, create_bus
from blueline.events.relay import Relay
from blueline.observability.metrics import metrics, observe_provider_call
from blueline.persistence.database import Database
from blueline.provider.client import HttpProviderClient, ProviderClient, RetryPolicy
from blueline.provisioning.service import Provisioning, RecoveryReport
from blueline.rate_limit import RateLimiter
from blueline.security.access import KeyStatus
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


@dataclass
class Runtime:
    settings: Settings
    db: Database
    vault: Vault
    http: httpx.AsyncClient
    provider: ProviderClient
    bus: EventBus
    relay: Relay
    provisioning: Provisioning
    intake: WebhookIntake
    webhook_limits: WebhookLimits
    api_key_limits: RateLimiter
    key_status: KeyStatus
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Runtime(env={self.settings.env.value!r})"

    async def start_background(self) -> None:
        await self.bus.start()
        await self.relay.start()
        # Setups a crash left half-created are finished once at start-up (in the
        # background: the provider may be slow), then periodically if configured.
        self._tasks.append(asyncio.create_task(self._recover_at_start(), name="blueline-recover"))
        if self.settings.reconcile_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(self._reconcile_forever(), name="blueline-reconcile")
            )

    async def _reconcile_once(self, *, setups_only: bool) -> None:
        min_age = self.settings.reconcile_min_age_s
        try:
            if setups_only:
                report = RecoveryReport()
                await self.provisioning.recover_setups(min_age, report)
            else:
                report = await self.provisioning.reconcile(min_age)
        except Exception as exc:  # a failed pass must not end the loop
            logger.warning("reconciliation pass failed (%s)", type(exc).__name__)
            return
        if report.completed or report.failed or report.lines_assigned or report.discarded:
            logger.info("reconciliation: %s", report)

    async def _recover_at_start(self) -> None:
        await self._reconcile_once(setups_only=True)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_s)
            await self._reconcile_once(setups_only=False)

    async def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.relay.stop()
        await self.bus.stop()


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, http: httpx.AsyncClient | None = None
) -> AsyncIterator[Runtime]:
    db = Database(settings.database_url)
    vault = load_vault(settings)
    owned_http = http is None
    client = http or httpx.AsyncClient(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20)
    )
    bus = create_bus(settings.redis_url, settings.subscriber_queue_size)
    metrics().subscribers.set_function(lambda: bus.hub.subscriber_count)
    relay = Relay(db, bus, poll_interval_s=settings.relay_poll_interval_s)
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
    provisioning = Provisioning(db, provider, vault, settings.base_url(), on_commit=relay.kick)
    intake = WebhookIntake(db, vault, on_applied=relay.kick)
    limits = WebhookLimits(
        settings.webhook_rate_per_client_per_s, settings.webhook_rate_per_setup_per_s
    )
    per_key = settings.graphql_rate_per_key_per_s
    key_limits = RateLimiter(per_key, burst=max(per_key * 2, 1))
    runtime = Runtime(
        settings,
        db,
        vault,
        client,
        provider,
        bus,
        relay,
        provisioning,
        intake,
        limits,
        key_limits,
        KeyStatus(db, settings.api_key_recheck_interval_s),
    )
    try:
        yield runtime
    finally:
        await runtime.stop_background()
        if owned_http:
            await client.aclose()
        await db.dispose()
