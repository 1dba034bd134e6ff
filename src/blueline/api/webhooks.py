"""HTTP boundary of the webhook intake: the intake decides an outcome, this maps it to
a status and body. Every rejection is the same 401, byte for byte.

``api.direct`` answers these deliveries below Litestar; the route here serves the
same answers for whatever it passes on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request, Response, post
from litestar.exceptions import ClientException
from litestar.params import FromPath

from blueline.api.responses import Answer, encode
from blueline.errors import StorageUnavailable
from blueline.observability.metrics import metrics
from blueline.runtime import Runtime
from blueline.webhooks.intake import MAX_BODY_BYTES, Outcome

PATH_PREFIX = "/webhooks/imessage/"
SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _answers() -> dict[Outcome, Answer]:
    bodies: dict[Outcome, tuple[int, dict[str, str]]] = {
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
    return {outcome: Answer(status, encode(body)) for outcome, (status, body) in bodies.items()}


ANSWERS = _answers()
_UNAVAILABLE = Answer(503, encode({"error": "temporarily unavailable"}), {"Retry-After": "1"})


def signed_headers(values_of: Callable[[str], list[str]]) -> dict[str, str | None]:
    """The three signature headers; a repeated one counts as missing (ambiguous)."""
    found: dict[str, str | None] = {}
    for name in SIGNED_HEADERS:
        values = values_of(name)
        found[name] = values[0] if len(values) == 1 else None
    return found


def answer(outcome: Outcome) -> Answer:
    metrics().webhook_deliveries.labels(outcome.value).inc()
    return ANSWERS[outcome]


def too_large(declared_length: str) -> Answer | None:
    """The answer to a delivery whose declared length is over the bound, before reading."""
    if declared_length.isdigit() and int(declared_length) > MAX_BODY_BYTES:
        return answer(Outcome.TOO_LARGE)
    return None


async def deliver(
    runtime: Runtime, setup_id: str, signed: dict[str, str | None], body: bytes, client: str
) -> Answer:
    try:
        outcome = await runtime.intake.handle(setup_id, signed, body, client)
    except StorageUnavailable:
        # Nothing was half-applied; a 503 makes the provider retry.
        metrics().webhook_deliveries.labels("unavailable").inc()
        return _UNAVAILABLE
    return answer(outcome)


@post(
    PATH_PREFIX + "{setup_id:str}",
    request_max_body_size=MAX_BODY_BYTES,
    include_in_schema=False,
)
async def receive_imessage_webhook(
    setup_id: FromPath[str], request: Request[Any, Any, Any], runtime: Runtime
) -> Response[bytes]:
    refused = too_large(request.headers.get("content-length", ""))
    if refused is not None:
        return refused.response()
    try:
        body = await request.body()
    except ClientException:
        return answer(Outcome.TOO_LARGE).response()
    client = request.client.host if request.client else "unknown"
    signed = signed_headers(lambda name: request.headers.getall(name, []))
    return (await deliver(runtime, setup_id, signed, body, client)).response()
