"""HTTP boundary of the webhook intake; the decisions live in :mod:`intake`."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import FromPath

from blueline.observability.metrics import metrics
from blueline.runtime import Runtime
from blueline.webhooks.intake import MAX_BODY_BYTES, RATE_LIMITED, TOO_LARGE, Answer

_SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _signed_headers(request: Request[Any, Any, Any]) -> dict[str, str | None]:
    """The three signature headers; a repeated one counts as missing (ambiguous)."""
    found: dict[str, str | None] = {}
    for name in _SIGNED_HEADERS:
        values = request.headers.getall(name, [])
        found[name] = values[0] if len(values) == 1 else None
    return found


def _answer(answer: Answer) -> Response[dict[str, Any]]:
    metrics().webhook_deliveries.labels(answer.outcome).inc()
    return Response(answer.body, status_code=answer.status)


@post(
    "/webhooks/imessage/{setup_id:str}",
    request_max_body_size=MAX_BODY_BYTES,
    include_in_schema=False,
)
async def receive_imessage_webhook(
    setup_id: FromPath[str], request: Request[Any, Any, Any]
) -> Response[dict[str, Any]]:
    runtime: Runtime = request.app.state["runtime"]
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _answer(TOO_LARGE)
    client = request.client.host if request.client else "unknown"
    if not runtime.webhook_limits.allow(client, setup_id):
        return _answer(RATE_LIMITED)
    body = await request.body()
    try:
        answer = await runtime.intake.handle(setup_id, _signed_headers(request), body)
    except Exception:
        # Storage trouble: a 5xx makes the provider retry; nothing was half-applied.
        metrics().webhook_deliveries.labels("error").inc()
        raise
    return _answer(answer)
