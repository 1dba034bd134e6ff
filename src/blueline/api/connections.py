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
- a chunked body's trailers (which uvicorn adds to the request's headers) are held
  to the same bound;
- the head must be complete within ``head_timeout_s`` of the connection opening or of
  its first byte after the previous response (a 408, then the connection closes);
- the body must be complete within ``body_timeout_s`` of the head, or, for a request
  queued behind another (uvicorn stops reading until that one is answered), of the
  moment it starts: the connection closes, and the application sees the client gone;
- between requests uvicorn's own keep-alive timeout applies, also after bytes that
  begin no request (a blank line, or a body sent after its answer), which would
  otherwise have stopped that timer for good.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Browsers send a few KiB; Node answers 431 past 16 KiB, nginx's default buffers hold
# 32 KiB. An API key, cookies and a request id fit many times over.
MAX_HEAD_BYTES = 32 * 1024

_CLOSING_ANSWER = (
    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
)


def _answer(status: int, reason: bytes, text: bytes) -> bytes:
    return _CLOSING_ANSWER % (status, reason, len(text), text)


HEAD_TOO_LARGE = _answer(
    431, b"Request Header Fields Too Large", b"request line and headers exceed 32 KiB"
)
HEAD_TOO_SLOW = _answer(408, b"Request Timeout", b"request head not received in time")


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused head."""


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
        if self._phase is _Phase.HEAD:
            # Still in a head after the whole read: the parser holds what it could
            # not hand over yet (a header not complete), so the reads are the bound.
            self._head_reads += len(data)
            if self._head_reads - self._begin_read > MAX_HEAD_BYTES:
                self._refuse(HEAD_TOO_LARGE)
        elif (
            self._phase is None
            and self.timeout_keep_alive_task is None
            and not self.pipeline
            and self.cycle is not None
            and self.cycle.response_complete
        ):
            # Answered, and these bytes began no request: uvicorn stopped its
            # keep-alive timer when they arrived and only sets it after an answer.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

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
        if self._phase is None:
            # The first byte after a request on a kept-alive connection; the first
            # request on a new one keeps the deadline set when it opened.
            self._expect(_Phase.HEAD, self.head_timeout_s)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase is not _Phase.HEAD:
            # A chunked body's trailers, which uvicorn adds to the request's headers.
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > MAX_HEAD_BYTES:
                self._refuse(HEAD_TOO_LARGE)
                raise HeadTooLarge
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        # Measured only when what was read since the head began could hold more.
        if (
            self._head_reads + self._read_size > MAX_HEAD_BYTES
            and self._head_size() > MAX_HEAD_BYTES
        ):
            self._refuse(HEAD_TOO_LARGE)
            raise HeadTooLarge
        if self.cycle is not None and not self.cycle.response_complete:
            # uvicorn queues this request and stops reading until the one before is
            # answered: its body cannot come sooner, so its deadline starts then.
            self._phase = None
            self._queued_body = True
        else:
            self._expect(_Phase.BODY, self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = None
        self._queued_body = False
        self._ended_in_read = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._queued_body and not self.transport.is_closing():
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
        if now < self._deadline_at:
            self._timer = self.loop.call_at(
                min(self._deadline_at, now + self._step_s()), self._check
            )
        elif self._phase is _Phase.HEAD:
            self._refuse(HEAD_TOO_SLOW)
        else:
            # The application is still reading: closing tells it the client is gone.
            self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self._phase = None
        if self.transport.is_closing():
            return
        # Behind a pipelined request still being answered, an answer written now would
        # land inside that one's: the connection just closes.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
        self.transport.close()


def bounded_http_protocol(
    *, head_timeout_s: float, body_timeout_s: float
) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn builds for each connection, with these deadlines."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s},
    )
