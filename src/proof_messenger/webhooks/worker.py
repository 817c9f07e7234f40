"""The delivery worker: outbox → per-subscription deliveries → signed HTTP POSTs.

Fan-out happens here, not in the audit transaction: the append stays as fast as before
(one outbox row per event, no subscription lookup under the chain lock), and the worker
expands each outbox row into one ``webhook_deliveries`` row per matching subscription,
idempotently (the delivery id is a UUIDv5 of event, type and subscription, and the pair
(outbox row, subscription) is unique). Every relay process runs one worker; instances
share the work through leases (``claim_due_deliveries``), and a crashed worker's leases
simply run out, so nothing is lost and nothing needs a coordinator.

Delivery is at-least-once: a receiver that answers 2xx after the relay died but before
it recorded the success gets the same delivery again, with the same id. Receivers
deduplicate by ``X-Proof-Messenger-Delivery``.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec
import structlog
from prometheus_client import Counter

from .. import __version__
from ..audit.crypto import Keyring
from ..audit.errors import DecryptionError
from ..store.base import DeliveryTask, Store, StoreError
from .config import WebhookSettings
from .signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

# httpx (about 10 MB and 0.1 s with httpcore, anyio and h11) is imported when the first
# delivery is sent: every relay process runs a worker, most never deliver anything.
if TYPE_CHECKING:
    import httpx

__all__ = ["DeliveryWorker", "backoff_delay", "delivery_body"]

log = structlog.get_logger("proof_messenger.webhooks")
_encoder = msgspec.json.Encoder()


_ATTEMPTS: Counter | None = None


def attempts_counter() -> Counter:
    """``proof_messenger_webhook_attempts_total{result=delivered|retry|dead}`` (one per process)."""
    global _ATTEMPTS
    if _ATTEMPTS is None:
        _ATTEMPTS = Counter(
            "proof_messenger_webhook_attempts_total",
            "Webhook delivery attempts by result (retry: failed, will retry; dead: gave up).",
            ["result"],
        )
    return _ATTEMPTS


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1)))."""
    ceiling = min(cap, base * (2.0 ** min(max(attempt - 1, 0), 62)))
    return rng() * ceiling


def delivery_body(task: DeliveryTask) -> bytes:
    """``{"id", "type", "created_at", "data"}``; identical bytes on every retry."""
    d = task.delivery
    return _encoder.encode(
        {
            "id": d.id,
            "type": d.event_type,
            "created_at": _iso(task.event_created_at),
            "data": msgspec.Raw(task.payload),
        }
    )


def _where(url: str) -> str:
    """Scheme, host and port only: paths and queries may carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        settings: WebhookSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        """The HTTP client, made (and httpx imported) on the first delivery."""
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.timeout_seconds),
                follow_redirects=False,
                transport=self._transport,
                headers={"User-Agent": f"Proof-Messenger-Webhooks/{__version__}"},
            )
        return self._http

    def warm(self) -> None:
        """Make the HTTP client now, when deliveries are expected (a subscription exists),
        so that the first delivery does not wait for the import."""
        self._client()

    def wake(self) -> None:
        """Look for work now (called when an event was just written)."""
        self._wake.set()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def run(self) -> None:
        """Until cancelled: keep up to ``concurrency`` deliveries in flight.

        A delivery is claimed only when a slot is free, so it is sent at once and its
        lease needs to outlive one attempt only; a slow receiver occupies one slot, not
        the whole worker.
        """
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                claimed = await self._claim(self.settings.concurrency - len(inflight))
                for item in claimed:
                    task = asyncio.create_task(self._deliver_logged(item))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if claimed and len(inflight) < self.settings.concurrency:
                    continue  # there may be more due right now
                waiter = asyncio.create_task(self._wake.wait())
                try:
                    await asyncio.wait(
                        {waiter, *inflight},
                        timeout=self.settings.poll_interval_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
                self._wake.clear()
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _claim(self, free: int) -> list[DeliveryTask]:
        """Expand new outbox rows, then lease up to ``free`` due deliveries."""
        s = self.settings
        try:
            while await self.store.fan_out_outbox(self.clock(), s.batch_size) >= s.batch_size:
                pass
            if free <= 0:
                return []
            return await self.store.claim_due_deliveries(
                self.clock(), free, s.lease_seconds, self.worker_id
            )
        except StoreError as exc:
            log.warning("webhook.store_unavailable", error=str(exc)[:300])
        except Exception:
            log.exception("webhook.worker_error")
        return []

    async def run_once(self) -> int:
        """Claim and send what is due now, waiting for the results (tests, tools)."""
        claimed = await self._claim(self.settings.concurrency)
        await asyncio.gather(*(self._deliver_logged(item) for item in claimed))
        return len(claimed)

    async def _deliver_logged(self, task: DeliveryTask) -> None:
        try:
            await self.deliver(task)
        except StoreError as exc:
            # The lease runs out and another round (or instance) retries it.
            log.warning("webhook.record_failed", delivery_id=task.delivery.id, error=str(exc))
        except Exception:
            log.exception("webhook.delivery_error", delivery_id=task.delivery.id)

    async def deliver(self, task: DeliveryTask) -> None:
        d = task.delivery
        try:
            secret = self.keyring.decrypt(
                task.secret_key_id, task.secret_ct, d.subscription_id.encode("utf-8")
            )
        except (DecryptionError, KeyError, ValueError):
            await self._failed(task, "the subscription secret cannot be decrypted", None)
            return
        body = delivery_body(task)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body, int(self.clock())),
            EVENT_HEADER: d.event_type,
            DELIVERY_HEADER: d.id,
        }
        import httpx

        status: int | None = None
        try:
            response = await self._client().post(task.url, content=body, headers=headers)
            status = response.status_code
            await response.aclose()
        except httpx.HTTPError as exc:
            await self._failed(task, f"{type(exc).__name__}: {str(exc)[:200]}", None)
            return
        if 200 <= status < 300:
            await self.store.mark_delivered(d.id, self.worker_id, self.clock(), status)
            attempts_counter().labels("delivered").inc()
            log.info(
                "webhook.delivered",
                delivery_id=d.id,
                subscription_id=d.subscription_id,
                event=d.event_type,
                attempt=d.attempts + 1,
                status=status,
                to=_where(task.url),
            )
            return
        await self._failed(task, f"HTTP {status}", status)

    async def _failed(self, task: DeliveryTask, error: str, status: int | None) -> None:
        d = task.delivery
        s = self.settings
        now = self.clock()
        attempt = d.attempts + 1
        deadline = d.window_start + s.max_age_seconds
        fields = {
            "delivery_id": d.id,
            "subscription_id": d.subscription_id,
            "event": d.event_type,
            "attempt": attempt,
            "error": error,
            "to": _where(task.url),
        }
        if now >= deadline:
            await self.store.mark_dead(d.id, self.worker_id, error, status)
            attempts_counter().labels("dead").inc()
            log.warning("webhook.dead_letter", **fields)
            return
        delay = backoff_delay(attempt, s.retry_base_seconds, s.retry_cap_seconds, self.rng)
        next_at = min(now + delay, deadline)
        await self.store.mark_failed(d.id, self.worker_id, next_at, error, status)
        attempts_counter().labels("retry").inc()
        log.info("webhook.retry_scheduled", retry_in=round(next_at - now, 3), **fields)
