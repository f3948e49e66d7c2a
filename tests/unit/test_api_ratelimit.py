"""Token buckets: burst, refill, the Retry-After figure and the memory bound."""

from __future__ import annotations

import pytest

from connectors.api.ratelimit import RateLimiter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("a") == 1  # half a second to the next token, rounded up
    clock.now += 0.5
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") == 1


def test_slow_rates_ask_for_longer_waits() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.1, burst=1, clock=clock)
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") == 10
    clock.now += 4
    assert limiter.acquire("a") == 6


def test_refused_requests_do_not_spend_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    limiter.acquire("a")
    for _ in range(50):
        assert limiter.acquire("a") >= 1
    clock.now += 1.0
    assert limiter.acquire("a") == 0


def test_accounts_have_separate_buckets_and_refill_stops_at_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.acquire("a"), limiter.acquire("a"), limiter.acquire("a")] == [0, 0, 1]
    assert limiter.acquire("b") == 0
    clock.now += 3600
    assert [limiter.acquire("a"), limiter.acquire("a"), limiter.acquire("a")] == [0, 0, 1]


def test_memory_is_bounded_by_forgetting_the_least_recently_used() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_accounts=2)
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("a")  # a is now the most recently used
    limiter.acquire("c")  # b is forgotten
    assert len(limiter) == 2
    assert limiter.acquire("b") == 0  # a fresh bucket
    assert limiter.acquire("c") == 1


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)
