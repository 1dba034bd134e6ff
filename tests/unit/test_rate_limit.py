"""Token buckets: refill over time, bounded memory whatever keys arrive."""

from __future__ import annotations

from blueline.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_configured_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=4, clock=clock)
    assert [limiter.allow("a") for _ in range(5)] == [True, True, True, True, False]
    clock.now += 0.5
    assert limiter.allow("a")
    assert not limiter.allow("a")


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=Clock())
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")


def test_memory_stays_bounded_under_a_spray_of_keys() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, max_keys=100, clock=Clock())
    for i in range(10_000):
        limiter.allow(f"key-{i}")
    assert len(limiter) == 100


def test_zero_rate_turns_the_limit_off() -> None:
    limiter = RateLimiter(rate_per_s=0, burst=0, clock=Clock())
    assert all(limiter.allow("a") for _ in range(1000))
    assert len(limiter) == 0
