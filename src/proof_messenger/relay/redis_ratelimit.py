"""Per-API-key token buckets in Redis, so every relay instance draws on one shared budget.

The bucket update runs as one Lua script, so concurrent requests on any number of instances
are decided atomically by Redis. The script reads Redis's own clock (``TIME``), not the
relay's, so instances whose clocks drift apart still refill one bucket at one rate. Each
bucket key (``pm:rl:<api key id>``) expires once a full refill has passed: an expired bucket
and a full one are the same thing, so idle keys cost no memory.

**Failure mode: open, to a per-instance limiter.** If Redis cannot be reached (or answers
with an error) the request is limited by an in-process :class:`LocalRateLimiter` with the
same rate and burst, and a warning is logged (at most once per ``warn_interval`` seconds).
Rate limiting protects capacity; it is not a security control for proofs (replay, expiry and
revocation are decided by the database), so a Redis outage must not take the relay down.
With N instances the effective budget during an outage is at most N times the configured one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis.asyncio as redis_asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .ratelimit import LocalRateLimiter

__all__ = ["RedisRateLimiter"]

log = structlog.get_logger("proof_messenger.ratelimit")

#: KEYS[1] bucket; ARGV rate (tokens/s), burst, ttl (ms). Returns the wait in seconds as a
#: string ("0" = allowed): Lua numbers returned to Redis are truncated to integers.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'updated', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return string.format('%.17g', wait)
"""


class RedisRateLimiter:
    """A ``RateLimiter`` whose buckets live in Redis; falls back to local buckets on outage."""

    def __init__(
        self,
        client: redis_asyncio.Redis,
        rate: float,
        burst: int,
        *,
        prefix: str = "pm:rl:",
        warn_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.prefix = prefix
        self._client = client
        self._script = client.register_script(_BUCKET_SCRIPT)
        # A full refill, plus a second of slack: after that the key means nothing any more.
        self._ttl_ms = math.ceil(burst / rate * 1000) + 1000
        self._fallback = LocalRateLimiter(rate, burst)
        self._warn_interval = warn_interval
        self._clock = clock
        self._last_warning: float | None = None
        self.fallbacks = 0  #: requests decided locally because Redis failed (for tests/metrics)

    @classmethod
    async def connect(
        cls,
        url: str,
        rate: float,
        burst: int,
        *,
        prefix: str = "pm:rl:",
        socket_timeout: float = 0.5,
    ) -> RedisRateLimiter:
        """A limiter on ``url``. An unreachable Redis is logged, not fatal (see module doc)."""
        client = redis_asyncio.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # One attempt per request: a retry loop would add latency to every request
            # during an outage; the local fallback answers instead.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        limiter = cls(client, rate, burst, prefix=prefix)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            limiter._warn("ratelimit.redis_unreachable_at_start", exc)
        return limiter

    async def acquire(self, key: str) -> float | None:
        try:
            raw = await self._script(
                keys=[self.prefix + key], args=[repr(self.rate), self.burst, self._ttl_ms]
            )
            wait = float(raw)
        except (RedisError, OSError, ValueError) as exc:
            self.fallbacks += 1
            self._warn("ratelimit.redis_unavailable", exc)
            return await self._fallback.acquire(key)
        return None if wait <= 0 else wait

    async def close(self) -> None:
        await self._client.aclose()

    def _warn(self, event: str, exc: BaseException) -> None:
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < self._warn_interval:
            return
        self._last_warning = now
        log.warning(
            event,
            error=type(exc).__name__,
            detail=str(exc)[:200],
            fallback="per-instance rate limit",
        )
