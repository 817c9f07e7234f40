"""RedisRateLimiter against the real Redis on 127.0.0.1:6379 (unique key prefix per test)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio

from proof_messenger.relay.redis_ratelimit import RedisRateLimiter
from tests.deploy.nginx_harness import free_port

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    value = f"pm:test:{secrets.token_hex(8)}:"
    yield value
    client = redis_asyncio.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=value + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_burst_then_refused_with_retry_after(prefix: str) -> None:
    limiter = await RedisRateLimiter.connect(REDIS_URL, rate=0.01, burst=3, prefix=prefix)
    try:
        assert [await limiter.acquire("k1") for _ in range(3)] == [None, None, None]
        wait = await limiter.acquire("k1")
        assert wait is not None and 50 < wait <= 100  # ~1/0.01 s until the next token
        assert await limiter.acquire("k2") is None  # buckets are per key
        assert limiter.fallbacks == 0
    finally:
        await limiter.close()


async def test_key_is_namespaced_and_expires(prefix: str) -> None:
    limiter = await RedisRateLimiter.connect(REDIS_URL, rate=2.0, burst=10, prefix=prefix)
    client = redis_asyncio.from_url(REDIS_URL)
    try:
        await limiter.acquire("apikey42")
        ttl_ms = await client.pttl(prefix + "apikey42")
        assert 0 < ttl_ms <= 6000  # a full refill (10 / 2 s) plus one second
    finally:
        await client.aclose()
        await limiter.close()


async def test_default_namespace_is_pm_rl() -> None:
    limiter = await RedisRateLimiter.connect(REDIS_URL, rate=1.0, burst=1)
    try:
        assert limiter.prefix == "pm:rl:"
    finally:
        await limiter.close()


async def test_two_limiters_share_one_budget(prefix: str) -> None:
    a = await RedisRateLimiter.connect(REDIS_URL, rate=0.001, burst=20, prefix=prefix)
    b = await RedisRateLimiter.connect(REDIS_URL, rate=0.001, burst=20, prefix=prefix)
    try:
        # 60 concurrent requests, split over two "instances": exactly the burst is granted.
        results = await asyncio.gather(*(limiter.acquire("shared") for limiter in [a, b] * 30))
        assert sum(r is None for r in results) == 20
        assert await a.acquire("shared") is not None
        assert await b.acquire("shared") is not None
    finally:
        await a.close()
        await b.close()


async def test_refills_at_the_configured_rate(prefix: str) -> None:
    limiter = await RedisRateLimiter.connect(REDIS_URL, rate=1000.0, burst=1, prefix=prefix)
    try:
        assert await limiter.acquire("k") is None
        await asyncio.sleep(0.05)  # >= 50 tokens' worth; capped at the burst of 1
        assert await limiter.acquire("k") is None
    finally:
        await limiter.close()


async def test_unreachable_redis_fails_open_to_a_local_limiter() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    limiter = await RedisRateLimiter.connect(url, rate=0.01, burst=2, socket_timeout=0.2)
    try:
        # Still limited, by the per-instance bucket with the same rate and burst.
        assert await limiter.acquire("k") is None
        assert await limiter.acquire("k") is None
        assert await limiter.acquire("k") is not None
        assert limiter.fallbacks == 3
    finally:
        await limiter.close()
