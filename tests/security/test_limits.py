"""Resource limits over real HTTP: the relay answers 400/408/413 with a protocol code,
quickly, and keeps serving everybody else."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .relay import Relay, new_key, post_proof, register, sign

MB = 1024 * 1024


def problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


def bounded(r: httpx.Response, route: str) -> None:
    """400 with a code; /keys has a 16 KiB body limit of its own, so it may answer 413."""
    allowed = {400, 413} if route == "/keys" else {400}
    assert r.status_code in allowed, (r.status_code, r.text[:300])
    assert r.json()["code"] in {
        "malformed_proof",
        "malformed_request",
        "invalid_request",
        "payload_too_large",
    }


def healthy(relay: Relay) -> None:
    assert httpx.get(f"{relay.url}/health", timeout=10).json() == {"status": "ok"}


@pytest.mark.parametrize("route", ["/verify", "/verify/batch", "/keys"])
def test_huge_body_with_content_length_is_413(relay: Relay, route: str) -> None:
    with relay.client() as c:
        r = c.post(route, content=b"{" + b" " * (5 * MB) + b"}")
    problem(r, 413, "payload_too_large")
    healthy(relay)


def test_huge_chunked_body_without_content_length_is_413(relay: Relay) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    with relay.client() as c:
        r = c.post("/verify", content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    problem(r, 413, "payload_too_large")
    healthy(relay)


@pytest.mark.parametrize("route", ["/verify", "/verify/batch", "/keys"])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_400_not_a_stack_overflow(relay: Relay, route: str, opener: bytes) -> None:
    with relay.client() as c:
        r = c.post(route, content=opener * 100_000, headers={"content-type": "application/json"})
    bounded(r, route)
    healthy(relay)


def test_deep_nesting_in_cbor_is_400(relay: Relay) -> None:
    with relay.client() as c:
        r = c.post(
            "/verify", content=b"\x81" * 200_000, headers={"content-type": "application/cbor"}
        )
        problem(r, 400, "malformed_proof")
        r = c.post(
            "/verify/batch", content=b"\x81" * 200_000, headers={"content-type": "application/cbor"}
        )
        assert r.status_code == 400, r.text[:300]
    healthy(relay)


@pytest.mark.parametrize("route", ["/verify", "/verify/batch", "/keys"])
def test_giant_integers_are_400(relay: Relay, route: str) -> None:
    giant = b"9" * 200_000
    with relay.client() as c:
        r = c.post(
            route,
            content=b'{"v": ' + giant + b', "proofs": [' + giant + b"]}",
            headers={"content-type": "application/json"},
        )
    bounded(r, route)


@pytest.mark.parametrize("route", ["/verify", "/verify/batch", "/keys"])
def test_many_keys_are_400(relay: Relay, route: str) -> None:
    body = b"{" + b",".join(b'"k%05d":0' % i for i in range(80_000)) + b"}"
    assert len(body) < MB
    with relay.client() as c:
        r = c.post(route, content=body, headers={"content-type": "application/json"})
    bounded(r, route)
    healthy(relay)


def test_batch_over_the_limit_is_413(relay: Relay) -> None:
    with relay.client() as c:
        r = c.post("/verify/batch", json={"proofs": [{}] * 101})
    problem(r, 413, "batch_too_large")


def test_slow_loris_body_is_408_and_others_are_served(relay: Relay) -> None:
    """Headers arrive, then the body trickles in slower than the 2 s limit."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as s:
        s.sendall(
            b"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + relay.api_key.encode() + b"\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        response = b""
        s.settimeout(0.5)
        while time.monotonic() - started < 20 and b"\r\n\r\n" not in response:
            with contextlib.suppress(OSError):
                s.sendall(b" ")
            healthy(relay)  # the relay serves others while this body dribbles in
            with contextlib.suppress(TimeoutError):
                response += s.recv(65536)
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"request_timeout" in response


@pytest.mark.slow
def test_two_thousand_idle_connections_do_not_starve_health(relay: Relay) -> None:
    socks: list[socket.socket] = []
    try:
        for i in range(2000):
            s = socket.socket()
            s.settimeout(10)
            s.connect(("127.0.0.1", relay.port))
            # Half send a partial request line, half nothing at all.
            if i % 2:
                s.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        for _ in range(3):
            healthy(relay)
        key = new_key()
        with relay.client() as c:
            register(c, key, sub="crowd")
            assert post_proof(c, sign(key, sub="crowd")).status_code == 200
    finally:
        for s in socks:
            s.close()
    healthy(relay)


@pytest.mark.slow
def test_rate_limit_is_429_per_api_key_and_others_are_served(tmp_path: Path) -> None:
    relay = Relay(
        tmp_path,
        f"sqlite:///{tmp_path / 'audit.db'}",
        config={"limits": {"rate_limit_per_second": 1.0, "rate_limit_burst": 5}},
    )
    relay.start()
    try:
        other = relay.create_api_key(scopes="audit:read", name="other")
        with relay.client() as c:
            statuses = [c.get("/keys").status_code for _ in range(20)]
            assert statuses[:5] == [200] * 5
            assert 429 in statuses
            limited = c.get("/keys")
            problem(limited, 429, "rate_limited")
            assert int(limited.headers["retry-after"]) >= 1
        r = httpx.get(
            f"{relay.url}/audit", headers={"authorization": f"Bearer {other}"}, timeout=30
        )
        assert r.status_code == 200  # another API key has its own bucket
        healthy(relay)
    finally:
        relay.stop()
