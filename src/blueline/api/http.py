"""GraphQL over HTTP: ``POST /graphql`` (and, in development, ``GET`` queries and the
GraphiQL page), subscriptions over ``multipart/mixed`` for clients without WebSockets.

Every request-level failure answers with a GraphQL-shaped body and a stable
``extensions.code`` (never a framework's own error format), logged once with the
request id. Requests are authenticated before they get here (``api.auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from graphql import OperationType
from litestar import MediaType, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import ClientException
from litestar.params import FromPath
from litestar.response import Stream
from strawberry.http.streaming import MultipartSubscriptionTransport, merge_stream_with_heartbeat

from blueline import graphiql
from blueline.api import responses
from blueline.api.auth import client_address
from blueline.api.live import LiveEnd, Operation, Runner
from blueline.api.responses import Answer
from blueline.api.websocket import CLOSE_FORBIDDEN, Sockets
from blueline.domain import Caller
from blueline.observability.metrics import record_operation
from blueline.observability.request_id import current_request_id

logger = logging.getLogger("blueline.graphql")

GRAPHQL_PATH = "/graphql"
_MULTIPART = MultipartSubscriptionTransport()
SUBSCRIBE_HOW = (
    "Subscriptions need a stream: open a WebSocket to /graphql (graphql-transport-ws or "
    "graphql-ws), or POST with `Accept: multipart/mixed;subscriptionSpec=1.0`"
)


@dataclass(frozen=True)
class GraphQLRequest:
    query: str | None = None
    variables: dict[str, Any] | None = None
    operation_name: str | None = None


def parse_request(body: bytes) -> GraphQLRequest | str:
    """The request, or why the body is not one. The standard library decoder keeps
    escaped lone surrogates (they are valid JSON), so names holding them get a user
    error like any other refused character, not a bare 400."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    except RecursionError:
        return "the body nests too deeply"
    except ValueError:
        return "the body is not JSON"
    if not isinstance(data, dict):
        return "the body must be a JSON object (batches are not supported)"
    query, variables, name = data.get("query"), data.get("variables"), data.get("operationName")
    if not isinstance(query, str | None):
        return "`query` must be a string"
    if not isinstance(variables, dict | None):
        return "`variables` must be an object"
    if not isinstance(name, str | None):
        return "`operationName` must be a string"
    return GraphQLRequest(query, variables, name)


def refusal(
    status: int, message: str, code: str, *, headers: dict[str, str] | None = None
) -> Answer:
    """A request-level failure, logged once with the id the client also gets."""
    request_id = current_request_id()
    logger.info("graphql request refused: %s (%s)", code, message)
    extra = {"requestId": request_id} if request_id else {}
    return Answer(status, responses.errors_body(responses.error(message, code, **extra)), headers)


def failure(
    status: int, message: str, code: str, *, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return refusal(status, message, code, headers=headers).response()


def unavailable() -> Answer:
    return refusal(
        503,
        "The service is briefly unavailable; retry shortly",
        responses.UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def unauthorized(message: str) -> Answer:
    return refusal(401, message, responses.UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})


def too_many(message: str) -> Answer:
    return refusal(429, message, responses.RATE_LIMITED, headers={"Retry-After": "1"})


INTERNAL_MESSAGE = "Unexpected error. Quote the requestId when you report it."


def internal() -> Answer:
    return refusal(500, INTERNAL_MESSAGE, responses.INTERNAL)


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def accepts_multipart_subscription(accept: str) -> bool:
    """Whether any media range of ``Accept`` asks for multipart subscriptions.

    Accept is a list whose order carries no preference and whose media types are
    case-insensitive (RFC 9110); Strawberry's own check reads the whole header as one
    media type, so a client that lists ``application/json`` first got a 400.
    """
    for media_range in _split_unquoted(accept, ","):
        media_type, *parameters = _split_unquoted(media_range, ";")
        if media_type.strip().lower() != "multipart/mixed":
            continue
        params = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        if params.get("boundary", _MULTIPART.separator) != _MULTIPART.separator:
            continue
        try:
            refused = float(params.get("q", "1")) == 0
        except ValueError:
            refused = False
        if params.get("subscriptionspec", "").startswith("1.0") and not refused:
            return True
    return False


def _caller(request: Request[Any, Any, Any]) -> Caller:
    caller = request.scope.get("auth")
    assert isinstance(caller, Caller)  # api.auth ran first
    return caller


async def run_operation(
    runner: Runner, caller: Caller, payload: GraphQLRequest, *, via_get: bool, accept: str
) -> Answer | Operation:
    """The answer to a request, or the subscription to stream when it asked for one
    (``multipart/mixed`` in ``accept``) and may have it."""
    if not payload.query:
        return refusal(400, "No GraphQL query found in the request", responses.BAD_REQUEST)
    limits = runner.runtime.api_key_limits
    # Parsing and validating a new document is the costliest thing a request can make
    # us do before anything runs, so an exhausted key is refused before it, and every
    # document parsed is paid for, refused or not.
    if not limits.has_tokens(caller.api_key_id):
        return _rate_limited()
    prepared = runner.prepare(payload.query, payload.operation_name, payload.variables)
    if not isinstance(prepared, Operation):
        limits.allow(caller.api_key_id)
        record_operation(caller.api_key_id, payload.operation_name, "error")
        return Answer(200, responses.encode({"errors": prepared}))
    op = prepared
    if via_get and op.kind != OperationType.QUERY:
        limits.allow(caller.api_key_id)
        return refusal(405, "Only queries may be sent with GET", responses.METHOD_NOT_ALLOWED)
    if op.kind == OperationType.SUBSCRIPTION and not accepts_multipart_subscription(accept):
        limits.allow(caller.api_key_id)
        return refusal(400, SUBSCRIBE_HOW, responses.SUBSCRIPTION_TRANSPORT)
    if not limits.allow(caller.api_key_id, op.cost):
        return _rate_limited()
    if op.kind == OperationType.SUBSCRIPTION:
        return op
    body, storage_down = await runner.execute(op, caller, current_request_id())
    record_operation(caller.api_key_id, op.label, "unavailable" if storage_down else "ok")
    if storage_down:
        return unavailable()
    return Answer(200, body)


def before_body(content_type: str, content_length: str, max_body_bytes: int) -> Answer | None:
    """What refuses a POST from its headers alone, before its body is read."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in (responses.JSON, responses.GRAPHQL_RESPONSE_JSON):
        return refusal(
            415,
            "Send GraphQL as JSON: Content-Type: application/json",
            responses.UNSUPPORTED_MEDIA_TYPE,
        )
    if content_length.isdigit() and int(content_length) > max_body_bytes:
        return too_large(max_body_bytes)
    return None


async def answer_post(
    runner: Runner, caller: Caller, body: bytes, accept: str
) -> Answer | Operation:
    payload = parse_request(body)
    if isinstance(payload, str):
        return refusal(400, f"Not a GraphQL request: {payload}", responses.BAD_REQUEST)
    return await run_operation(runner, caller, payload, via_get=False, accept=accept)


def _respond(
    request: Request[Any, Any, Any], runner: Runner, result: Answer | Operation, sockets: Sockets
) -> Response[Any]:
    if isinstance(result, Answer):
        return result.response()
    caller = _caller(request)
    slot = _StreamSlot(client_address(request), caller)
    if not sockets.admit(slot):
        return failure(
            503,
            "Too many connections; try again later",
            responses.UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    return _multipart(runner, result, caller, slot, sockets)


def _rate_limited() -> Answer:
    return refusal(
        429,
        "Too many requests for this API key; slow down",
        responses.RATE_LIMITED,
        headers={"Retry-After": "1"},
    )


class _StreamSlot:
    """A multipart subscription as the connection caps and revocation see it: what a
    socket would be closed with ends the stream instead, with the reason as its error."""

    __slots__ = ("caller", "client", "closed", "ended")

    def __init__(self, client: str, caller: Caller) -> None:
        self.client = client
        self.caller: Caller | None = caller
        self.ended = asyncio.Event()
        self.closed: tuple[int, str] = (0, "")

    def close_soon(self, code: int, reason: str) -> None:
        if not self.ended.is_set():
            self.closed = (code, reason)
            self.ended.set()

    def ping_soon(self) -> None:
        """The stream's heartbeats already keep it alive."""

    def error(self) -> dict[str, Any]:
        code, reason = self.closed
        kind = responses.UNAUTHENTICATED if code == CLOSE_FORBIDDEN else responses.UNAVAILABLE
        return responses.error(reason, kind)


async def _until_ended(updates: AsyncIterator[str], slot: _StreamSlot) -> AsyncIterator[str]:
    """``updates`` until they end or ``slot`` is closed (then :class:`LiveEnd`)."""
    ended = asyncio.ensure_future(slot.ended.wait())
    following: asyncio.Future[str] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(updates))
            await asyncio.wait((following, ended), return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                raise LiveEnd([slot.error()])
            yield following.result()
    except StopAsyncIteration:
        return
    finally:
        ended.cancel()
        # Also when the client left (this generator cancelled): the pending step runs
        # inside ``updates``, which can only be closed once it has stopped.
        if following is not None and not following.done():
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, LiveEnd):
                await following


def _multipart(
    runner: Runner, op: Operation, caller: Caller, slot: _StreamSlot, sockets: Sockets
) -> Response[Any]:
    request_id = current_request_id()

    async def parts() -> AsyncGenerator[str, None]:
        updates = runner.subscribe(op, caller, request_id, "multipart")
        try:
            async for text in _until_ended(updates, slot):
                yield _MULTIPART.encode_next(_Raw(text), _raw_json)  # type: ignore[arg-type]
        except LiveEnd as ended:
            yield _MULTIPART.encode_multipart_data(
                {"payload": {"errors": ended.errors}}, _json_text
            )
        finally:
            sockets.leave(slot)
            if isinstance(updates, AsyncGenerator):
                await updates.aclose()
        yield _MULTIPART.encode_complete()

    stream = merge_stream_with_heartbeat(
        parts,
        lambda: _MULTIPART.heartbeat_message(_json_text),
        interval=_MULTIPART.heartbeat_interval,
        send_initial_heartbeat=True,
    )
    # Also when the body never starts (the client left first), the slot is given back.
    return Stream(
        stream(),
        headers=dict(_MULTIPART.headers),
        background=BackgroundTask(sockets.leave, slot),
    )


class _Raw:
    """An update payload that is already JSON text (compiled subscriptions render once
    per event for every subscriber)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _raw_json(value: object) -> str:
    if isinstance(value, dict):
        payload = value.get("payload")
        if isinstance(payload, _Raw):
            return '{"payload":' + payload.text + "}"
    return _json_text(value)


def _json_text(value: object) -> str:
    return responses.encode(value).decode()


def graphql_handlers(
    *, max_body_bytes: int, production: bool, middleware: list[Any], sockets: Sockets
) -> list[Any]:
    # Handlers inject the runner only: Litestar resolves two or more dependencies in an
    # anyio task group, a task each, on every request.
    @post(
        GRAPHQL_PATH,
        request_max_body_size=max_body_bytes,
        status_code=200,
        middleware=middleware,
    )
    async def graphql_post(request: Request[Any, Any, Any], runner: Runner) -> Response[Any]:
        # Only what api.direct passes on gets here (multipart subscriptions), but every
        # POST would be answered the same way.
        headers = request.headers
        refused = before_body(
            headers.get("content-type", ""), headers.get("content-length", ""), max_body_bytes
        )
        if refused is not None:
            return refused.response()
        try:
            body = await request.body()
        except ClientException:
            return too_large(max_body_bytes).response()
        result = await answer_post(runner, _caller(request), body, headers.get("accept", ""))
        return _respond(request, runner, result, sockets)

    @get(GRAPHQL_PATH, middleware=middleware)
    async def graphql_get(request: Request[Any, Any, Any], runner: Runner) -> Response[Any]:
        if "query" not in request.query_params:
            if not production and _wants_html(request):
                return Response(
                    graphiql.render_page(GRAPHQL_PATH),
                    media_type=MediaType.HTML,
                    headers={"Content-Security-Policy": graphiql.CONTENT_SECURITY_POLICY},
                )
            return failure(
                405 if production else 400,
                "Send GraphQL in a POST" if production else "No GraphQL query found in the request",
                responses.METHOD_NOT_ALLOWED if production else responses.BAD_REQUEST,
            )
        if production:
            return failure(405, "Send GraphQL in a POST", responses.METHOD_NOT_ALLOWED)
        params = request.query_params
        try:
            variables = json.loads(params["variables"]) if params.get("variables") else None
        except (ValueError, RecursionError):
            return failure(400, "`variables` is not JSON", responses.BAD_REQUEST)
        if variables is not None and not isinstance(variables, dict):
            return failure(400, "`variables` must be an object", responses.BAD_REQUEST)
        payload = GraphQLRequest(params.get("query"), variables, params.get("operationName"))
        result = await run_operation(
            runner,
            _caller(request),
            payload,
            via_get=True,
            accept=request.headers.get("accept", ""),
        )
        return _respond(request, runner, result, sockets)

    handlers: list[Any] = [graphql_post, graphql_get]
    if not production:

        @get(f"{graphiql.ASSET_PATH}/{{name:str}}", include_in_schema=False)
        async def graphiql_asset(name: FromPath[str]) -> Response[bytes]:
            found = graphiql.asset(name)
            if found is None:
                return Response(b"", status_code=404)
            content, media_type = found
            return Response(
                content, media_type=media_type, headers={"Cache-Control": "max-age=3600"}
            )

        handlers.append(graphiql_asset)
    return handlers


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept


def too_large(limit: int) -> Answer:
    return refusal(413, f"The request is over {limit} bytes", responses.PAYLOAD_TOO_LARGE)
