"""examples/payment_backend.py, run as a process against a real relay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.webhooks.harness import SRC, Device, free_port, wait_until

from .conftest import RelayUnderTest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "payment_backend.py"
PAYMENT = {"amount_minor": 1_250_000, "currency": "EUR", "to": "ACME"}


@pytest.fixture
def backend(relay: RelayUnderTest, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "PM_RELAY_URL": relay.url,
        "PM_API_KEY": relay.verify_only,
        "PORT": str(port),
    }
    log = (tmp_path / "backend.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "backend.log").read_text()
        try:
            return httpx.get(url + "/payments", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, what="payment backend")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def pay(url: str, payment: dict[str, object], proof: object) -> httpx.Response:
    return httpx.post(url + "/payments", json={"payment": payment, "proof": proof}, timeout=60)


def test_payment_needs_a_valid_proof_of_exactly_this_payment(
    relay: RelayUnderTest, backend: str
) -> None:
    user = Device("payer")
    user.register(relay.url, relay.key)
    signed = {"type": "payment", **PAYMENT}

    proof = user.proof(signed)
    ok = pay(backend, PAYMENT, proof)
    assert ok.status_code == 200, ok.text
    assert ok.json()["executed"] is True and ok.json()["signed_by"] == "payer"

    again = pay(backend, PAYMENT, proof)
    assert again.status_code == 409 and again.json()["reason"] == "replayed"

    bigger = pay(backend, {**PAYMENT, "amount_minor": 125_000_000}, user.proof(signed))
    assert bigger.status_code == 403 and bigger.json()["reason"] == "context_mismatch"
    assert bigger.json()["signed"] == signed

    other = pay(backend, {**PAYMENT, "to": "EVIL"}, user.proof(signed))
    assert other.status_code == 403 and other.json()["reason"] == "context_mismatch"

    stale = pay(backend, PAYMENT, user.proof(signed, now=time.time() - 3600))
    assert stale.status_code == 403 and stale.json()["reason"] == "expired"

    forged = pay(backend, PAYMENT, Device("payer").proof(signed))  # unregistered key
    assert forged.status_code == 403 and forged.json()["reason"] == "unknown_key"

    missing = httpx.post(backend + "/payments", json={"payment": PAYMENT}, timeout=30)
    assert missing.status_code == 400

    ledger = httpx.get(backend + "/payments", timeout=30).json()["executed"]
    assert ledger == [{**PAYMENT, "proof_id": ok.json()["proof_id"]}]
