"""Token buckets in bounded memory, for the webhook endpoint and API keys.

Keys are client addresses and path setup ids, existing or not, so the limiter treats
unknown and real setups alike. When the table is full the least recently used bucket
is dropped: an attacker spraying keys can only evict, never grow memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def has_tokens(self, key: str, cost: float = 1) -> bool:
        """Whether ``allow(key, cost)`` would pass, without charging or remembering ``key``."""
        if self._rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            return self._burst >= cost
        tokens = min(self._burst, bucket.tokens + (self._clock() - bucket.updated) * self._rate)
        return tokens >= cost

    def allow(self, key: str, cost: float = 1) -> bool:
        if self._rate <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return True
        return False
