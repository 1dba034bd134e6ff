"""The connections a process keeps out of the asyncpg pool: reused only when clean,
handed to waiters in turn, and never lost to a failure, a timeout or a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from blueline.errors import StorageUnavailable
from blueline.persistence import database as database_module
from blueline.persistence.database import Database, Limits, plain_on_loopback
from tests.support.databases import sqlalchemy_url

POOL = 4


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    database = Database(sqlalchemy_url(pg_dsn), Limits(raw_pool_size=POOL, pool_timeout_s=5))
    yield database
    await database.dispose()


async def backend_pid(db: Database) -> int:
    async with db.read() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_a_clean_read_reuses_the_same_connection(db: Database) -> None:
    first = await backend_pid(db)
    assert [await backend_pid(db) for _ in range(5)] == [first] * 5
    async with db.write() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == first
    assert await backend_pid(db) == first


async def test_a_write_commits_at_its_end_and_rolls_back_on_error(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS kept (n int)")
        await conn.execute("TRUNCATE kept")

    async def refused_half_way() -> None:
        async with db.write() as conn:
            await conn.execute("INSERT INTO kept VALUES (1)")
            raise RuntimeError("refused half-way")

    with pytest.raises(RuntimeError):
        await refused_half_way()
    async with db.write() as conn:
        await conn.execute("INSERT INTO kept VALUES (2)")
    async with db.read() as conn:
        # The same connection, back outside any transaction, holds the commit only.
        assert await conn.fetch("SELECT n FROM kept") == [(2,)]


async def test_writes_plan_generically_and_reads_do_not(db: Database) -> None:
    async with db.write() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    async with db.read() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_more_concurrent_work_than_connections_all_completes(db: Database) -> None:
    async def hold() -> int:
        async with db.read() as conn:
            return int(await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)"))

    pids = await asyncio.wait_for(asyncio.gather(*(hold() for _ in range(40))), 30)
    assert len(set(pids)) == POOL
    assert db._lane is not None
    assert db._lane.owned == POOL


async def test_waiters_are_served_in_arrival_order(db: Database) -> None:
    release = asyncio.Event()
    order: list[int] = []

    async def holder() -> None:
        async with db.read() as conn:
            await conn.fetchval("SELECT 1")
            await release.wait()

    holders = [asyncio.create_task(holder()) for _ in range(POOL)]
    await asyncio.sleep(0.2)

    async def waiter(n: int) -> None:
        async with db.read() as conn:
            order.append(n)
            await conn.fetchval("SELECT 1")

    waiters = []
    for n in range(6):
        waiters.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(asyncio.gather(*holders, *waiters), 10)
    assert order == list(range(6))


@pytest.fixture
async def single(pg_dsn: str) -> AsyncIterator[Database]:
    """A database of one connection."""
    database = Database(sqlalchemy_url(pg_dsn), Limits(raw_pool_size=1, pool_timeout_s=5))
    yield database
    await database.dispose()


async def holding(
    db: Database,
    release: asyncio.Event,
    *,
    fail: bool = False,
    after: Callable[[], object] | None = None,
) -> asyncio.Task[None]:
    """A task holding a connection of ``db`` (from when this returns) until ``release``,
    then failing its transaction if ``fail``, and calling ``after`` once it let go."""
    held = asyncio.Event()

    async def hold() -> None:
        async with db.write() as conn:
            await conn.execute("SELECT 1")
            held.set()
            await release.wait()
            if fail:
                raise RuntimeError("refused")
        if after is not None:
            after()

    task = asyncio.create_task(hold())
    await held.wait()
    return task


async def read_one(db: Database) -> int:
    async with db.read() as conn:
        return int(await conn.fetchval("SELECT 1"))


def owned(db: Database) -> int:
    assert db._lane is not None
    return db._lane.owned


async def test_a_wait_longer_than_the_timeout_is_storage_unavailable(pg_dsn: str) -> None:
    db = Database(sqlalchemy_url(pg_dsn), Limits(raw_pool_size=1, pool_timeout_s=0.3))
    release = asyncio.Event()
    try:
        holder = await holding(db, release)
        with pytest.raises(StorageUnavailable):
            await read_one(db)
        release.set()
        await holder
        # The timed-out waiter took nothing with it: the connection serves the next.
        assert await read_one(db) == 1
        assert owned(db) == 1
    finally:
        release.set()
        await db.dispose()


async def test_a_failure_gives_its_place_to_a_waiter(single: Database) -> None:
    release = asyncio.Event()
    failing = await holding(single, release, fail=True)
    waiting = asyncio.create_task(read_one(single))
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(RuntimeError):
        await failing
    # The failed connection went back to the pool, and the waiter got its place.
    assert await asyncio.wait_for(waiting, 5) == 1
    assert owned(single) == 1


async def test_a_waiter_cancelled_as_it_is_handed_a_connection_passes_it_on(
    single: Database,
) -> None:
    release = asyncio.Event()
    waiters: list[asyncio.Task[int]] = []
    # Cancelled right after the holder handed it the connection, before it ran.
    holder = await holding(single, release, after=lambda: waiters[0].cancel())
    waiters.extend([asyncio.create_task(read_one(single)) for _ in range(2)])
    await asyncio.sleep(0.05)
    release.set()
    await holder
    assert await asyncio.wait_for(waiters[1], 5) == 1
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    assert owned(single) == 1


async def test_a_failed_statement_does_not_hand_its_connection_on(db: Database) -> None:
    await backend_pid(db)
    assert db._lane is not None
    assert db._lane.owned == 1

    async def failing_write() -> None:
        async with db.write() as conn:
            await conn.execute("SELECT 1")
            raise StorageUnavailable("the block failed")

    with pytest.raises(StorageUnavailable):
        await failing_write()
    # Back to the pool (which resets it), not to the lane.
    assert db._lane.owned == 0
    async with db.read() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_a_cancelled_statement_leaves_no_busy_connection_behind(db: Database) -> None:
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))

    async def slow() -> None:
        async with db.read() as conn:
            await conn.fetchval("SELECT pg_sleep(5)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Every later read gets a connection that answers at once, never the one still busy
    # with the cancelled sleep.
    for _ in range(POOL * 2):
        async with db.read() as conn:
            assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 2) == 1
    # The cancel request asyncpg sent on a connection of its own left nothing behind
    # (on loopback it does not try TLS first, whose failure it would not retrieve).
    await asyncio.sleep(0.2)
    gc.collect()
    await asyncio.sleep(0)
    assert [str(e.get("message")) for e in loop_errors] == []


async def test_a_connection_the_server_dropped_is_replaced(db: Database, pg_dsn: str) -> None:
    victim = await backend_pid(db)
    admin = await asyncpg.connect(pg_dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the client notices the closed socket
    assert await backend_pid(db) != victim


async def test_a_statement_on_a_connection_dropped_mid_way_is_storage_unavailable(
    db: Database, pg_dsn: str
) -> None:
    async def killed() -> None:
        async with db.read() as conn:
            await conn.fetchval("SELECT pg_sleep(5)")

    task = asyncio.create_task(killed())
    await asyncio.sleep(0.3)
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = 'SELECT pg_sleep(5)' AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    with pytest.raises(StorageUnavailable):
        await task
    assert await backend_pid(db) > 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://postgres@127.0.0.1:5432/db", {"ssl": False}),
        ("postgresql+asyncpg://postgres@localhost/db", {"ssl": False}),
        ("postgresql+asyncpg://postgres@[::1]:5432/db", {"ssl": False}),
        ("postgresql+asyncpg://postgres@127.0.0.1/db?ssl=require", {}),
        ("postgresql+asyncpg://postgres@127.0.0.1/db?sslmode=verify-full", {}),
        ("postgresql+asyncpg://postgres@db.internal:5432/db", {}),
    ],
)
def test_tls_is_left_to_the_url_except_on_loopback(url: str, expected: dict[str, bool]) -> None:
    assert plain_on_loopback(url) == expected


async def test_closing_does_not_wait_forever_for_a_connection_still_held(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(database_module, "_CLOSE_TIMEOUT_S", 0.2)
    db = Database(sqlalchemy_url(pg_dsn), Limits(raw_pool_size=1, pool_timeout_s=5))
    release = asyncio.Event()
    holder = await holding(db, release)
    await asyncio.wait_for(db.dispose(), 5)
    assert "still in use at shutdown" in caplog.text
    holder.cancel()
    with contextlib.suppress(BaseException):
        await holder
