"""Retries (503 through a proxy, connection refused until the relay is up) and paging."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from proof_messenger.client import (
    AsyncProofMessengerClient,
    ProofMessengerClient,
    RetryPolicy,
    ServiceUnavailableError,
    TransportError,
)
from proof_messenger.protocol import errors as perr
from tests.webhooks.harness import PAYMENT, Device, Relay, free_port

from .conftest import CountingTransport, RelayUnderTest

FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_cap=0.05)


class FlakyProxy:
    """Forwards to the relay, but answers the first ``failures`` requests with 503."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.failures = failures
        self.seen = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    outer.seen += 1
                    fail = outer.seen <= outer.failures
                if fail:
                    payload = b'{"type":"x","title":"Down","status":503,"code":"store_unavailable","detail":"down"}'
                    self.send_response(503)
                    self.send_header("content-type", "application/problem+json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length")
                }
                r = httpx.request(
                    self.command, upstream + self.path, content=body, headers=headers, timeout=30
                )
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(relay: RelayUnderTest) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(relay.url, failures=2)
    yield proxy
    proxy.close()


def test_503_is_retried_until_success(relay: RelayUnderTest, flaky: FlakyProxy) -> None:
    dev = Device("retry-503")
    with ProofMessengerClient(flaky.url, relay.key, retry=FAST) as c:
        info = c.register_key(dev.sub, dev.key.public_key())
        assert info.sub == dev.sub
        assert flaky.seen == 3  # two 503s, then the real answer
        result = c.verify(dev.proof(PAYMENT))
        assert result.kid == info.kid


def test_503_gives_up_after_max_attempts(relay: RelayUnderTest) -> None:
    proxy = FlakyProxy(relay.url, failures=100)
    try:
        with (
            ProofMessengerClient(proxy.url, relay.key, retry=FAST) as c,
            pytest.raises(ServiceUnavailableError) as info,
        ):
            c.list_keys()
        assert info.value.code == "store_unavailable" and info.value.status == 503
        assert proxy.seen == FAST.max_attempts
    finally:
        proxy.close()


def test_4xx_behind_the_proxy_is_not_retried(relay: RelayUnderTest) -> None:
    proxy = FlakyProxy(relay.url, failures=0)
    try:
        with (
            ProofMessengerClient(proxy.url, relay.key, retry=FAST) as c,
            pytest.raises(perr.MalformedProof),
        ):
            c.verify({"v": 1})
        assert proxy.seen == 1
    finally:
        proxy.close()


def test_connection_refused_until_the_relay_starts(tmp_path: Path) -> None:
    relay = Relay(tmp_path)
    key = relay.api_key()
    patient = RetryPolicy(max_attempts=200, backoff_base=0.2, backoff_cap=0.5)
    transport = CountingTransport()
    try:
        with ProofMessengerClient(relay.url, key, retry=patient, transport=transport) as c:
            starter = threading.Timer(0.5, lambda: relay.start(wait=False))
            starter.start()
            keys = c.list_keys()  # refused until the relay listens
            starter.join()
        assert keys == []
        assert len(transport.sent) > 1
        with (
            ProofMessengerClient(
                f"http://127.0.0.1:{free_port()}", key, retry=RetryPolicy(max_attempts=2)
            ) as nowhere,
            pytest.raises(TransportError) as info,
        ):
            nowhere.list_keys()
        assert info.value.attempts == 2
    finally:
        relay.stop()


async def test_async_connection_refused_is_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncProofMessengerClient(
        url, "k", retry=RetryPolicy(max_attempts=3, backoff_base=0.01)
    ) as c:
        with pytest.raises(TransportError) as info:
            await c.list_keys()
    assert info.value.attempts == 3


async def test_audit_iterates_every_page_sync_and_async(relay: RelayUnderTest) -> None:
    dev = Device("pager")
    with ProofMessengerClient(relay.url, relay.key, retry=FAST) as c:
        c.register_key(dev.sub, dev.key.public_key())
        ids = [c.verify(dev.proof({**PAYMENT, "amount_minor": i})).audit_event_id for i in range(5)]
        events = list(c.audit(sub=dev.sub, page_size=2))
        accepted = list(c.audit(sub=dev.sub, status="accepted", page_size=2))
        one = c.get_audit_event(ids[0])
    # key.registered + 5 verified, newest first, over 3 pages of 2
    assert [e.type for e in events].count("proof.verified") == 5
    assert len(events) == 6 and len({e.event_id for e in events}) == 6
    assert [e.seq for e in events] == sorted((e.seq for e in events), reverse=True)
    assert [e.event_id for e in accepted] == list(reversed(ids))
    assert one.raw["context"] == {**PAYMENT, "amount_minor": 0}
    async with AsyncProofMessengerClient(relay.url, relay.key, retry=FAST) as ac:
        async_events = [e async for e in ac.audit(sub=dev.sub, page_size=3)]
    assert [e.event_id for e in async_events] == [e.event_id for e in events]


def test_verify_batch_sync(relay: RelayUnderTest) -> None:
    dev = Device("batcher")
    with ProofMessengerClient(relay.url, relay.key, retry=FAST) as c:
        c.register_key(dev.sub, dev.key.public_key())
        batch = c.verify_batch([dev.proof(PAYMENT), dev.proof(PAYMENT, aud="evil.example.com")])
    assert (batch.accepted, batch.rejected) == (1, 1)
    assert batch.entries[0].result is not None and batch.entries[0].result.context == PAYMENT
    assert isinstance(batch.entries[1].error, perr.WrongAudience)
