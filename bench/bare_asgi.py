"""The ceiling: a bare ASGI endpoint that only verifies the signature.

JSON in, base64url, CBOR decode of the intent, SHA-256, ECDSA P-256 verify against a
pre-parsed key, JSON out. No routing framework, no auth, no database, no replay check,
no audit: what the relay's /verify would cost if it did nothing but the crypto. Run by
run.py under the same uvicorn settings as the relay; keys come from BENCH_KEYS_FILE
(JSON list of {"public_key": b64url DER}).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import cbor2
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

DOMAIN = b"proof-messenger/v1\x00"
_ECDSA = ec.ECDSA(hashes.SHA256())


def _b64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _load_keys() -> dict[str, Any]:
    keys = {}
    for entry in json.loads(open(os.environ["BENCH_KEYS_FILE"]).read()):  # noqa: SIM115
        der = _b64u(entry["public_key"])
        kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        keys[kid] = load_der_public_key(der)
    return keys


KEYS = _load_keys()
_OK_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/health":
        out, status = b'{"status":"ok"}', 200
    else:
        env = msgspec.json.decode(body)
        intent = _b64u(env["intent"])
        sig = _b64u(env["sig"])
        ctx = cbor2.loads(intent)
        digest = hashlib.sha256(DOMAIN + intent).digest()
        try:
            KEYS[env["kid"]].verify(
                encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:])),
                DOMAIN + intent,
                _ECDSA,
            )
            valid = True
        except (InvalidSignature, KeyError):
            valid = False
        out = msgspec.json.encode(
            {
                "valid": valid,
                "proof_id": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
                "sub": ctx["sub"],
            }
        )
        status = 200 if valid else 400
    await send({"type": "http.response.start", "status": status, "headers": _OK_HEADERS})
    await send({"type": "http.response.body", "body": out})
