"""Bounds on what one HTTP connection may hold before the application sees a request.

uvicorn (0.55, httptools) buffers a request head of any size, and arms no timer
while a connection is silent before its first request or sends its head or body a
byte at a time: a handful of clients could hold memory and sockets without limit.
The protocol here is uvicorn's own, with these bounds added:

- the request line and headers together: past ``MAX_HEAD_BYTES`` the answer is 431
  and the connection closes. What the parser hands over is measured (padding it
  skips is not), and while a head is incomplete the bytes read since it began are:
  what one connection holds is the bound, plus at most one read from the socket
  when the head began behind another request in that read;
- at most ``MAX_HEADERS`` header fields (each is a tuple the request keeps), and a
  chunked body's trailers (which uvicorn adds to the request's headers) are held to
  the same bounds;
- what is read of one request's body, trailers included, is at most the largest body
  the application accepts plus ``BODY_SLACK_BYTES``;
- at most ``MAX_PIPELINED`` requests wait behind the one being answered;
- the head must be complete within ``head_timeout_s`` of the connection opening or of
  its first byte after the previous response (a 408, then the connection closes);
- the body must be complete within ``body_timeout_s`` of the head, or, for a request
  queued behind another (uvicorn stops reading until that one is answered), of the
  moment it starts: the connection closes, and the application sees the client gone;
- no deadline passes while uvicorn itself has stopped reading (a request queued
  behind the one being answered, a body buffered ahead of the application);
- between requests uvicorn's own keep-alive timeout applies; bytes after an answer
  that begin no request (a blank line, a body sent after its answer), which stop
  that timer for good, start the next head's deadline.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Browsers send a few KiB; Node answers 431 past 16 KiB, nginx's default buffers hold
# 32 KiB. An API key, cookies and a request id fit many times over.
MAX_HEAD_BYTES = 32 * 1024
# Each header is a tuple the request keeps: a head of thousands of tiny headers costs
# thirty times its bytes. Browsers send fewer than 30.
MAX_HEADERS = 100
# Requests read ahead of the one being answered. Browsers do not pipeline; a client that
# pipelines without reading the answers would otherwise queue without end.
MAX_PIPELINED = 8
# What a body may add, on the wire, beyond the largest body the application accepts:
# chunk framing and trailers.
BODY_SLACK_BYTES = 2 * MAX_HEAD_BYTES

_CLOSING_ANSWER = (
    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
)


def _answer(status: int, reason: bytes, text: bytes) -> bytes:
    return _CLOSING_ANSWER % (status, reason, len(text), text)


HEAD_TOO_LARGE = _answer(
    431,
    b"Request Header Fields Too Large",
    b"request line and headers exceed %d KiB or %d fields" % (MAX_HEAD_BYTES // 1024, MAX_HEADERS),
)
HEAD_TOO_SLOW = _answer(408, b"Request Timeout", b"request head not received in time")


class Refused(Exception):
    """Raised from a parser callback to stop parsing on a refused connection."""


class _Phase(Enum):
    HEAD = "head"
    BODY = "body"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a bounded head and deadlines for head and body.

    One timer per connection rather than one per phase: a request only writes down
    when its phase must end, and the timer, when it fires before that, sets itself
    again (a timer armed and cancelled twice per request cost a third of the
    protocol's own time per request)."""

    head_timeout_s: float = 20.0
    body_timeout_s: float = 60.0
    max_body_bytes: int = 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: _Phase | None = _Phase.HEAD
        self._deadline_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Bytes read since this head began, and how much of the read it began in is
        # not held against it (all of it when a request ended earlier in that read);
        # the current read's size, and whether a request ended in it.
        self._head_reads = 0
        self._begin_read = 0
        self._read_size = 0
        self._ended_in_read = False
        self._trailer_bytes = 0
        self._header_count = 0
        # Bytes read while a request's body was incomplete.
        self._in_body = False
        self._body_reads = 0
        # A request whose head came while the one before was still being answered.
        self._queued_body = False
        self._upgraded = False
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(_Phase.HEAD, self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._read_size = len(data)
        self._ended_in_read = False
        super().data_received(data)
        self._read_size = 0
        if self._upgraded or self.transport.is_closing():
            return
        if self._in_body:
            # The parser holds a trailer not yet complete in full, and uvicorn the
            # body the application has not read: the reads are the bound.
            self._body_reads += len(data)
            if self._body_reads > self.max_body_bytes + BODY_SLACK_BYTES:
                self._refuse(None)
        elif self._phase is _Phase.HEAD:
            # Still in a head after the whole read: the parser holds what it could
            # not hand over yet (a header not complete), so the reads are the bound.
            self._head_reads += len(data)
            if self._head_reads - self._begin_read > MAX_HEAD_BYTES:
                self._refuse(HEAD_TOO_LARGE)
        elif (
            self._phase is None
            and not self.pipeline
            and self.cycle is not None
            and self.cycle.response_complete
        ):
            # Answered, and these bytes began no request (a blank line, a body sent
            # after its answer). uvicorn stopped its keep-alive timer when they came
            # and sets it only after an answer; each such read would set it afresh,
            # so they count as the start of the next head.
            self._expect(_Phase.HEAD, self.head_timeout_s)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 to a parser error, which is how a refused head stops
        # the parser; that head has had its answer.
        if not self._refused:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_reads = 0
        self._begin_read = self._read_size if self._ended_in_read else 0
        self._trailer_bytes = 0
        self._header_count = 0
        if self._phase is None:
            # The first byte after a request on a kept-alive connection; the first
            # request on a new one keeps the deadline set when it opened.
            self._expect(_Phase.HEAD, self.head_timeout_s)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._in_body:
            # A chunked body's trailers, which uvicorn adds to the request's headers.
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > MAX_HEAD_BYTES or self._header_count > MAX_HEADERS:
                self._refuse(None)
                raise Refused
        elif self._header_count > MAX_HEADERS:
            self._refuse(HEAD_TOO_LARGE)
            raise Refused
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        # Measured only when what was read since the head began could hold more.
        if (
            self._head_reads + self._read_size > MAX_HEAD_BYTES
            and self._head_size() > MAX_HEAD_BYTES
        ):
            self._refuse(HEAD_TOO_LARGE)
            raise Refused
        self._in_body = True
        self._body_reads = 0
        self._header_count = 0
        if self.cycle is not None and not self.cycle.response_complete:
            # uvicorn queues this request and stops reading until the one before is
            # answered: its body cannot come sooner, so its deadline starts then.
            self._phase = None
            self._queued_body = True
        else:
            self._expect(_Phase.BODY, self.body_timeout_s)
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:
            self._refuse(None)
            raise Refused

    def on_message_complete(self) -> None:
        self._phase = None
        self._in_body = False
        self._queued_body = False
        self._ended_in_read = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Started once nothing is queued before it any more.
        if self._queued_body and not self.pipeline and not self.transport.is_closing():
            self._queued_body = False
            self._expect(_Phase.BODY, self.body_timeout_s)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol keeps its own bounds from here on.
        self._phase = None
        self._upgraded = True
        super().handle_websocket_upgrade()

    def _head_size(self) -> int:
        # As sent, give or take whitespace: the line, each header with ": " and CRLF.
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # -- deadlines

    # The timer never waits longer than the shorter timeout, so it fires by any
    # deadline set after it was armed (each is at least that far off).

    def _expect(self, phase: _Phase, seconds: float) -> None:
        self._phase = phase
        now = self.loop.time()
        self._deadline_at = now + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(now + self._step_s(), self._check)

    def _step_s(self) -> float:
        return min(self.head_timeout_s, self.body_timeout_s)

    def _check(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # uvicorn is not reading (a request queued behind the one being answered,
            # or a body buffered ahead of the application): what the client sent
            # waits in the socket, so it cannot be late.
            self._deadline_at = max(self._deadline_at, now + self._step_s())
        if now < self._deadline_at:
            self._timer = self.loop.call_at(
                min(self._deadline_at, now + self._step_s()), self._check
            )
        elif self._phase is _Phase.HEAD:
            self._refuse(HEAD_TOO_SLOW)
        else:
            # The application is still reading: closing tells it the client is gone.
            self.transport.close()

    def _refuse(self, answer: bytes | None) -> None:
        self._refused = True
        self._phase = None
        if self.transport.is_closing():
            return
        # Behind a pipelined request still being answered, an answer written now would
        # land inside that one's: the connection just closes.
        if answer is not None and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(answer)
        self.transport.close()


def bounded_http_protocol(
    *, head_timeout_s: float, body_timeout_s: float, max_body_bytes: int
) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn builds for each connection, with these bounds."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "head_timeout_s": head_timeout_s,
            "body_timeout_s": body_timeout_s,
            "max_body_bytes": max_body_bytes,
        },
    )
