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
