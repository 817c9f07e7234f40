"""The delivery worker in-process, on a real SQLite store and real HTTP receivers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proof_messenger.audit.crypto import Keyring, MasterKey
from proof_messenger.store.base import AuditDraft, OutboxEvent, WebhookSubscription
from proof_messenger.store.sqlite import SQLiteStore
from proof_messenger.webhooks import verify_signature
from proof_messenger.webhooks.config import WebhookSettings
from proof_messenger.webhooks.worker import DeliveryWorker, backoff_delay

from .harness import Receiver, wait_until

SECRET = "whsec_worker_test_secret_000000"


@given(
    attempt=st.integers(1, 200),
    base=st.floats(0, 100),
    cap=st.floats(0, 10_000),
    r=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_full_jitter_under_the_capped_exponential(
    attempt: int, base: float, cap: float, r: float
) -> None:
    delay = backoff_delay(attempt, base, cap, lambda: r)
    assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1))


class Hanging:
    """A receiver that holds every request until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.arrived.set()
                outer.release.wait(60)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "relay.db"))
    await s.open()
    await s.migrate()
    yield s
    await s.close()


async def subscribe(store: SQLiteStore, ring: Keyring, sub_id: str, url: str, event: str) -> None:
    key_id, blob = ring.encrypt(SECRET.encode(), sub_id.encode())
    await store.insert_webhook_subscription(
        WebhookSubscription(sub_id, url, (event,), key_id, blob, "api", 0.0)
    )


async def emit(store: SQLiteStore, event_id: str, event: str, payload: bytes) -> None:
    draft = AuditDraft(event_id=event_id, time=1.0, event_type=event, status="info")
    await store.append(draft, outbox=[OutboxEvent(event, payload)])


async def test_a_hanging_receiver_does_not_hold_up_the_others(store: SQLiteStore) -> None:
    ring = Keyring([MasterKey.generate()])
    slow, fast = Hanging(), Receiver()
    try:
        await subscribe(store, ring, "slow", slow.url, "key.revoked")
        await subscribe(store, ring, "fast", fast.url, "proof.verified")
        settings = WebhookSettings(poll_interval_seconds=0.05, timeout_seconds=30, lease_seconds=60)
        worker = DeliveryWorker(store, ring, settings)
        runner = asyncio.create_task(worker.run())
        try:
            await emit(store, "evt-1", "key.revoked", b'{"kid":"k1"}')
            assert await asyncio.to_thread(slow.arrived.wait, 60)
            # While the slow receiver holds its request, a later event for another
            # receiver is still delivered.
            await emit(store, "evt-2", "proof.verified", b'{"proof_id":"p2"}')
            (got,) = await asyncio.to_thread(wait_until, fast.accepted, 60, "fast delivery")
            # ... and the slow attempt is still in flight (no result recorded for it yet).
            (pending,) = (await store.list_deliveries("slow", None, 10)).deliveries
            assert pending.status == "pending" and pending.attempts == 0
            verify_signature(SECRET, got.headers, got.body)
            assert got.json()["data"] == {"proof_id": "p2"}
            slow.release.set()
            for _ in range(1200):
                if (await store.list_deliveries("slow", "delivered", 10)).deliveries:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the slow delivery was never recorded")
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await worker.close()
    finally:
        slow.close()
        fast.close()


async def test_the_http_client_is_made_on_first_delivery_or_warm_up(store: SQLiteStore) -> None:
    """Every relay process runs a worker; it holds no HTTP client (httpx) until needed."""
    ring = Keyring([MasterKey.generate()])
    rx = Receiver()
    try:
        worker = DeliveryWorker(store, ring, WebhookSettings(poll_interval_seconds=0.05))
        assert await worker.run_once() == 0
        assert worker._http is None  # nothing to deliver: no client
        await worker.close()  # closing a worker that never delivered is fine
        await subscribe(store, ring, "rx", rx.url, "proof.verified")
        await emit(store, "evt-1", "proof.verified", b'{"proof_id":"p1"}')
        assert await worker.run_once() == 1
        assert worker._http is not None
        (got,) = rx.snapshot()
        verify_signature(SECRET, got.headers, got.body)
        await worker.close()
        warmed = DeliveryWorker(store, ring, WebhookSettings())
        warmed.warm()
        assert warmed._http is not None
        await warmed.close()
    finally:
        rx.close()
