"""Work that arrives concurrently, done in batches: callers submit one item each and
get their own result; workers process whatever has queued as one batch.

Under load a batch holds everything that arrived while the previous ones ran, so the
fixed cost of a round trip, a transaction or a commit is shared; alone, an item is a
batch of one and waits for nobody. Up to ``concurrency`` batches run at once, and up to
``full_concurrency`` when enough is waiting to fill a batch (a full batch gains nothing
by waiting). Items
with the same ``key`` never share a batch, nor run in two batches at once (the later
waits), so a batch can treat its items as independent. Items of the same ``group`` may
share a batch but never run in two at once: a group whose batch is running waits for
the next, so work that would only queue behind a lock the running batch holds joins
the following batch instead of taking a lane of its own.

A batch that fails with an error ``alone_on`` accepts is processed again one item at a
time, so one bad item fails only its own caller. Errors it does not accept (an outage
that would fail every item again) fail the whole batch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_size: int = 64,
        concurrency: int = 1,
        full_concurrency: int | None = None,
        key: Callable[[T], Hashable] | None = None,
        group: Callable[[T], Hashable] | None = None,
        alone_on: Callable[[Exception], bool] = lambda _exc: False,
        name: str = "blueline-batcher",
    ) -> None:
        self._process = process
        self._alone_on = alone_on
        # Public so that its owner can resize batches as it learns their cost.
        self.max_size = max_size
        self._concurrency = concurrency
        self._full_concurrency = max(concurrency, full_concurrency or concurrency)
        self._key = key
        self._group = group
        self._name = name
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._busy_keys: set[Hashable] = set()
        self._busy_groups: set[Hashable] = set()
        self._running: set[asyncio.Task[None]] = set()

    @property
    def full_concurrency(self) -> int:
        return self._full_concurrency

    @full_concurrency.setter
    def full_concurrency(self, value: int) -> None:
        self._full_concurrency = max(self._concurrency, value)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            running = len(self._running)
            if running >= self._concurrency and (
                running >= self._full_concurrency or len(self._queue) < self.max_size
            ):
                return
            batch = self._take()
            if not batch:
                return
            task = loop.create_task(self._run(batch), name=self._name)
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            self._start()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        kept: deque[tuple[T, asyncio.Future[R]]] = deque()
        groups: set[Hashable] = set()
        while self._queue and len(batch) < self.max_size:
            entry = self._queue.popleft()
            if entry[1].done():  # its caller went away
                continue
            group = None if self._group is None else self._group(entry[0])
            if group is not None and group in self._busy_groups:
                kept.append(entry)
                continue
            if self._key is not None:
                key = self._key(entry[0])
                if key in self._busy_keys:
                    kept.append(entry)
                    continue
                self._busy_keys.add(key)
            if group is not None:
                groups.add(group)
            batch.append(entry)
        kept.extend(self._queue)
        self._queue = kept
        self._busy_groups |= groups
        return batch

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._settle(batch, split=len(batch) > 1)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        finally:
            for item, _ in batch:
                if self._key is not None:
                    self._busy_keys.discard(self._key(item))
                if self._group is not None:
                    self._busy_groups.discard(self._group(item))

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]], *, split: bool) -> None:
        try:
            results = await self._process([item for item, _ in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if split and self._alone_on(exc):
                for entry in batch:
                    if not entry[1].done():
                        await self._settle([entry], split=False)
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        running = list(self._running)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._running.clear()
        while self._queue:
            _, future = self._queue.popleft()
            future.cancel()
