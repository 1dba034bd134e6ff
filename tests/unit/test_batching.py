"""Batches share their round trips without sharing their failures."""

from __future__ import annotations

import asyncio

import pytest

from blueline.batching import Batcher


class Poisoned(Exception):
    pass


class Outage(Exception):
    pass


def recorder(fail: type[Exception] | None = None) -> tuple[list[list[int]], Batcher[int, int]]:
    batches: list[list[int]] = []

    async def process(items: list[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        if fail is Poisoned and 13 in items:
            raise Poisoned("13 is bad")
        if fail is Outage:
            raise Outage("down")
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(
        process,
        max_size=8,
        concurrency=1,
        key=lambda item: item % 4,
        alone_on=lambda exc: isinstance(exc, Poisoned),
    )
    return batches, batcher


async def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    batches, batcher = recorder()
    results = await asyncio.gather(*(batcher.submit(n) for n in range(12)))
    assert results == [n * 2 for n in range(12)]
    assert len(batches) < 12
    for batch in batches:  # one item per key in a batch
        assert len({item % 4 for item in batch}) == len(batch)


async def test_one_bad_item_fails_only_its_own_caller() -> None:
    batches, batcher = recorder(fail=Poisoned)
    results = await asyncio.gather(
        *(batcher.submit(n) for n in (10, 11, 13, 12)), return_exceptions=True
    )
    assert results[0] == 20
    assert results[1] == 22
    assert isinstance(results[2], Poisoned)
    assert results[3] == 24
    assert [13] in batches  # retried alone


async def test_an_outage_fails_the_batch_without_retrying_each_item() -> None:
    batches, batcher = recorder(fail=Outage)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(4)), return_exceptions=True)
    assert all(isinstance(r, Outage) for r in results)
    assert sum(len(b) for b in batches) == 4


async def test_a_lone_item_is_not_retried() -> None:
    batches, batcher = recorder(fail=Poisoned)
    with pytest.raises(Poisoned):
        await batcher.submit(13)
    assert batches == [[13]]


async def test_a_group_runs_in_one_batch_at_a_time_and_waiting_items_share_the_next() -> None:
    running: dict[str, int] = {}
    overlapped: list[str] = []
    batches: list[list[tuple[str, int]]] = []
    release = asyncio.Event()

    async def process(items: list[tuple[str, int]]) -> list[int]:
        batches.append(list(items))
        groups = {group for group, _ in items}
        for group in groups:
            if running.get(group):
                overlapped.append(group)
            running[group] = running.get(group, 0) + 1
        await release.wait()
        for group in groups:
            running[group] -= 1
        return [n for _, n in items]

    batcher: Batcher[tuple[str, int], int] = Batcher(
        process, concurrency=2, key=lambda item: item, group=lambda item: item[0]
    )
    first = asyncio.ensure_future(batcher.submit(("a", 0)))
    await asyncio.sleep(0)
    # While a's batch runs, more of a queue behind it; b takes the other lane.
    later = [asyncio.ensure_future(batcher.submit(("a", n))) for n in (1, 2, 3)]
    other = asyncio.ensure_future(batcher.submit(("b", 0)))
    await asyncio.sleep(0.01)
    assert batches == [[("a", 0)], [("b", 0)]]

    release.set()
    assert await asyncio.gather(first, *later, other) == [0, 1, 2, 3, 0]
    assert overlapped == []
    assert batches[2:] == [[("a", 1), ("a", 2), ("a", 3)]]


async def test_an_item_its_key_holds_back_does_not_hold_back_its_group() -> None:
    batches: list[list[tuple[str, str]]] = []
    gate = asyncio.Event()

    async def process(items: list[tuple[str, str]]) -> list[str]:
        batches.append(list(items))
        if ("a", "x") in items and len(batches) == 1:
            await gate.wait()
        return [key for _, key in items]

    batcher: Batcher[tuple[str, str], str] = Batcher(
        process, concurrency=2, key=lambda item: item[1], group=lambda item: item[0]
    )
    held = asyncio.ensure_future(batcher.submit(("a", "x")))
    await asyncio.sleep(0)
    # ("b", "x") waits for key x; group b must not be left marked busy by it.
    blocked = asyncio.ensure_future(batcher.submit(("b", "x")))
    free = asyncio.ensure_future(batcher.submit(("b", "y")))
    assert await asyncio.wait_for(free, 1) == "y"
    gate.set()
    assert list(await asyncio.wait_for(asyncio.gather(held, blocked), 1)) == ["x", "x"]


async def test_full_batches_start_beyond_the_concurrency_and_partial_ones_wait() -> None:
    running = 0
    most = 0
    release = asyncio.Event()

    async def process(items: list[int]) -> list[int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return items

    batcher: Batcher[int, int] = Batcher(process, max_size=2, concurrency=1, full_concurrency=3)
    # One runs at once; then every pair waiting is a full batch and starts, up to three.
    waiting = [asyncio.ensure_future(batcher.submit(n)) for n in range(9)]
    await asyncio.sleep(0.01)
    assert running == 3
    release.set()
    assert await asyncio.gather(*waiting) == list(range(9))
    assert most == 3

    release.clear()
    most = 0
    # A lone item beyond the concurrency waits for the running batch.
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    assert running == 1
    release.set()
    assert list(await asyncio.gather(first, second)) == [1, 2]
    assert most == 1
