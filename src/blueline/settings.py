"""Configuration, read once from the environment (prefix ``BLUELINE_``).

Nothing here runs at import time: callers build a :class:`Settings` and pass it on.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The simulator's public partner key: not a secret.
SANDBOX_PARTNER_KEY = "sandbox_partner_key"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BLUELINE_", extra="ignore", env_parse_none_str="null"
    )

    env: Environment = Environment.DEVELOPMENT
    database_url: str = "sqlite+aiosqlite:///./blueline.db"
    redis_url: str | None = None
    provider_url: str | None = None
    provider_api_key: SecretStr = SecretStr(SANDBOX_PARTNER_KEY)
    public_base_url: str | None = None
    encryption_keys: SecretStr | None = None
    keyring_file: Path = Path(".blueline-keyring")

    host: str = "127.0.0.1"
    port: int = 8000

    # Provider calls: a whole attempt is bounded, and a create tries about three times
    # within one GraphQL request.
    provider_timeout_s: float = 5.0
    provider_attempts: int = 3
    provider_backoff_s: float = 0.2

    # Background work in the API process. Zero turns a loop off.
    reconcile_interval_s: float = 30.0
    reconcile_min_age_s: float = 60.0
    relay_poll_interval_s: float = 0.5
    event_retention_days: int = 7
    webhook_retention_days: int = Field(default=7, ge=7)

    # How often a running subscription re-checks that its API key is not revoked.
    api_key_recheck_interval_s: float = 5.0

    # GraphQL requests and WebSocket operations per API key (burst twice that); 0 is off.
    graphql_rate_per_key_per_s: float = 50.0

    # Webhook intake rate limits (requests per second, burst twice that); 0 turns one off.
    webhook_rate_per_client_per_s: float = 200.0
    webhook_rate_per_setup_per_s: float = 50.0

    # Sandbox provider simulator, when embedded (no PROVIDER_URL).
    sandbox_auto_assign_after_s: float | None = 3.0

    # Subscription fan-out: each client gets a bounded queue.
    subscriber_queue_size: int = 1000
    # Server pings on idle GraphQL WebSockets, so proxies keep them open and dead peers show.
    ws_keep_alive_interval_s: float = Field(default=15.0, gt=0)

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def uses_embedded_provider(self) -> bool:
        return self.provider_url is None

    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def production_problems(self) -> list[str]:
        """Why this configuration must not serve production traffic (empty when it may)."""
        problems: list[str] = []
        if not self.is_production:
            return problems
        if self.encryption_keys is None:
            problems.append(
                "BLUELINE_ENCRYPTION_KEYS is not set: production refuses a generated keyring"
            )
        if self.provider_url is None:
            problems.append(
                "BLUELINE_PROVIDER_URL is not set: production refuses the embedded sandbox"
            )
        if not self.public_base_url:
            problems.append(
                "BLUELINE_PUBLIC_BASE_URL is not set: the provider could not reach the webhooks"
            )
        return problems
