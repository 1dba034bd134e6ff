"""Waiting for what happens eventually: a probe polled until its result says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.05,
) -> T:
    """Call ``probe`` until ``done`` holds for its result; fail with the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s; last: {short(value)}")
        await asyncio.sleep(interval_s)


def short(value: object, limit: int = 1500) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
