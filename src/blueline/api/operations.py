"""Health, readiness and metrics."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import MediaType, Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from blueline.observability.metrics import metrics
from blueline.runtime import Runtime


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(runtime: Runtime) -> Response[dict[str, str]]:
    """Which dependency is down, if any (each probe is bounded by its own timeouts)."""
    checks: dict[str, str] = {}
    for name, probe in (("database", runtime.db.ping), ("event_bus", runtime.bus.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:  # readiness reports any failure, it never raises
            checks[name] = f"unavailable ({type(exc).__name__})"
    ready = all(v == "ok" for v in checks.values())
    return Response(
        checks,
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
    )


@get("/metrics", include_in_schema=False, media_type=MediaType.TEXT)
async def prometheus_metrics(request: Request[Any, Any, Any], runtime: Runtime) -> Response[bytes]:
    """Open in development; in production only with ``Authorization: Bearer <token>``
    (``BLUELINE_METRICS_TOKEN``), and absent when no token is set."""
    settings = runtime.settings
    if settings.is_production:
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token}" if token else None
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            return Response(b"", status_code=404 if expected is None else 401)
    return Response(generate_latest(metrics().registry), media_type=CONTENT_TYPE_LATEST)
