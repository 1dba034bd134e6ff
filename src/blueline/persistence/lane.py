"""The PostgreSQL connections a process uses, kept checked out of the asyncpg pool and
handed from one user to the next without the pool's acquire and release.

asyncpg's ``Pool.acquire(timeout=…)`` wraps the wait in a task and ``release`` shields
another one: on a one-statement read the two cost about three times the CPU of the
statement itself and add loop iterations to its latency. A lane connection is handed
over from a list instead, or straight to the next waiter when every connection is busy.

The lane may own every connection of the pool. The pool stays in charge of creating
connections and of cleaning up one a failure left in an unknown state: a connection
goes back to the lane only after a clean exit, outside any transaction; after a
failure, a cancellation, or when it sat idle too long (a server or a proxy may have
dropped it), it returns to the pool, which resets, expires or replaces it, and the next
waiter takes the freed place. Waiters are served in arrival order and wait at most
``acquire_timeout_s``, as they would on the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg

# A connection idle longer than this goes back to the pool instead of being reused:
# below the idle timeouts servers and proxies commonly apply.
MAX_IDLE_S = 60.0

# What a waiter is woken with: a connection handed on, or None for a free place (it
# then takes a connection from the pool itself).
_Handed: TypeAlias = asyncpg.Connection | None


class Lane:
    def __init__(self, pool: asyncpg.Pool, capacity: int, *, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._capacity = capacity
        self._timeout = acquire_timeout_s
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._waiters: deque[asyncio.Future[_Handed]] = deque()
        self._owned = 0

    @property
    def owned(self) -> int:
        """Connections the lane holds, idle or in use (never more than its capacity)."""
        return self._owned

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self._take()
        try:
            yield conn
        except BaseException:
            await self._give_back(conn)
            raise
        if _reusable(conn):
            self._hand_on(conn)
        else:
            await self._give_back(conn)

    async def _take(self) -> asyncpg.Connection:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()  # the most recently used: its socket is warm
            if _reusable(conn) and now - since <= MAX_IDLE_S:
                return conn
            await self._give_back(conn)
        if self._owned < self._capacity:
            self._owned += 1
        else:
            handed = await self._wait()
            if handed is not None:
                return handed
        # A place is ours (taken above, or freed for us): fill it from the pool.
        try:
            # A deadline rather than acquire(timeout=…), which runs the wait as a task.
            async with asyncio.timeout(self._timeout):
                acquired: asyncpg.Connection = await self._pool.acquire()
        except BaseException:
            self._free_place()
            raise
        return acquired

    async def _wait(self) -> _Handed:
        waiter: asyncio.Future[_Handed] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed something just as the wait ended: pass it on, not lose it.
                handed = waiter.result()
                if handed is None:
                    self._free_place()
                else:
                    self._hand_on(handed)
            else:
                waiter.cancel()
            raise

    def _hand_on(self, conn: asyncpg.Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append((conn, time.monotonic()))

    def _free_place(self) -> None:
        """A connection left the lane: its place goes to the first waiter, who then
        takes a connection from the pool (the place stays counted as owned)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._owned -= 1

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        try:
            # A no-op for a connection asyncpg already took back when it closed.
            await self._pool.release(conn)
        finally:
            self._free_place()

    async def close(self) -> None:
        """Give every idle connection back to the pool (before the pool closes)."""
        idle, self._idle = self._idle, []
        for conn, _since in idle:
            self._owned -= 1
            await self._pool.release(conn)


def _reusable(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed() and not conn.is_in_transaction()
    except asyncpg.InterfaceError:
        return False  # closed, and already released to the pool by asyncpg itself
