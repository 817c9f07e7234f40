"""The per-API-key token bucket, with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proof_messenger.relay.ratelimit import LocalRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_burst_then_refill() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(rate=5, burst=5, clock=clock)
    for _ in range(5):
        assert await limiter.acquire("k") is None
    wait = await limiter.acquire("k")
    assert wait == pytest.approx(0.2)
    clock.now += 0.2
    assert await limiter.acquire("k") is None
    assert await limiter.acquire("k") is not None
    clock.now += 100  # refill is capped at the burst
    for _ in range(5):
        assert await limiter.acquire("k") is None
    assert await limiter.acquire("k") is not None


async def test_keys_have_separate_buckets() -> None:
    limiter = LocalRateLimiter(rate=1, burst=1, clock=Clock())
    assert await limiter.acquire("a") is None
    assert await limiter.acquire("a") is not None
    assert await limiter.acquire("b") is None


async def test_bucket_table_is_bounded() -> None:
    limiter = LocalRateLimiter(rate=1, burst=1, clock=Clock(), max_buckets=3)
    for key in "abcd":
        await limiter.acquire(key)
    assert len(limiter._buckets) <= 3
    await limiter.close()


@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
async def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = Clock()
    limiter = LocalRateLimiter(rate=rate, burst=burst, clock=clock)
    start = clock.now
    granted = 0
    for step in steps:
        clock.now += step
        wait = await limiter.acquire("k")
        if wait is None:
            granted += 1
        else:
            assert wait > 0
    assert granted <= burst + rate * (clock.now - start) + 1e-6
