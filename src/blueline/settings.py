"""Configuration, read once from the environment (prefix ``BLUELINE_``).

Nothing here runs at import time: callers build a :class:`Settings` and pass it on.
URLs that may carry a password are secrets: they never show in a repr or a log line.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The simulator's public partner key: not a secret.
SANDBOX_PARTNER_KEY = "sandbox_partner_key"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _origin_host(hostname: str) -> str | None:
    """The host as browsers serialise it in ``Origin`` (IPv6 compressed in brackets,
    international names in punycode), or None when it is no host name at all.

    Litestar reads ``*`` in an allowed origin as a wildcard, so a host such as ``*`` or
    ``*.example.com`` would let every site in over HTTP while the WebSocket check, which
    compares literally, kept refusing them: such hosts are not origins here.
    """
    if ":" in hostname:
        try:
            return f"[{ipaddress.IPv6Address(hostname).compressed}]"
        except ValueError:
            return None
    try:
        ascii_host = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = ascii_host.lower().split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return ".".join(labels)


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` as browsers send it in ``Origin``; None if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = _origin_host(parts.hostname)
    if host is None:
        return None
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BLUELINE_", extra="ignore", env_parse_none_str="null"
    )

    env: Environment = Environment.DEVELOPMENT
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///./blueline.db")
    redis_url: SecretStr | None = None
    provider_url: str | None = None
    provider_api_key: SecretStr = SecretStr(SANDBOX_PARTNER_KEY)
    public_base_url: str | None = None
    encryption_keys: SecretStr | None = None
    keyring_file: Path = Path(".blueline-keyring")

    host: str = "127.0.0.1"
    port: int = 8000

    # Browser origins allowed to call /graphql (CORS) and open its WebSocket, comma
    # separated; never "*".
    cors_origins: str = ""
    # Addresses (or networks) whose X-Forwarded-For / Forwarded headers are believed.
    trusted_proxies: str = ""
    # In production /metrics answers only with `Authorization: Bearer <token>`.
    metrics_token: SecretStr | None = None

    # Provider calls: a whole attempt is bounded, and a create tries about three times
    # within one GraphQL request.
    provider_timeout_s: float = 5.0
    provider_attempts: int = 3
    provider_backoff_s: float = 0.2

    # Every wait on the database is bounded; past it the request answers 503.
    db_connect_timeout_s: float = Field(default=2.0, gt=0)
    db_pool_timeout_s: float = Field(default=2.0, gt=0)
    db_statement_timeout_s: float = Field(default=5.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)

    # Background work in the API process. Zero turns a loop off.
    reconcile_interval_s: float = 30.0
    reconcile_min_age_s: float = 60.0
    # How often unpublished events are looked for, and how old one must be (the
    # committer hands its own to the publisher at once).
    relay_poll_interval_s: float = 1.0
    publish_grace_s: float = 2.0
    event_retention_days: int = 7
    webhook_retention_days: int = Field(default=7, ge=7)

    # Authenticated keys are remembered this long; revocations apply within about
    # revocation_poll_interval_s everywhere (at once on a bus).
    api_key_cache_ttl_s: float = Field(default=30.0, ge=0)
    revocation_poll_interval_s: float = Field(default=0.5, gt=0)
    # Requests with a missing or bad key, per client address (burst twice that).
    auth_failures_per_client_per_s: float = 10.0

    # GraphQL tokens per API key per second (burst twice that); a query or subscription
    # costs one, a mutation request one per mutation field. 0 is off.
    graphql_rate_per_key_per_s: float = 50.0
    # Queries whose plan compiles are answered by one SQL statement, mutations' payloads
    # read by one, subscriptions rendered once per event; false executes everything
    # field by field (same answers).
    compiled_reads: bool = True
    # Largest GraphQL request body, and WebSocket message, accepted.
    graphql_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)

    # One HTTP request's head must arrive within this of the connection opening (or of
    # its first byte after the previous response), its body within the other of the
    # head; past either the connection closes (a 408 for the head).
    http_head_timeout_s: float = Field(default=20.0, gt=0)
    http_body_timeout_s: float = Field(default=60.0, gt=0)

    # WebSockets: connection_init must come within this; caps per process and per
    # client address; operations per socket.
    ws_init_timeout_s: float = Field(default=10.0, gt=0)
    ws_max_connections: int = Field(default=10_000, ge=1)
    ws_max_connections_per_client: int = Field(default=500, ge=1)
    ws_max_operations: int = Field(default=100, ge=1)
    # Server pings on idle GraphQL WebSockets, so proxies keep them open and dead peers show.
    ws_keep_alive_interval_s: float = Field(default=15.0, gt=0)

    # Webhook intake: rejected deliveries per client address, verified ones per setup
    # (per second, burst twice that); 0 turns one off.
    webhook_rate_per_client_per_s: float = 50.0
    webhook_rate_per_setup_per_s: float = 50.0

    # Sandbox provider simulator, when embedded (no PROVIDER_URL).
    sandbox_auto_assign_after_s: float | None = 3.0

    # Subscription fan-out: each client gets a bounded queue.
    subscriber_queue_size: int = 1000

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def uses_embedded_provider(self) -> bool:
        return self.provider_url is None

    @property
    def redis_url_value(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None

    @property
    def webhook_rejections_per_client_per_s(self) -> float:
        return self.webhook_rate_per_client_per_s

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """The configured origins, normalised; unparseable entries are left out (and
        reported by :meth:`problems`)."""
        found = []
        for raw in self.cors_origins.split(","):
            if raw.strip():
                origin = normalize_origin(raw)
                if origin is not None and origin not in found:
                    found.append(origin)
        return tuple(found)

    @property
    def proxy_addresses(self) -> list[str]:
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def problems(self) -> list[str]:
        """Why this configuration must not start (any environment)."""
        found: list[str] = []
        for raw in self.cors_origins.split(","):
            raw = raw.strip()
            if not raw:
                continue
            if raw == "*":
                found.append("BLUELINE_CORS_ORIGINS must list origins; '*' is never allowed")
            elif "*" in raw:
                found.append(
                    f"BLUELINE_CORS_ORIGINS has {raw!r}: wildcards are never allowed; "
                    "list each origin"
                )
            elif normalize_origin(raw) is None:
                found.append(
                    f"BLUELINE_CORS_ORIGINS has {raw!r}, which is not an origin "
                    "(scheme://host[:port], no path)"
                )
            elif self.is_production:
                origin = urlsplit(raw)
                if origin.scheme != "https" and not is_loopback_host(origin.hostname or ""):
                    found.append(
                        f"BLUELINE_CORS_ORIGINS has {raw!r}: production allows only https:// "
                        "origins (or a loopback address)"
                    )
        for proxy in self.proxy_addresses:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                found.append(f"BLUELINE_TRUSTED_PROXIES has {proxy!r}, which is not an address")
        if self.uses_embedded_provider and not is_loopback_host(self.host):
            found.append(
                f"the embedded sandbox provider serves every subaccount's secrets to its "
                f"callers, so it only listens on loopback: refusing --host {self.host}; set "
                "BLUELINE_PROVIDER_URL to a real provider to listen elsewhere"
            )
        return found + self.production_problems()

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
