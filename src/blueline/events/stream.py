"""A subscriber's stream: replay from the event log, then live, with no gap or duplicate.

The subscriber registers with the hub *before* reading the log, so an event is either
in what the log returns or arrives live afterwards (or both, and is then dropped by
seq). Within a workspace seqs follow commit order, so "above the last delivered seq" is
exactly "not yet delivered". Publishers send right after their own commit, so two
commits can arrive in the opposite order: an event past a gap waits briefly for the
missing one, then the log fills the gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from blueline.errors import BluelineError
from blueline.events.hub import Hub, Signal
from blueline.persistence.eventlog import EventLog, LiveEvent

_PAGE = 500
# How long an event that arrived ahead of its predecessor waits for it.
GAP_WAIT_S = 0.25

# WebSocket close codes a client can act on: reconnect and resubscribe with `after`
# (slow consumer, restart), or stop (the key is no longer valid).
CLOSE_SLOW_CONSUMER = 4500
CLOSE_SERVICE_RESTART = 1012
CLOSE_FORBIDDEN = 4403
REVOKED = "This API key has been revoked"


class StreamEnded(BluelineError):
    """The stream cannot go on; the message tells the client what to do.

    ``close_code`` is set when the whole connection should close (the client must
    reconnect), rather than just this operation ending with an error.
    """

    code = "STREAM_ENDED"

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


UNKNOWN_AFTER = (
    "`after` is not a known event id (or it is older than the retained event log): "
    "refetch, then subscribe again"
)


async def stream(
    log: EventLog,
    hub: Hub,
    workspace_id: str,
    *,
    wanted: Callable[[LiveEvent], bool],
    setup_id: str | None = None,
    after_seq: int | None = None,
) -> AsyncIterator[LiveEvent]:
    async with hub.subscribe(workspace_id) as subscriber:
        if after_seq is not None:
            if not await log.seq_known(workspace_id, after_seq):
                raise StreamEnded(UNKNOWN_AFTER)
            last = after_seq
            catching_up = True
        else:
            last = await log.current_seq(workspace_id)
            catching_up = False
        ahead: dict[int, LiveEvent] = {}
        loop = asyncio.get_running_loop()
        gap_deadline = 0.0

        def matches(event: LiveEvent) -> bool:
            return (setup_id is None or event.setup_id == setup_id) and wanted(event)

        while True:
            if catching_up:
                # Everything up to the workspace's current seq is in the log; with a
                # setup filter the log returns only that setup's events, so `last`
                # then jumps to what the workspace had reached.
                reached = await log.current_seq(workspace_id)
                while True:
                    page = await log.after(workspace_id, last, setup_id, _PAGE)
                    for event in page:
                        last = max(last, event.seq)
                        if matches(event):
                            yield event
                    if len(page) < _PAGE:
                        break
                last = max(last, reached)
                ahead = {seq: e for seq, e in ahead.items() if seq > last}
                gap_deadline = 0.0
                catching_up = False
            while last + 1 in ahead:
                event = ahead.pop(last + 1)
                last = event.seq
                if matches(event):
                    yield event
            if ahead and not gap_deadline:
                gap_deadline = loop.time() + GAP_WAIT_S
            elif not ahead:
                gap_deadline = 0.0
            item = await subscriber.get(max(gap_deadline - loop.time(), 0) if ahead else None)
            if item is None or item is Signal.RESYNC:
                catching_up = True
            elif item is Signal.OVERFLOW:
                raise StreamEnded(
                    "this subscriber fell too far behind; subscribe again with `after` "
                    "set to the last event id received",
                    CLOSE_SLOW_CONSUMER,
                )
            elif item is Signal.CLOSED:
                raise StreamEnded(
                    "the server is restarting; reconnect and subscribe with `after`",
                    CLOSE_SERVICE_RESTART,
                )
            elif isinstance(item, LiveEvent) and item.seq > last:
                if item.seq == last + 1:
                    last = item.seq
                    if matches(item):
                        yield item
                else:
                    ahead[item.seq] = item
