"""Per-account rate limiting of the API: one token bucket per machine account, in memory.

Who calls it: the authentication middleware of ``connectors.api.app``, once per authenticated
request. Each account may make ``burst`` requests at once and ``rate`` per second on average;
past that the request is answered 429 with ``Retry-After`` (whole seconds, at least 1).

Buckets live in the process, so with N replicas behind a load balancer an account gets up to N
times the rate; the operator sets ``rate_per_second`` with that in mind. Memory is bounded:
beyond ``max_accounts`` buckets the least recently used one is forgotten, which at worst
gives that account a full bucket again.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by account id."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_accounts: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1 or max_accounts < 1:
            raise ValueError("rate must be > 0, burst and max_accounts >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max = max_accounts
        # account id -> (tokens left, clock reading when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, key: str) -> int:
        """Take one token for ``key``: 0 when allowed, else the seconds to wait (>= 1)."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if allowed:
            return 0
        return max(1, math.ceil((1.0 - tokens) / self._rate))

    def __len__(self) -> int:
        return len(self._buckets)
