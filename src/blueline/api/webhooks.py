"""HTTP boundary of the webhook intake: the intake decides an outcome, this maps it to
a status and body. Every rejection is the same 401, byte for byte."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.exceptions import ClientException
from litestar.params import FromPath

from blueline.errors import StorageUnavailable
from blueline.observability.metrics import metrics
from blueline.runtime import Runtime
from blueline.webhooks.intake import MAX_BODY_BYTES, Outcome

_SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

ANSWERS: dict[Outcome, tuple[int, dict[str, str]]] = {
    Outcome.REJECTED: (401, {"error": "unauthorized"}),
    Outcome.TOO_LARGE: (413, {"error": "payload too large"}),
    Outcome.RATE_LIMITED: (429, {"error": "too many requests"}),
    Outcome.MALFORMED: (400, {"error": "malformed event"}),
    Outcome.ACCEPTED: (200, {"status": "accepted"}),
    Outcome.DUPLICATE: (200, {"status": "accepted"}),
    Outcome.RELEASED: (200, {"status": "accepted"}),
    Outcome.IGNORED: (200, {"status": "ignored"}),
    Outcome.UNKNOWN_REQUEST: (404, {"error": "unknown line request"}),
    Outcome.CONFLICT: (409, {"error": "line already assigned to another number"}),
}


def _signed_headers(request: Request[Any, Any, Any]) -> dict[str, str | None]:
    """The three signature headers; a repeated one counts as missing (ambiguous)."""
    found: dict[str, str | None] = {}
    for name in _SIGNED_HEADERS:
        values = request.headers.getall(name, [])
        found[name] = values[0] if len(values) == 1 else None
    return found


def _answer(outcome: Outcome) -> Response[dict[str, str]]:
    metrics().webhook_deliveries.labels(outcome.value).inc()
    status, body = ANSWERS[outcome]
    return Response(body, status_code=status)


@post(
    "/webhooks/imessage/{setup_id:str}",
    request_max_body_size=MAX_BODY_BYTES,
    include_in_schema=False,
)
async def receive_imessage_webhook(
    setup_id: FromPath[str], request: Request[Any, Any, Any], runtime: Runtime
) -> Response[dict[str, str]]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _answer(Outcome.TOO_LARGE)
    try:
        body = await request.body()
    except ClientException:
        return _answer(Outcome.TOO_LARGE)
    client = request.client.host if request.client else "unknown"
    try:
        outcome = await runtime.intake.handle(setup_id, _signed_headers(request), body, client)
    except StorageUnavailable:
        # Nothing was half-applied; a 503 makes the provider retry.
        metrics().webhook_deliveries.labels("unavailable").inc()
        return Response(
            {"error": "temporarily unavailable"}, status_code=503, headers={"Retry-After": "1"}
        )
    return _answer(outcome)
