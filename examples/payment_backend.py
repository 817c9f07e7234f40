"""A payment backend that refuses to execute a payment without a valid proof.

Run it next to a relay:

    PM_RELAY_URL=http://127.0.0.1:8080 PM_API_KEY=pmk_... python examples/payment_backend.py

and POST a payment together with the proof the user's device produced for it:

    POST /payments
    {"payment": {"amount_minor": 1250000, "currency": "EUR", "to": "ACME"},
     "proof": {...proof envelope...}}

The rule it enforces: a payment is executed only if the relay accepted the proof AND
the context the user signed is exactly the payment about to be executed. A valid proof
for 10 EUR must never authorise 10,000 EUR; a relay that cannot be reached means "no".
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from proof_messenger.client import (
    ProofMessengerAPIError,
    ProofMessengerClient,
    ProofMessengerClientError,
    Replayed,
    RetryPolicy,
)
from proof_messenger.protocol.errors import ProofError


@dataclass
class Ledger:
    """Stands in for the real payment system: what was executed, once each."""

    executed: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def execute(self, payment: dict[str, Any], proof_id: str) -> None:
        with self.lock:
            self.executed.append({**payment, "proof_id": proof_id})


def expected_context(payment: dict[str, Any]) -> dict[str, Any]:
    """The exact context the user must have signed for this payment."""
    return {
        "type": "payment",
        "amount_minor": payment["amount_minor"],
        "currency": payment["currency"],
        "to": payment["to"],
    }


def valid_payment(payment: Any) -> bool:
    return (
        isinstance(payment, dict)
        and set(payment) == {"amount_minor", "currency", "to"}
        and type(payment["amount_minor"]) is int
        and payment["amount_minor"] > 0
        and isinstance(payment["currency"], str)
        and isinstance(payment["to"], str)
    )


def handle_payment(
    client: ProofMessengerClient, ledger: Ledger, doc: Any
) -> tuple[int, dict[str, Any]]:
    """The whole decision, as a pure-ish function of (relay answer, request)."""
    if not isinstance(doc, dict) or not valid_payment(doc.get("payment")) or "proof" not in doc:
        return 400, {
            "executed": False,
            "reason": "send {payment: {amount_minor, currency, to}, proof}",
        }
    payment = doc["payment"]
    try:
        result = client.verify(doc["proof"])
    except Replayed as exc:
        # Either a real replay, or our own retry after a timeout whose first attempt
        # committed. Never execute twice: check the ledger for exc.proof_id instead.
        return 409, {"executed": False, "reason": "replayed", "proof_id": exc.proof_id}
    except ProofError as exc:
        return 403, {"executed": False, "reason": exc.code, "detail": exc.detail}
    except ProofMessengerAPIError as exc:  # auth, rate limit, relay errors: fail closed
        return 503, {"executed": False, "reason": exc.code}
    except ProofMessengerClientError:  # relay unreachable: fail closed
        return 503, {"executed": False, "reason": "relay_unreachable"}
    if result.context != expected_context(payment):
        # The proof is genuine but for something else: refuse, and say what was signed.
        return 403, {
            "executed": False,
            "reason": "context_mismatch",
            "signed": result.context,
            "proof_id": result.proof_id,
        }
    ledger.execute(payment, result.proof_id)
    return 200, {
        "executed": True,
        "proof_id": result.proof_id,
        "signed_by": result.sub,
        "audit_event_id": result.audit_event_id,
    }


def make_server(client: ProofMessengerClient, ledger: Ledger, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if self.path != "/payments":
                self._reply(404, {"reason": "not found"})
                return
            length = int(self.headers.get("content-length") or 0)
            if length > 256 * 1024:
                self._reply(413, {"executed": False, "reason": "body too large"})
                return
            try:
                doc = json.loads(self.rfile.read(length))
            except ValueError:
                self._reply(400, {"executed": False, "reason": "body is not JSON"})
                return
            self._reply(*handle_payment(client, ledger, doc))

        def do_GET(self) -> None:
            if self.path == "/payments":
                with ledger.lock:
                    self._reply(200, {"executed": list(ledger.executed)})
            else:
                self._reply(404, {"reason": "not found"})

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main() -> None:
    client = ProofMessengerClient(
        os.environ.get("PM_RELAY_URL", "http://127.0.0.1:8080"),
        os.environ["PM_API_KEY"],
        timeout=10.0,
        retry=RetryPolicy(max_attempts=3),
    )
    server = make_server(client, Ledger(), int(os.environ.get("PORT", "8000")))
    print(f"payment backend on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        client.close()


if __name__ == "__main__":
    main()
