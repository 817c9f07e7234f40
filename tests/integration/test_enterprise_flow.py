"""Issue 6's "done means", end to end: a backend using the SDK, an IdP's user tokens and a
YAML policy enforce "two treasury approvers for wires over one million", a webhook
consumer receives the signed events, and each approval is provably in the Merkle log.

Real processes only: a local OIDC issuer (JWKS), a relay subprocess, a webhook receiver.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from proof_messenger.client import (
    PolicyDenied,
    ProofMessengerClient,
    load_verifier,
)
from proof_messenger.protocol import create_proof, generate_private_key, public_key_der
from proof_messenger.webhooks import verify_signature
from tests.policy.harness import AUDIENCE, Issuer, running_issuer, running_relay

APP_AUD = "banking-app"
SECRET = "whsec-" + "k" * 32
MILLION = 1_000_000 * 100  # EUR in minor units


class Receiver:
    """A webhook consumer that keeps every delivery whose signature verifies."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    verify_signature(SECRET, dict(self.headers), body)
                except Exception:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["type"] == event_type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as iss:
        yield iss


def relay_config(issuer: Issuer, receiver: Receiver) -> dict[str, Any]:
    return {
        "oidc": {
            "issuer": issuer.url,
            "algorithms": ["RS256", "ES256"],
            "user_tokens": {"audience": APP_AUD, "role_claims": ["roles"]},
        },
        "policy": {
            "rules": [
                {
                    "name": "wire-over-one-million",
                    "match": {"type": "wire_transfer"},
                    "roles_allowed": ["treasury", "clerk"],
                    "approvals": {
                        "required": 2,
                        "roles": ["treasury"],
                        "above": {"amount_minor": MILLION, "currency": "EUR"},
                    },
                },
                {"name": "default", "default": True},
            ]
        },
        "webhooks": {
            "poll_interval_seconds": 0.1,
            "subscriptions": [
                {
                    "id": "ledger",
                    "url": receiver.url,
                    "events": ["proof.verified", "proof.rejected"],
                    "secret": SECRET,
                }
            ],
        },
    }


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_treasury_approvers_for_a_wire_over_one_million(
    issuer: Issuer, receiver: Receiver, tmp_path: Path
) -> None:
    with running_relay(tmp_path, relay_config(issuer, receiver)) as relay:
        client = ProofMessengerClient(relay.url, relay.api_key)
        log_key = load_verifier(client_get_verifier_key(relay.url))
        wire = {
            "type": "wire_transfer",
            "transaction_id": f"tx-{uuid.uuid4().hex[:8]}",
            "amount_minor": 2_500_000 * 100,
            "currency": "EUR",
            "recipient": {"name": "ACME GmbH", "iban": "DE89370400440532013000"},
        }
        keys = {}
        for sub in ("alice", "bob", "carol"):
            keys[sub] = generate_private_key()
            client.register_key(sub, public_key_der(keys[sub]))

        def approve(sub: str, *roles: str) -> Any:
            proof = create_proof(keys[sub], wire, aud=AUDIENCE, sub=sub)
            token = issuer.token(sub, APP_AUD, roles=list(roles))
            return client.verify(proof, user_token=token)

        first = approve("alice", "treasury")
        assert first.context == wire
        assert first.authorization is not None
        assert first.authorization.status == "pending"
        assert first.authorization.still_needed == {"count": 1, "roles": ["treasury"]}

        # A clerk cannot be the second approver: refused, naming the rule.
        with pytest.raises(PolicyDenied) as denied:
            approve("carol", "clerk")
        assert denied.value.code == "policy_denied"

        second = approve("bob", "treasury")
        assert second.authorization is not None and second.authorization.complete
        assert {a["sub"] for a in second.authorization.approvals} == {"alice", "bob"}

        # The webhook consumer receives every event, signed, exactly once by delivery id.
        wait_for(lambda: len(receiver.of_type("proof.verified")) >= 2)
        wait_for(lambda: len(receiver.of_type("proof.rejected")) >= 1)
        verified = receiver.of_type("proof.verified")
        assert {e["data"]["proof_id"] for e in verified} == {first.proof_id, second.proof_id}
        assert len({e["id"] for e in receiver.events}) == len(receiver.events)
        assert receiver.bad_signatures == 0

        # Each approval is provably in the append-only log (no trust in the relay needed).
        for result in (first, second):
            receipt = client.audit_proof(result.audit_event_id, log_key)
            assert receipt.leaf_index == result.leaf_index
            assert receipt.event_id == result.audit_event_id
        client.close()


def client_get_verifier_key(base_url: str) -> str:
    import httpx

    doc = httpx.get(f"{base_url}/log/public-key", params={"format": "json"}, timeout=10).json()
    key: str = doc["verifier_key"]
    return key
