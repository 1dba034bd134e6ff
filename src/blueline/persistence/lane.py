"""A few PostgreSQL connections kept checked out of the asyncpg pool, reused without
the pool's acquire and release.

asyncpg's ``Pool.acquire(timeout=…)`` wraps the wait in a task and ``release`` shields
another one: on a one-statement read the two cost about three times the CPU of the
statement itself and add loop iterations to its latency. A lane connection is handed
over from a list instead.

The pool stays in charge of everything else: creating connections, waiting (bounded)
when all are busy, and cleaning up a connection a failure left in an unknown state.
The lane owns at most ``capacity`` connections, fewer than the pool's maximum, so
whoever waits on the pool always has connections coming back to it. A connection
goes back to the lane only after a clean exit, outside any transaction; after a
failure, a cancellation, or when it sat idle too long (a server or a proxy may have
dropped it), it returns to the pool, which resets, expires or replaces it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

# A connection idle longer than this goes back to the pool instead of being reused:
# below the idle timeouts servers and proxies commonly apply.
MAX_IDLE_S = 60.0


class Lane:
    def __init__(self, pool: asyncpg.Pool, capacity: int, *, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._capacity = capacity
        self._timeout = acquire_timeout_s
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._owned = 0

    @property
    def owned(self) -> int:
        """Connections the lane holds, idle or in use."""
        return self._owned

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self._take()
        owned = conn is not None
        if conn is None:
            conn = await self._pool.acquire(timeout=self._timeout)
        try:
            yield conn
        except BaseException:
            await self._give_back(conn, owned)
            raise
        if not _reusable(conn):
            await self._give_back(conn, owned)
        elif owned or self._owned < self._capacity:
            self._owned += 0 if owned else 1
            self._idle.append((conn, time.monotonic()))
        else:
            await self._pool.release(conn)

    async def _take(self) -> asyncpg.Connection | None:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()  # the most recently used: its socket is warm
            if _reusable(conn) and now - since <= MAX_IDLE_S:
                return conn
            await self._give_back(conn, owned=True)
        return None

    async def _give_back(self, conn: asyncpg.Connection, owned: bool) -> None:
        if owned:
            self._owned -= 1
        # A no-op for a connection asyncpg already took back when it closed.
        await self._pool.release(conn)

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
