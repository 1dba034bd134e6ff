"""A hostile client against the API on a real socket, on both databases.

Each test drives one attack over HTTP or WebSocket and checks the defence by what the
server answers and by the work it did (statements, decryptions, HMACs, AST selections
visited, tasks left behind), never by how long it took: timing is measured in
``bench/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import json
import logging
import re
import secrets
import socket
import sys
import time
import tracemalloc
import types
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from graphql import FragmentDefinitionNode, OperationDefinitionNode, parse
from graphql.validation.rules import overlapping_fields_can_be_merged as overlapping
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from blueline import ids
from blueline.access import _check_name as check_workspace_name
from blueline.access import create_api_key
from blueline.api.connections import MAX_HEAD_BYTES
from blueline.api.documents import (
    MAX_MUTATION_FIELDS,
    MAX_REPEATED_FIELD,
    CostWalker,
    DocumentCache,
)
from blueline.api.schema import build_schema
from blueline.app import create_app
from blueline.errors import InvalidInput
from blueline.persistence.database import Database, observing_statements
from blueline.persistence.eventlog import parse_event_id
from blueline.persistence.webhooks import SetupSecret
from blueline.provisioning.validation import (
    clean_name,
    validate_setup_input,
    validate_update_input,
)
from blueline.security.vault import Vault
from blueline.settings import Settings
from blueline.webhooks.signature import generate_secret
from tests.conftest import Api, make_settings, served_like
from tests.integration.test_graphql_setups import create
from tests.support.asgi_server import HOST
from tests.support.webhooks import assignment_body, signed_headers, subaccount_of
from tests.support.ws import LEGACY_WS, TRANSPORT_WS, graphql_ws

PROTOCOLS = [TRANSPORT_WS, LEGACY_WS]
LIST = "{ imessageSetups { totalCount } }"


# ------------------------------------------------------------------------ serving


@dataclass
class Served:
    """The API on a real port, served by uvicorn on this test's own event loop, so the
    test can see the server's tasks and the work its requests do."""

    url: str
    settings: Settings
    key: str
    http: httpx.AsyncClient
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/graphql"

    def api(self, key: str | None = None) -> Api:
        return Api(self.url, key or self.key)

    async def graphql(
        self, query: str, variables: dict[str, Any] | None = None, *, key: str | None = None
    ) -> httpx.Response:
        return await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {key or self.key}"},
        )


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


@asynccontextmanager
async def serving(settings: Settings, workspace: str = "clinic-a") -> AsyncIterator[Served]:
    sock = _listening_socket()
    port = int(sock.getsockname()[1])
    settings = settings.model_copy(
        update={"port": port, "public_base_url": f"http://{HOST}:{port}"}
    )
    config = uvicorn.Config(
        create_app(settings),
        host=HOST,
        port=port,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=5,
        **served_like(settings),
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    task = loop.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        db = Database(settings.database_url.get_secret_value())
        try:
            key = await create_api_key(db, workspace)
        finally:
            await db.dispose()
        url = f"http://{HOST}:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield Served(url, settings, key, http, errors)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()
        loop.set_exception_handler(previous)


def abuse_settings(database_url: str, sandbox_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ws_init_timeout_s": 0.5,
        # Background polls would run statements in the middle of the work counted here.
        "relay_poll_interval_s": 3600,
        "revocation_poll_interval_s": 3600,
    }
    values.update(overrides)
    return make_settings(database_url, sandbox_url, **values)


@pytest.fixture
async def served(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> AsyncIterator[Served]:
    async with serving(abuse_settings(database_url, sandbox_url)) as s:
        yield s


async def socket_close(
    url: str, protocol: str, messages: list[str | dict[str, Any]], *, timeout: float = 10
) -> tuple[int, str]:
    """Open a socket, send ``messages``, and return how the server closes it."""
    async with connect(url, subprotocols=[Subprotocol(protocol)], max_size=2**24) as ws:
        for message in messages:
            try:
                await ws.send(message if isinstance(message, str) else json.dumps(message))
            except ConnectionClosed:
                break
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await ws.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (1006, "")
    raise AssertionError("unreachable")  # pragma: no cover


def init(key: str | None) -> dict[str, Any]:
    return {"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}


def subscribe_message(protocol: str, query: str, op_id: str = "1") -> dict[str, Any]:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return {"id": op_id, "type": kind, "payload": {"query": query}}


def error_codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors", [])]


async def subaccount_count(sandbox: httpx.AsyncClient) -> int:
    response = await sandbox.get("/sandbox/subaccounts")
    response.raise_for_status()
    return len(response.json()["data"])


# ---------------------------------------------------------------- fragment fan-out


def fan_out(depth: int) -> str:
    """``F0`` selects one field; each ``Fi`` spreads ``F(i-1)`` twice: ``F39`` expands to
    2^39 fields from a document of forty short lines."""
    fragments = ["fragment F0 on IMessageSetup { id }"]
    fragments += [
        f"fragment F{i} on IMessageSetup {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, depth + 1)
    ]
    return f"{{ imessageSetups {{ edges {{ node {{ ...F{depth} }} }} }} }}\n" + "\n".join(fragments)


def test_the_cost_walk_visits_each_fragment_once() -> None:
    """The walk that refuses a fan-out looks at each selection of the text once: adding a
    fragment adds its two spreads, where expanding it would double the walk."""
    visited = []
    for depth in range(1, 40):
        document = parse(fan_out(depth), no_location=True)
        fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        [operation] = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        walker = CostWalker(fragments)
        cost = walker.selection_set(operation.selection_set)
        assert cost.fields == 3 + 2**depth
        visited.append(walker.visited)
    steps = {b - a for a, b in itertools.pairwise(visited)}
    assert steps == {2}

    documents = DocumentCache(build_schema()._schema, production=False)
    prepared = [documents.prepare(fan_out(depth)) for depth in (10, 20, 39)]
    assert [p.visited for p in prepared] == [visited[9], visited[19], visited[38]]


async def test_a_burst_of_fragment_fan_outs_is_refused_while_health_answers(
    served: Served,
) -> None:
    # Forty distinct documents: none is answered from the cache.
    attack = [fan_out(39) + f"\n# {n}" for n in range(40)]

    async def attempt(document: str) -> dict[str, Any]:
        response = await served.http.post(
            "/graphql",
            json={"query": document},
            headers={"Authorization": f"Bearer {served.key}"},
        )
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def health() -> int:
        return (await served.http.get("/healthz")).status_code

    results = await asyncio.gather(*(attempt(d) for d in attack), *(health() for _ in range(20)))
    refusals, probes = results[:40], results[40:]
    assert probes == [200] * 20
    for body in refusals:
        assert body.get("data") is None
        [error] = body["errors"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert f"selects {3 + 2**39} fields once fragments are expanded" in error["message"]


def repeated(copies: int, tag: str = "") -> str:
    """The same field ``copies`` times in one place, through fragments (each a spread)
    and as plain copies: graphql-core checks that they can be merged pair by pair."""
    through = copies // 10
    fragments = " ".join(
        f"fragment R{i} on IMessageSetup {{ phoneLines {{ id }} }}" for i in range(through)
    )
    spreads = " ".join(f"...R{i}" for i in range(through))
    plain = "phoneLines { id } " * (copies - through)
    return f"{{ imessageSetups {{ edges {{ node {{ {spreads} {plain} }} }} }} }} {fragments} #{tag}"


@contextmanager
def counting_merge_checks() -> Iterator[Counter[str]]:
    """Calls of graphql-core's pairwise comparison of fields (observed, not replaced)."""
    seen: Counter[str] = Counter()
    code = overlapping.find_conflict.__code__

    def profile(frame: types.FrameType, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code is code:
            seen["pairs compared"] += 1

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def test_fields_repeated_in_one_place_are_refused_before_they_are_compared_in_pairs() -> None:
    documents = DocumentCache(build_schema()._schema, production=False)
    with counting_merge_checks() as at_bound:
        allowed = documents.prepare(repeated(MAX_REPEATED_FIELD))
    assert allowed.valid
    with counting_merge_checks() as over:
        refused = documents.prepare(repeated(300))
    [error] = refused.errors
    assert (
        f"selects 'phoneLines' 300 times in one place once fragments are expanded "
        f"(at most {MAX_REPEATED_FIELD})" in error.message
    )
    # The pairwise check never ran: the walk refused it first.
    assert over["pairs compared"] == 0
    assert 0 < at_bound["pairs compared"] <= 4 * MAX_REPEATED_FIELD**2


async def test_a_burst_of_repeated_fields_is_refused_while_health_answers(
    served: Served,
) -> None:
    async def attempt(n: int) -> list[str]:
        response = await served.graphql(repeated(300, str(n)))
        return error_codes(response.json())

    async def health() -> int:
        return (await served.http.get("/healthz")).status_code

    results = await asyncio.gather(*(attempt(n) for n in range(30)), *(health() for _ in range(20)))
    assert results[30:] == [200] * 20
    assert results[:30] == [["GRAPHQL_VALIDATION_FAILED"]] * 30


# ---------------------------------------------------------------------- request size


def padded(size: int, tag: str = "") -> str:
    """``#<padding>\\n{ __typename }`` whose JSON request body is exactly ``size`` bytes."""
    overhead = len(json.dumps({"query": "#" + tag + "\n{ __typename }"}))
    return "#" + tag + "x" * (size - overhead) + "\n{ __typename }"


def body_of(query: str) -> bytes:
    return json.dumps({"query": query}).encode()


async def test_bodies_over_the_bound_get_413_with_or_without_a_length(served: Served) -> None:
    limit = served.settings.graphql_max_body_bytes
    headers = {"Authorization": f"Bearer {served.key}", "Content-Type": "application/json"}
    at_cap = body_of(padded(limit))
    assert len(at_cap) == limit
    accepted = await served.http.post("/graphql", content=at_cap, headers=headers)
    assert accepted.json() == {"data": {"__typename": "Query"}}

    over = body_of(padded(limit + 1))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(over), 4096):
            yield over[start : start + 4096]

    declared = await served.http.post("/graphql", content=over, headers=headers)
    streamed = await served.http.post("/graphql", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    for response in (declared, streamed):
        assert response.status_code == 413
        [error] = response.json()["errors"]
        assert error["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
        assert error["extensions"]["requestId"] == response.headers["x-request-id"]


# ------------------------------------------------------------- connection bounds

# Short deadlines, so the drills below see them; what a test waits for a closing is
# far past them, so only a connection the server never closes fails it.
CONNECTION_DEADLINE_S = 0.5
CLOSED_WITHIN_S = 10.0


@pytest.fixture
async def strict(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> AsyncIterator[Served]:
    settings = abuse_settings(
        database_url,
        sandbox_url,
        http_head_timeout_s=CONNECTION_DEADLINE_S,
        http_body_timeout_s=CONNECTION_DEADLINE_S,
    )
    async with serving(settings) as s:
        yield s


@asynccontextmanager
async def raw_connection(
    url: str,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(CLOSED_WITHIN_S):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def head(key: str, *extra: bytes, length: int = 2) -> bytes:
    lines = [
        b"POST /graphql HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Authorization: Bearer " + key.encode(),
        b"Content-Length: " + str(length).encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


QUERY_BODY = json.dumps({"query": LIST}).encode()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response off a kept-alive connection: its status line."""
    status, *headers = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    [length] = [h.split(b":")[1] for h in headers if h.lower().startswith(b"content-length:")]
    await reader.readexactly(int(length))
    return status


async def test_heads_over_32_kib_get_431_whether_one_header_or_many(strict: Served) -> None:
    def request(extra: list[bytes]) -> bytes:
        return head(strict.key, *extra, length=len(QUERY_BODY)) + QUERY_BODY

    pads = [b"X-Pad-%d: %s" % (n, b"a" * 1000) for n in range(34)]
    under = request(pads[:30])  # about 30 KiB
    one_big = request([b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1)])
    many = request(pads)
    cases = {
        "under, in one write": [under],
        "under, in pieces": [under[:20_000], under[20_000:]],
        "one big header": [one_big],
        "many headers, in one write": [many],
        "many headers, in pieces": [many[:20_000], many[20_000:]],
    }
    answers = {}
    for name, pieces in cases.items():
        async with raw_connection(strict.url) as (reader, writer):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)  # so the server reads the pieces apart
            answers[name] = await reader.readuntil(b"\r\n")
            if name.startswith("under"):
                continue
            rest = await until_closed(reader)
            assert b"request line and headers exceed 32 KiB" in rest, rest
    ok, too_large = b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert answers == {name: ok if name.startswith("under") else too_large for name in cases}, (
        answers
    )


async def test_a_head_that_never_ends_is_refused_before_it_is_all_held(strict: Served) -> None:
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        sent = 0
        answer = b""
        # A megabyte in pieces; the server answers once it has read past the bound.
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"a" * 16384)
                await writer.drain()
                sent += 16384
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(200), 0.05)
                if answer:
                    break
        answer = answer or await until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert sent < 1024 * 1024, sent


async def test_silent_and_dribbling_clients_get_408_and_lose_the_connection(strict: Served) -> None:
    async with raw_connection(strict.url) as (reader, _writer):
        silent = await until_closed(reader)
    async with raw_connection(strict.url) as (reader, writer):

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head(strict.key):
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        dribbling = asyncio.create_task(dribble())
        dribbled = await until_closed(reader)
        dribbling.cancel()
    for answer in (silent, dribbled):
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert (await strict.graphql(LIST)).status_code == 200


async def test_a_body_slower_than_its_deadline_loses_the_connection_and_its_task(
    strict: Served,
) -> None:
    def requests_running() -> int:
        return sum("run_asgi" in repr(t.get_coro()) for t in server_tasks())

    async with raw_connection(strict.url) as (reader, writer):
        writer.write(head(strict.key, length=len(QUERY_BODY)) + QUERY_BODY[:5])
        await asyncio.sleep(0.1)
        waiting = requests_running()
        answer = await until_closed(reader)
    # Closed unanswered (the request never had all its body), and the request's task,
    # which was waiting for the rest, has ended.
    assert answer == b"", answer
    assert waiting == 1
    for _ in range(100):
        if requests_running() == 0:
            break
        await asyncio.sleep(0.05)
    assert requests_running() == 0
    assert (await strict.graphql(LIST)).status_code == 200


async def test_a_stalled_head_behind_a_running_stream_closes_without_a_stray_answer(
    strict: Served,
) -> None:
    """A request pipelined behind a multipart subscription waits for it; when its head
    stalls past the deadline, the connection closes and no 408 lands in the stream."""
    subscribe = json.dumps({"query": SUBSCRIPTION}).encode()
    stream = head(
        strict.key, b"Accept: multipart/mixed;subscriptionSpec=1.0", length=len(subscribe)
    )
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(stream + subscribe)
        status = await reader.readuntil(b"\r\n")
        writer.write(b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        rest = await until_closed(reader)
    assert status == b"HTTP/1.1 200 OK\r\n"
    assert b"HTTP/1.1" not in rest, rest[-300:]


async def test_bytes_that_begin_no_request_start_the_next_heads_deadline(
    strict: Served,
) -> None:
    """A blank line after an answer, or a body sent after the answer its head got, used
    to stop uvicorn's keep-alive timer for good, and blank lines sent every few seconds
    would have set it afresh each time: the connection stayed open forever."""
    request = head(strict.key, length=len(QUERY_BODY)) + QUERY_BODY
    refused_early = head("bl_live_" + "x" * 43, length=len(QUERY_BODY))
    closings = []
    for first, then, repeat in (
        (request, b"\r\n", False),
        (request, b"\r\n", True),
        (refused_early, QUERY_BODY, False),
    ):
        async with raw_connection(strict.url) as (reader, writer):
            writer.write(first)
            status = await read_response(reader)
            writer.write(then)

            async def blank_lines(writer: asyncio.StreamWriter, repeat: bool) -> None:
                with contextlib.suppress(ConnectionError):
                    while repeat:
                        await asyncio.sleep(CONNECTION_DEADLINE_S / 5)
                        writer.write(b"\r\n")
                        await writer.drain()

            sending = asyncio.create_task(blank_lines(writer, repeat))
            closings.append((status, (await until_closed(reader))[:30]))
            sending.cancel()
    timed_out = b"HTTP/1.1 408 Request Timeout\r\n"
    assert closings == [
        (b"HTTP/1.1 200 OK", timed_out),
        (b"HTTP/1.1 200 OK", timed_out),
        (b"HTTP/1.1 401 Unauthorized", timed_out),
    ]


async def test_tiny_headers_deep_pipelines_and_endless_trailers_are_cut_off(
    strict: Served,
) -> None:
    many = [b"a: b"] * 150  # 750 bytes of head, 150 tuples
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(head(strict.key, *many, length=len(QUERY_BODY)) + QUERY_BODY)
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 431 ")
    # Fifty requests read ahead of their answers: the connection is closed once more
    # than a few wait, not queued without end.
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 50)
        answered = (await until_closed(reader)).count(b"HTTP/1.1 200 OK")
    assert answered < 50
    # A trailer that never ends: the connection closes once the body's bound is read.
    chunked = head(strict.key, length=0).replace(
        b"Content-Length: 0", b"Transfer-Encoding: chunked"
    )
    sent = 0
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(chunked + b"%x\r\n%s\r\n0\r\nX-T: " % (len(QUERY_BODY), QUERY_BODY))
        with contextlib.suppress(ConnectionError):
            for _ in range(256):
                writer.write(b"a" * 16384)
                await writer.drain()
                sent += 16384
                if reader.at_eof():
                    break
                await asyncio.sleep(0.001)
        await until_closed(reader)
    assert sent < 4 * 1024 * 1024, sent


async def test_a_head_unfinished_behind_a_queued_request_keeps_the_stream_open(
    strict: Served,
) -> None:
    """While a request waits behind a stream, uvicorn reads nothing more: a head that
    is incomplete only because of that must not run into its deadline."""
    subscribe = json.dumps({"query": SUBSCRIPTION}).encode()
    stream = head(
        strict.key, b"Accept: multipart/mixed;subscriptionSpec=1.0", length=len(subscribe)
    )
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(stream + subscribe)
        assert await reader.readuntil(b"\r\n") == b"HTTP/1.1 200 OK\r\n"
        writer.write(get + get[:10])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(get[10:])
        await asyncio.sleep(CONNECTION_DEADLINE_S * 4)
        with contextlib.suppress(TimeoutError):
            while await asyncio.wait_for(reader.read(4096), CONNECTION_DEADLINE_S):
                pass
        assert not reader.at_eof()


async def test_trailers_are_held_to_the_head_bound(strict: Served) -> None:
    """uvicorn adds a chunked body's trailers to the request's headers: without a
    bound, one connection could send gigabytes of them within the body deadline."""
    body = b"%x\r\n%s\r\n0\r\n" % (len(QUERY_BODY), QUERY_BODY)
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (n, b"a" * 1000) for n in range(40))
    chunked = head(strict.key, length=0).replace(
        b"Content-Length: 0", b"Transfer-Encoding: chunked"
    )
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(chunked + body + trailers + b"\r\n")
        answer = await until_closed(reader)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(chunked + body + b"X-Trailer: small\r\n\r\n")
        assert await read_response(reader) == b"HTTP/1.1 200 OK"


async def test_an_unfinished_head_over_the_bound_in_one_read_gets_431_at_once(
    strict: Served,
) -> None:
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 100_000)
        answer = await until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


async def test_a_request_queued_behind_a_stream_keeps_the_stream_open(strict: Served) -> None:
    """uvicorn stops reading once a pipelined request's head is in, until the request
    before is answered: the queued body's deadline must not run meanwhile."""
    subscribe = json.dumps({"query": SUBSCRIPTION}).encode()
    stream = head(
        strict.key, b"Accept: multipart/mixed;subscriptionSpec=1.0", length=len(subscribe)
    )
    queued = head(strict.key, length=len(QUERY_BODY)) + QUERY_BODY
    async with raw_connection(strict.url) as (reader, writer):
        writer.write(stream + subscribe)
        assert await reader.readuntil(b"\r\n") == b"HTTP/1.1 200 OK\r\n"
        writer.write(queued[:-5])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(queued[-5:])
        await asyncio.sleep(CONNECTION_DEADLINE_S * 4)
        assert not reader.at_eof()
        # Still streaming: reads end by timeout, not by the connection closing.
        with contextlib.suppress(TimeoutError):
            while await asyncio.wait_for(reader.read(4096), CONNECTION_DEADLINE_S):
                pass
        assert not reader.at_eof()


async def test_a_kept_alive_connection_idle_past_the_head_deadline_is_still_served(
    strict: Served,
) -> None:
    request = head(strict.key, length=len(QUERY_BODY)) + QUERY_BODY
    async with raw_connection(strict.url) as (reader, writer):
        statuses = []
        for pause in (0.0, CONNECTION_DEADLINE_S * 3):
            await asyncio.sleep(pause)
            writer.write(request)
            statuses.append(await read_response(reader))
        # Three at once, and a body of nearly the whole bound in the same read as its head.
        big = body_of(padded(strict.settings.graphql_max_body_bytes))
        writer.write(request * 3 + head(strict.key, length=len(big)) + big)
        async with asyncio.timeout(CLOSED_WITHIN_S):
            statuses += [await read_response(reader) for _ in range(4)]
    assert statuses == [b"HTTP/1.1 200 OK"] * 6


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_websocket_messages_over_the_bound_close_the_socket_unparsed(
    served: Served, protocol: str
) -> None:
    limit = served.settings.graphql_max_body_bytes
    # Not JSON: parsed, it would close with 4400 instead.
    assert await socket_close(served.ws_url, protocol, ["[" * (limit + 1)]) == (
        1009,
        f"frame with {limit + 1} bytes exceeds limit of {limit} bytes",
    )
    query = padded(limit + 1)
    code, _reason = await socket_close(
        served.ws_url, protocol, [init(served.key), subscribe_message(protocol, query)]
    )
    assert code == 1009
    # A message at the bound is a message like any other.
    async with graphql_ws(served.url, served.key, protocol=protocol) as ws:
        op = await ws.subscribe(padded(limit - 200))
        assert await ws.next_data(op) == {"__typename": "Query"}


def hostile_documents(n: int, size: int) -> Iterator[str]:
    """Distinct documents of about ``size`` characters, of each kind that makes an
    entry hold the most for its text: valid ones padded with a comment, invalid ones
    whose errors point at many nodes, and invalid ones whose messages echo long values."""
    many = max(size // 10, 10)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield padded(size, f"{i:06d}")
        elif kind == 1:
            yield "{ __typename(" + " ".join(f"a{j}:{i}" for j in range(many // 10)) + ") }"
        elif kind == 2:
            values = ",".join(["ACTIVE"] * (many // 7))
            yield f"{{ imessageSetups(first: 1, status: [{values}]) {{ totalCount }} }} #{i}"
        else:
            fields = " ".join(
                f'a{j}: imessageSetups(first: "{i}{"y" * (size // 25)}") {{ totalCount }}'
                for j in range(20)
            )
            yield "{ " + fields + " }"


def test_distinct_documents_at_the_cap_only_evict() -> None:
    budget = 512 * 1024
    documents = DocumentCache(build_schema()._schema, production=False, max_bytes=budget)
    texts = list(hostile_documents(24, 64 * 1024 - 200))
    held = []
    for text in texts:
        documents.prepare(text)
        held.append(documents.held_bytes)
    assert max(held) <= budget
    assert len(documents) < len(texts)


def test_what_a_cached_document_holds_is_within_what_the_cache_counts() -> None:
    """Measured with tracemalloc, so the byte budget bounds memory whatever arrives (a
    located AST behind an error holds every token of its text)."""
    documents = DocumentCache(build_schema()._schema, production=False)
    texts = list(hostile_documents(16, 16 * 1024))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for text in texts:
            documents.prepare(text)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(documents) == len(texts)
    assert 0 < held <= documents.held_bytes


# ----------------------------------------------------------------------- WebSockets

SUBSCRIPTION = "subscription { phoneLineUpdates { eventId } }"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_websocket_handshake_rules_hold_on_both_protocols(
    served: Served, protocol: str
) -> None:
    url = served.ws_url
    assert await socket_close(url, protocol, []) == (4408, "Connection initialisation timeout")
    assert await socket_close(url, protocol, [init(served.key), init(served.key)]) == (
        4429,
        "Too many initialisation requests",
    )
    assert await socket_close(url, protocol, [subscribe_message(protocol, SUBSCRIPTION)]) == (
        4401,
        "Unauthorized",
    )
    code, reason = await socket_close(url, protocol, [init("bl_live_not-a-key")])
    assert code == 4403
    assert "Authorization" in reason


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_sockets_beyond_the_caps_are_closed_with_1013_and_a_reason(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient, protocol: str
) -> None:
    for caps in ({"ws_max_connections_per_client": 2}, {"ws_max_connections": 2}):
        settings = abuse_settings(database_url, sandbox_url, **caps)
        async with serving(settings) as served:
            async with (
                graphql_ws(served.url, served.key, protocol=protocol),
                graphql_ws(served.url, served.key, protocol=protocol),
            ):
                code, reason = await socket_close(served.ws_url, protocol, [init(served.key)])
                assert (code, reason) == (1013, "Too many connections; try again later"), caps
            # Leaving makes room again.
            async with graphql_ws(served.url, served.key, protocol=protocol):
                pass


async def test_bad_keys_over_websockets_spend_the_address_budget_shared_with_http(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> None:
    # One bad key a burst, refilled every five seconds: the test is done long before.
    settings = abuse_settings(database_url, sandbox_url, auth_failures_per_client_per_s=0.2)
    async with serving(settings) as served:
        code, _ = await socket_close(served.ws_url, TRANSPORT_WS, [init("bl_live_guess-1")])
        assert code == 4403
        # The budget is spent: from this address even a good key waits, over either
        # transport, and nothing is looked up for the next guess.
        refused = await socket_close(served.ws_url, TRANSPORT_WS, [init(served.key)])
        assert refused == (
            1013,
            "Too many requests with a missing or invalid API key from this address",
        )
        response = await served.graphql(LIST)
        assert response.status_code == 429
        assert error_codes(response.json()) == ["RATE_LIMITED"]


def server_tasks() -> set[asyncio.Task[Any]]:
    """The loop's tasks, less this test's own."""
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def settled_tasks(baseline: int, *, rounds: int = 100) -> set[asyncio.Task[Any]]:
    """The tasks once the server has finished closing what the clients left (closing
    handshakes and ended operations take a few turns of the loop)."""
    tasks = server_tasks()
    for _ in range(rounds):
        if len(tasks) <= baseline:
            break
        await asyncio.sleep(0.05)
        tasks = server_tasks()
    return tasks


async def churn(served: Served, n: int) -> None:
    """``n`` sockets opened and left every way a client can leave one: before init,
    after init, mid-subscription, by a repeated init, by dropping the TCP connection."""

    async def one(i: int) -> None:
        protocol = PROTOCOLS[i % 2]
        ws = await connect(served.ws_url, subprotocols=[Subprotocol(protocol)])
        try:
            step = i % 5
            if step >= 1:
                await ws.send(json.dumps(init(served.key)))
            if step >= 2:
                await ws.send(json.dumps(subscribe_message(protocol, SUBSCRIPTION)))
            if step == 3:
                await ws.send(json.dumps(init(served.key)))
            if step == 4:
                await ws.recv()  # connection_ack
                await ws.send(json.dumps({"id": "1", "type": "complete"}))
        except ConnectionClosed:
            pass
        finally:
            if i % 3 == 0:
                ws.transport.abort()
            else:
                await ws.close()

    for start in range(0, n, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 50, n))))


async def test_repeated_inits_and_socket_churn_leave_no_task_behind(
    database_url: str,
    sandbox_url: str,
    sandbox: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = abuse_settings(database_url, sandbox_url, graphql_rate_per_key_per_s=0)
    async with serving(settings) as served:
        # One socket first, so the process's own long-lived tasks (the ping ticker)
        # are running before counting.
        async with graphql_ws(served.url, served.key) as ws:
            await ws.subscribe(SUBSCRIPTION)
        await asyncio.sleep(0.2)
        baseline = len(server_tasks())

        with caplog.at_level(logging.WARNING):
            for _ in range(300):
                closed = await socket_close(
                    served.ws_url, TRANSPORT_WS, [init(served.key), init(served.key)]
                )
                assert closed[0] == 4429
            await churn(served, 1000)
            left = await settled_tasks(baseline)
            gc.collect()
            await asyncio.sleep(0)
        assert len(left) <= baseline, sorted(repr(t.get_coro()) for t in left)
        unretrieved = [e for e in served.loop_errors if "Task exception" in e["message"]]
        assert unretrieved == []
        assert "Task exception was never retrieved" not in caplog.text


async def test_socket_churn_leaves_no_unretrieved_exception(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> None:
    settings = abuse_settings(database_url, sandbox_url, graphql_rate_per_key_per_s=0)
    async with serving(settings) as served:
        await churn(served, 300)
        await settled_tasks(0, rounds=20)
        gc.collect()
        await asyncio.sleep(0)
        assert [e["message"] for e in served.loop_errors] == []


# ------------------------------------------------------------------------ mutations


def aliased_creates(n: int, tag: str) -> str:
    fields = " ".join(
        f'c{i}: createImessageSetup(input: {{businessName: "Flood {tag} {i}", label: "L"}}) '
        "{ setup { id } userErrors { code } }"
        for i in range(n)
    )
    return "mutation { " + fields + " }"


async def test_thirty_aliased_creates_are_refused_before_any_subaccount(
    served: Served, sandbox: httpx.AsyncClient
) -> None:
    before = await subaccount_count(sandbox)
    response = await served.graphql(aliased_creates(30, secrets.token_hex(3)))
    body = response.json()
    assert body.get("data") is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert f"it runs 30 mutations (at most {MAX_MUTATION_FIELDS} per request)" in error["message"]
    assert await subaccount_count(sandbox) == before
    listed = await served.graphql(LIST)
    assert listed.json() == {"data": {"imessageSetups": {"totalCount": 0}}}


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_each_mutation_field_costs_a_token(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient, transport: str
) -> None:
    """A key at 5/s holds ten tokens at most (a burst of twice its rate). Five listings
    spend five: ten mutations in one request then cost more than it has (until a second
    has passed), so none runs, where charging per request would have let all through."""
    settings = abuse_settings(database_url, sandbox_url, graphql_rate_per_key_per_s=5)
    async with serving(settings) as served:
        before = await subaccount_count(sandbox)
        for _ in range(5):
            assert (await served.graphql(LIST)).status_code == 200
        document = aliased_creates(MAX_MUTATION_FIELDS, secrets.token_hex(3))
        if transport == "http":
            response = await served.graphql(document)
            assert response.status_code == 429
            assert error_codes(response.json()) == ["RATE_LIMITED"]
        else:
            async with graphql_ws(served.url, served.key) as ws:
                op = await ws.subscribe(document)
                assert "slow down" in await ws.expect_error(op)
        assert await subaccount_count(sandbox) == before


async def test_refused_documents_are_paid_for_and_an_empty_key_is_refused_before_parsing(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> None:
    """Parsing is the cost a client controls: a key sending documents that fail to parse
    or validate spends its tokens like one whose documents run."""
    settings = abuse_settings(database_url, sandbox_url, graphql_rate_per_key_per_s=0.1)
    async with serving(settings) as served:
        # The burst is one token (twice the rate, at least one), refilled in ten seconds.
        broken = await served.graphql("{ imessageSetups { " + secrets.token_hex(4))
        assert error_codes(broken.json()) == ["GRAPHQL_PARSE_FAILED"]
        for document in ("{ imessageSetups { nope } }", "{ " + secrets.token_hex(4)):
            refused = await served.graphql(document)
            assert refused.status_code == 429
            assert error_codes(refused.json()) == ["RATE_LIMITED"]
        async with graphql_ws(served.url, served.key) as ws:
            op = await ws.subscribe("{ __typename")
            assert "slow down" in await ws.expect_error(op)


# ------------------------------------------------------------- webhook rejections


@dataclass
class Work:
    """What the server did for one request: the statements it ran, and calls of the
    functions that cost time (the vault's decryption, AES-GCM, HMAC, comparisons)."""

    statements: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    # Setups the secret lookup handed back (one per row it found).
    rows: int = 0


@contextmanager
def counting_work() -> Iterator[Work]:
    """Observes the calls (a profiler hook, nothing replaced) while the block runs; the
    server runs on this thread's loop, so its work is seen."""
    work = Work()
    watched: dict[types.CodeType, str] = {
        Vault.decrypt.__code__: "vault decryptions",
        hmac.new.__code__: "HMACs",
    }

    found = SetupSecret.__init__.__code__

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call":
            name = watched.get(frame.f_code)
            if name is not None:
                work.calls[name] += 1
            elif frame.f_code is found:
                work.rows += 1
        elif event == "c_call":
            if arg is hmac.compare_digest:
                work.calls["signature comparisons"] += 1
            elif getattr(arg, "__name__", None) == "decrypt" and isinstance(
                getattr(arg, "__self__", None), AESGCM
            ):
                work.calls["AES-GCM decryptions"] += 1

    with observing_statements(work.statements.append):
        sys.setprofile(profile)
        try:
            yield work
        finally:
            sys.setprofile(None)


FIXED_UNKNOWN = "ims_" + "0" * 25 + "1"


async def background_settled() -> None:
    """Until the server runs nothing by itself (the create's events are marked
    published off the request path), so what is counted is the request's own work."""
    for _ in range(100):
        with counting_work() as work:
            await asyncio.sleep(0.2)
        if not work.statements:
            return
    raise AssertionError("the server kept running statements on its own")


@dataclass(frozen=True)
class Rejection:
    answer: tuple[Any, ...]
    statements: tuple[str, ...]
    calls: tuple[tuple[str, int], ...]
    rows: int


async def rejections(served: Served, sandbox: httpx.AsyncClient) -> dict[str, list[Rejection]]:
    """Each kind of rejected delivery, three times with fresh ids: what the server
    answered and the work it did."""
    setup_id = (await create(served.api()))["setup"]["id"]
    account = await subaccount_of(sandbox, setup_id)
    body = assignment_body(account["id"], account["lines"][0]["request_id"], "+14155550123")
    secret = account["webhook_secret"]
    await background_settled()

    def kinds() -> dict[str, tuple[str, dict[str, str]]]:
        forged = signed_headers(generate_secret(), body)
        return {
            "fresh random 36 hex": (secrets.token_hex(18), forged),
            "fresh id shaped like a real one": (ids.new_id(ids.SETUP), forged),
            "fixed unknown id": (FIXED_UNKNOWN, forged),
            "200 characters": ("ims_" + "Z" * 196, forged),
            "real setup, bad signature": (setup_id, forged),
            "real setup, stale timestamp": (
                setup_id,
                signed_headers(secret, body, timestamp=int(time.time()) - 600),
            ),
        }

    observed: dict[str, list[Rejection]] = {}
    for _ in range(3):
        for kind, (path_id, headers) in kinds().items():
            with counting_work() as work:
                response = await served.http.post(
                    f"/webhooks/imessage/{path_id}", content=body, headers=headers
                )
            answer = (
                response.status_code,
                sorted((k, v) for k, v in response.headers.items() if k != "date"),
                response.content,
            )
            observed.setdefault(kind, []).append(
                Rejection(
                    answer, tuple(work.statements), tuple(sorted(work.calls.items())), work.rows
                )
            )
    return observed


REFERENCE = "real setup, bad signature"


async def test_every_rejection_does_the_same_work_whatever_the_id(
    served: Served, sandbox: httpx.AsyncClient
) -> None:
    observed = await rejections(served, sandbox)
    reference = observed[REFERENCE][0]
    assert reference.answer[0] == 401
    assert len(reference.statements) == 1
    assert dict(reference.calls) == {
        "vault decryptions": 1,
        "AES-GCM decryptions": 1,
        "HMACs": 1,  # one secret, one signature candidate
        "signature comparisons": 1,
    }
    for kind, rounds in observed.items():
        for seen in rounds:
            assert (seen.answer, seen.statements, seen.calls) == (
                reference.answer,
                reference.statements,
                reference.calls,
            ), kind


async def test_every_rejection_reads_as_many_rows_whatever_the_id(
    served: Served, sandbox: httpx.AsyncClient
) -> None:
    observed = await rejections(served, sandbox)
    assert observed[REFERENCE][0].rows == 1
    assert {kind: [seen.rows for seen in rounds] for kind, rounds in observed.items()} == {
        kind: [1, 1, 1] for kind in observed
    }


# --------------------------------------------------------------- production mode

# Each names something that exists under a slightly different name, which graphql-core
# otherwise suggests.
TYPOS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "field": ("{ imessageSetupz { totalCount } }", None),
    "nested field": ("{ imessageSetups { totalCont } }", None),
    "mutation field": (
        'mutation { createImessageSetu(input: {businessName: "a", label: "b"}) { setup { id } } }',
        None,
    ),
    "argument": ("{ imessageSetups(firs: 1) { totalCount } }", None),
    "directive argument": ("{ imessageSetups @skip(iff: true) { totalCount } }", None),
    "enum literal": ("{ imessageSetups(status: ACTIV) { totalCount } }", None),
    "enum as a string": ('{ imessageSetups(status: "ACTIVE") { totalCount } }', None),
    "enum in a variable": (
        "query($s: IMessageSetupStatus) { imessageSetups(status: $s) { totalCount } }",
        {"s": "ACTIV"},
    ),
    "type in a fragment": (
        "{ imessageSetups { edges { node { ...F } } } } fragment F on IMessageSetu { id }",
        None,
    ),
    "type in an inline fragment": (
        "{ imessageSetups { edges { node { ... on IMessageSetu { id } } } } }",
        None,
    ),
    "type of a variable": (
        "query($s: IMessageSetupStatu) { imessageSetups(status: $s) { totalCount } }",
        None,
    ),
    "input field literal": (
        'mutation { createImessageSetup(input: {businessName: "a", label: "b", '
        'idempotencyKe: "k"}) { setup { id } } }',
        None,
    ),
    "input field in a variable": (
        "mutation($i: CreateImessageSetupInput!) { createImessageSetup(input: $i) "
        "{ setup { id } } }",
        {"i": {"businessName": "a", "label": "b", "idempotencyKe": "k"}},
    ),
}


@pytest.mark.parametrize("env", ["development", "production"])
async def test_production_suggests_nothing_and_serves_no_schema(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient, env: str
) -> None:
    settings = abuse_settings(database_url, sandbox_url, env=env)
    async with serving(settings) as served:
        for case, (query, variables) in TYPOS.items():
            response = await served.graphql(query, variables)
            body = response.json()
            assert body.get("errors"), case
            suggests = "did you mean" in response.text.lower()
            # Development does suggest, so the check below would see one.
            assert suggests == (env == "development"), case

        intro = await served.graphql("{ __schema { types { name } } }")
        page = await served.http.get("/graphql", headers={"Accept": "text/html"})
        via_get = await served.http.get(
            "/graphql",
            params={"query": LIST},
            headers={"Authorization": f"Bearer {served.key}"},
        )
        if env == "production":
            assert "data" not in intro.json() or intro.json()["data"] is None
            assert error_codes(intro.json()) == ["GRAPHQL_VALIDATION_FAILED"] * 2
            assert page.status_code == 405
            assert "graphiql" not in page.text.lower()
            assert via_get.status_code == 405
            assert error_codes(via_get.json()) == ["METHOD_NOT_ALLOWED"]
        else:
            assert intro.json()["data"]["__schema"]["types"]
            assert "graphiql" in page.text.lower()
            assert via_get.json() == {"data": {"imessageSetups": {"totalCount": 0}}}


# --------------------------------------------------------------------------- names

# Characters that render as nothing, reorder what follows, or are not characters yet.
INVISIBLE = {
    "left-to-right mark": "\u200e",
    "right-to-left mark": "\u200f",
    "Arabic letter mark": "\u061c",
    "soft hyphen": "\u00ad",
    "invisible times": "\u2062",
    "Mongolian vowel separator": "\u180e",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "tag latin small letter a": "\U000e0061",
    "noncharacter U+FFFE": "\ufffe",
    "unassigned U+0378": "\u0378",
    "combining grapheme joiner": "\u034f",
}
REFUSED_NAMES = {
    **{case: f"Acme{ch}Dental" for case, ch in INVISIBLE.items()},
    "joiner after a mark with nothing before it": "\u0301\u200dAcme",
    "only Hangul fillers": "\u3164\u3164\u3164",
    "only braille blanks": "\u2800\u2800",
}
ACCEPTED = {
    "emoji ZWJ sequence": "Dr. Lee \U0001f469\u200d\u2695\ufe0f",
    "emoji with a variation selector before the joiner": "Hot \u2764\ufe0f\u200d\U0001f525",
    "Persian ZWNJ between letters": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
}

UPDATE = """
mutation Update($input: UpdateImessageSetupInput!) {
  updateImessageSetup(input: $input) {
    setup { id businessName label }
    userErrors { field code message }
  }
}"""
CREATE_NAMED = """
mutation Create($input: CreateImessageSetupInput!) {
  createImessageSetup(input: $input) {
    setup { id businessName label }
    userErrors { field code message }
  }
}"""


async def test_names_refuse_invisible_characters_on_create_and_update(
    served: Served, sandbox: httpx.AsyncClient
) -> None:
    api = served.api()
    setup_id = (await create(api))["setup"]["id"]
    before = await subaccount_count(sandbox)
    for case, name in REFUSED_NAMES.items():
        for field_name in ("businessName", "label"):
            created = (
                await api.data(
                    CREATE_NAMED,
                    {"input": {"businessName": "Acme", "label": "Desk", field_name: name}},
                )
            )["createImessageSetup"]
            updated = (await api.data(UPDATE, {"input": {"setupId": setup_id, field_name: name}}))[
                "updateImessageSetup"
            ]
            for payload in (created, updated):
                assert payload["setup"] is None, (case, field_name)
                assert [(e["field"], e["code"]) for e in payload["userErrors"]] == [
                    (["input", field_name], "INVALID_INPUT")
                ], (case, field_name)
    assert await subaccount_count(sandbox) == before
    detail = await api.data(
        "query($id: ID!) { imessageSetup(id: $id) { label } }", {"id": setup_id}
    )
    assert detail["imessageSetup"]["label"] == "Front desk"


async def test_names_accept_joined_emoji_and_persian_and_are_stored_composed(
    served: Served,
) -> None:
    api = served.api()
    setup_id = (await create(api))["setup"]["id"]
    for case, name in ACCEPTED.items():
        created = (await api.data(CREATE_NAMED, {"input": {"businessName": name, "label": name}}))[
            "createImessageSetup"
        ]
        assert created["userErrors"] == [], case
        assert (created["setup"]["businessName"], created["setup"]["label"]) == (name, name)
        updated = (await api.data(UPDATE, {"input": {"setupId": setup_id, "label": name}}))[
            "updateImessageSetup"
        ]
        assert updated["userErrors"] == [], case
        assert updated["setup"]["label"] == name
    decomposed = "Cafe\u0301 Dental"
    composed = unicodedata.normalize("NFC", decomposed)
    assert composed != decomposed
    created = (
        await api.data(CREATE_NAMED, {"input": {"businessName": decomposed, "label": decomposed}})
    )["createImessageSetup"]
    assert (created["setup"]["businessName"], created["setup"]["label"]) == (composed, composed)
    updated = (await api.data(UPDATE, {"input": {"setupId": setup_id, "label": decomposed}}))[
        "updateImessageSetup"
    ]
    assert updated["setup"]["label"] == composed


# Characters a hostile name is built from: ordinary letters of several scripts, marks,
# joiners and emoji parts, and everything the rule must keep out.
NAME_PARTS = (
    "aZé ß"
    "\u0645\u06cc\u062e"  # Arabic script
    "\u0915\u094d\u0937"  # Devanagari, with a virama
    "\u0301\ufe0f\u034f"  # marks: acute, variation selector, grapheme joiner
    "\u200c\u200d"  # the joiners
    "\U0001f469\u2695\u2764\U0001f525\U0001f3fd"  # emoji parts
    "\u00a0\u3000\t\n\u0000\u001f\u007f\u0085"  # spaces and controls
    "\u200b\u200e\u200f\u061c\u00ad\u2062\u180e\u2028\u2029\u202e\u2066\ufeff"
    "\U000e0001\U000e0061\U000e007f\ufffe\uffff\U0001fffe\u0378\U000e0fff\ue000\ud800"
    "\u3164\u2800\u115f\uffa0"
)
BIDI_AND_HIDDEN = frozenset(
    "\u200b\u200e\u200f\u061c\u00ad\u2062\u180e\u2028\u2029\u202e\u2066\ufeff\u034f"
)


MARKS = "\u0301\u094d\ufe0f\u034f"
UNSEEN = frozenset("\u3164\u2800\u115f\uffa0 \u00a0\u3000\u200c\u200d" + MARKS)


def _refused_by_the_brief(ch: str) -> bool:
    code = ord(ch)
    return (
        ch in BIDI_AND_HIDDEN
        or 0xE0000 <= code <= 0xE007F  # tag characters
        or (code & 0xFFFE) == 0xFFFE  # noncharacters
        or unicodedata.category(ch) in ("Cn", "Cc", "Cs", "Co")
    )


names = st.lists(
    st.one_of(
        st.sampled_from(NAME_PARTS),
        # Joiners next to what they may or may not join.
        st.sampled_from(["\u0301\u200d", "\ufe0f\u200d", "\u200d\u0301", " \u200c"]),
        st.characters(codec="utf-8"),
        st.characters(),
    ),
    max_size=30,
).map("".join)


@given(names)
@hyp_settings(max_examples=800, deadline=None)
def test_no_accepted_name_holds_what_the_rule_refuses(value: str) -> None:
    cleaned, error = clean_name(value, "businessName", "Business name")
    if error is not None:
        return
    assert cleaned == unicodedata.normalize("NFC", cleaned)
    assert 1 <= len(cleaned) <= 128
    assert not [ch for ch in cleaned if _refused_by_the_brief(ch)]
    assert all(ch in "\u200c\u200d" for ch in cleaned if unicodedata.category(ch) == "Cf")
    assert set(cleaned) - UNSEEN
    for index, ch in enumerate(cleaned):
        if ch in "\u200c\u200d":
            before = cleaned[:index].rstrip(MARKS)
            assert before, "a joiner joins nothing before it"
            assert before[-1] not in UNSEEN, "a joiner joins nothing before it"
            assert cleaned[index + 1 : index + 2] not in ("", *UNSEEN), "nor after it"


@given(names)
@hyp_settings(max_examples=300, deadline=None)
def test_creates_updates_and_workspaces_apply_one_rule(value: str) -> None:
    def outcome(check: Callable[[], Any]) -> str | None:
        try:
            result = check()
        except InvalidInput:
            return None
        return str(result)

    created = outcome(lambda: validate_setup_input(value, "Desk", None)[0])
    updated = outcome(lambda: validate_update_input(None, value)[1])
    workspace = outcome(lambda: check_workspace_name(value))
    assert created == updated == workspace


# ------------------------------------------------------------------------ event ids

SETUP_UPDATES = """
subscription Changes($after: String) {
  imessageSetupUpdates(after: $after) { eventId change setup { id label } }
}"""
RELABEL = """
mutation Relabel($id: ID!, $label: String!) {
  updateImessageSetup(input: {setupId: $id, label: $label}) { userErrors { code } }
}"""


async def test_event_ids_say_nothing_of_another_workspaces_activity(
    served: Served, sandbox: httpx.AsyncClient
) -> None:
    a = served.api()
    db = Database(served.settings.database_url.get_secret_value())
    try:
        b = served.api(await create_api_key(db, "clinic-b"))
    finally:
        await db.dispose()
    setup_a = (await create(a))["setup"]["id"]
    setup_b = (await create(b))["setup"]["id"]

    async def relabel(api: Api, setup_id: str, label: str) -> None:
        payload = await api.data(RELABEL, {"id": setup_id, "label": label})
        assert payload["updateImessageSetup"]["userErrors"] == []

    async with graphql_ws(served.url, b.key) as ws:
        op = await ws.subscribe(SETUP_UPDATES)
        await asyncio.sleep(0.2)
        await relabel(b, setup_b, "B first")
        first = (await ws.next_data(op))["imessageSetupUpdates"]
        for n in range(20):
            await relabel(a, setup_a, f"A {n}")
        await relabel(b, setup_b, "B second")
        second = (await ws.next_data(op))["imessageSetupUpdates"]
        await ws.expect_silence(0.3)
    assert (first["setup"]["label"], second["setup"]["label"]) == ("B first", "B second")
    first_seq, second_seq = parse_event_id(first["eventId"]), parse_event_id(second["eventId"])
    assert first_seq is not None
    assert second_seq is not None
    assert second_seq - first_seq == 1

    # Resuming after B's first event replays exactly its second, then goes live.
    async with graphql_ws(served.url, b.key) as ws:
        op = await ws.subscribe(SETUP_UPDATES, {"after": first["eventId"]})
        replayed = (await ws.next_data(op))["imessageSetupUpdates"]
        assert replayed == second
        await ws.expect_silence(0.3)
        await relabel(b, setup_b, "B third")
        live = (await ws.next_data(op))["imessageSetupUpdates"]
        assert parse_event_id(live["eventId"]) == second_seq + 1


# ------------------------------------------------------------- faults from input

# Valid JSON (an escaped lone surrogate), a valid GraphQL request, and an ID no database
# can store.
SURROGATE_IDS: dict[str, tuple[str, str]] = {
    "detail": ("query($v: ID!) { imessageSetup(id: $v) { id } }", '"\\ud800"'),
    "node": ("query($v: ID!) { node(id: $v) { id } }", '"ims_\\udfff"'),
    "audit filter": (
        "query($v: ID) { auditEvents(setupId: $v) { edges { cursor } } }",
        '"\\ud800"',
    ),
    "line request": (
        "mutation($v: ID!) { requestImessagePhoneLine(input: {setupId: $v}) "
        "{ userErrors { code } } }",
        '"\\ud800"',
    ),
    "update": (
        "mutation($v: UpdateImessageSetupInput!) { updateImessageSetup(input: $v) "
        "{ userErrors { code } } }",
        '{"setupId": "\\ud800", "label": "x"}',
    ),
    "release": (
        "mutation($v: ReleaseImessagePhoneLineInput!) { releaseImessagePhoneLine(input: $v) "
        "{ userErrors { code } } }",
        '{"phoneLineId": "\\ud800"}',
    ),
    "subscription": (
        "subscription($v: ID) { phoneLineUpdates(setupId: $v) { eventId } }",
        '"\\ud800"',
    ),
}


async def test_an_id_with_a_lone_surrogate_is_bad_input_not_a_fault(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": f"Bearer {served.key}", "Content-Type": "application/json"}
    with caplog.at_level(logging.INFO):
        for case, (query, value) in SURROGATE_IDS.items():
            raw = '{"query": ' + json.dumps(query) + ', "variables": {"v": ' + value + "}}"
            if case == "subscription":
                async with graphql_ws(served.url, served.key) as ws:
                    await ws.ws.send('{"id": "1", "type": "subscribe", "payload": ' + raw + "}")
                    message = await ws.receive()
                    assert message["type"] == "error", case
                    assert error_codes({"errors": message["payload"]}) == ["BAD_USER_INPUT"]
                continue
            response = await served.http.post("/graphql", content=raw.encode(), headers=headers)
            assert response.status_code == 200, case
            body = response.json()
            assert body.get("data") is None, case
            assert error_codes(body) == ["BAD_USER_INPUT"], case
            assert "unpaired surrogates" in body["errors"][0]["message"], case
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_framework_refusals_under_graphql_carry_their_own_code(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.key}"}
    missing = await served.http.get("/graphql/nothing/here", headers=auth)
    wrong_method = await served.http.put("/graphql", json={"query": LIST}, headers=auth)
    for response, status, code in (
        (missing, 404, "NOT_FOUND"),
        (wrong_method, 405, "METHOD_NOT_ALLOWED"),
    ):
        assert response.status_code == status
        [error] = response.json()["errors"]
        assert error["extensions"] == {"code": code, "requestId": response.headers["x-request-id"]}


async def test_multipart_subscriptions_count_against_the_same_caps(
    database_url: str, sandbox_url: str, sandbox: httpx.AsyncClient
) -> None:
    """A subscription over multipart HTTP holds a connection open like a socket does,
    so it is not a way around the caps on sockets."""
    settings = abuse_settings(database_url, sandbox_url, ws_max_connections_per_client=2)
    async with serving(settings) as served:
        headers = {
            "Authorization": f"Bearer {served.key}",
            "Accept": "multipart/mixed;subscriptionSpec=1.0",
        }
        body = {"query": SUBSCRIPTION}
        async with (
            served.http.stream("POST", "/graphql", json=body, headers=headers) as first,
            graphql_ws(served.url, served.key),
        ):
            assert first.status_code == 200
            # Kept: an iterator left to the collector closes the stream.
            chunks = first.aiter_raw()
            await anext(chunks)  # the stream is running
            async with served.http.stream(
                "POST", "/graphql", json=body, headers=headers
            ) as refused:
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert error_codes(json.loads(await refused.aread())) == ["UNAVAILABLE"]
            code, reason = await socket_close(served.ws_url, TRANSPORT_WS, [init(served.key)])
            assert (code, reason) == (1013, "Too many connections; try again later")
        # Both ended: there is room again.
        async with served.http.stream("POST", "/graphql", json=body, headers=headers) as again:
            assert again.status_code == 200


# -------------------------------------------------------------------------- /metrics


def operation_labels(metrics_text: str) -> set[str]:
    return set(re.findall(r'blueline_graphql_requests_total\{operation="([^"]*)"', metrics_text))


@pytest.mark.parametrize(
    "token",
    [pytest.param(None, id="no token set"), pytest.param("metrics-token-1f3a", id="a token set")],
)
async def test_metrics_in_production_need_their_token_and_bound_each_keys_labels(
    pg_url: str, sandbox_url: str, sandbox: httpx.AsyncClient, token: str | None
) -> None:
    # Metrics are the process's, whatever the database: one is enough.
    settings = abuse_settings(
        pg_url,
        sandbox_url,
        env="production",
        metrics_token=token,
        graphql_rate_per_key_per_s=0,
    )
    async with serving(settings) as served:
        if token is None:
            for headers in ({}, {"Authorization": "Bearer anything"}):
                absent = await served.http.get("/metrics", headers=headers)
                assert absent.status_code == 404
                assert absent.content == b""
            return
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
            refused = await served.http.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert b"blueline_" not in refused.content

        db = Database(settings.database_url.get_secret_value())
        try:
            other = await create_api_key(db, "clinic-b")
        finally:
            await db.dispose()
        tag = secrets.token_hex(4)

        async def run(key: str, name: str) -> None:
            response = await served.graphql(f"query {name} {LIST}", key=key)
            assert response.json() == {"data": {"imessageSetups": {"totalCount": 0}}}

        # One key invents 500 operation names; another key runs its own afterwards.
        for start in range(0, 500, 50):
            await asyncio.gather(
                *(run(served.key, f"Invented{tag}n{n}") for n in range(start, start + 50))
            )
        await run(other, f"ListSetups{tag}")
        metrics = await served.http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert metrics.status_code == 200
    labels = operation_labels(metrics.text)
    assert f'operation="ListSetups{tag}",outcome="ok"' in metrics.text
    assert 0 < len({label for label in labels if label.startswith(f"Invented{tag}")}) <= 20
    assert "other" in labels
