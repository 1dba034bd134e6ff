"""HTTP boundary of the webhook intake; the decisions live in :mod:`intake`."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import FromPath

from blueline.runtime import Runtime
from blueline.webhooks.intake import MAX_BODY_BYTES, TOO_LARGE


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
        return Response(TOO_LARGE.body, status_code=TOO_LARGE.status)
    body = await request.body()
    answer = await runtime.intake.handle(setup_id, request.headers, body)
    return Response(answer.body, status_code=answer.status)
