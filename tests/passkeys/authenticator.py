"""A software WebAuthn authenticator: real P-256 assertions and "none" attestations in Python.

Shared by the relay tests that send passkey proofs without a browser (tests/security,
tests/relay); the browser tests use Chromium's virtual authenticator instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from proof_messenger.protocol import ALG_WEBAUTHN_ES256, Intent, Proof, b64u_encode
from proof_messenger.protocol.keys import PrivateKey
from proof_messenger.protocol.webauthn import FLAG_UP, FLAG_UV


def webauthn_proof(
    key: PrivateKey,
    kid: str,
    intent: Intent,
    *,
    origin: str | None = None,
    rp_id: str | None = None,
    flags: int = FLAG_UP | FLAG_UV,
    sign_count: int = 1,
) -> Proof:
    """A ``webauthn.ES256`` proof of ``intent``: the challenge is its digest, the RP id and
    the origin default to the intent's audience (``https://<aud>``)."""
    rp_id = intent.aud if rp_id is None else rp_id
    origin = f"https://{intent.aud}" if origin is None else origin
    auth = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + sign_count.to_bytes(4)
    cdj = json.dumps(
        {"type": "webauthn.get", "challenge": b64u_encode(intent.digest()), "origin": origin}
    ).encode()
    sig = key.sign(auth + hashlib.sha256(cdj).digest(), ec.ECDSA(hashes.SHA256()))
    return Proof(
        alg=ALG_WEBAUTHN_ES256,
        kid=kid,
        intent=intent.to_bytes(),
        sig=sig,
        authenticator_data=auth,
        client_data_json=cdj,
    )


def registration_credential(
    key: PrivateKey, challenge: str, *, rp_id: str, origin: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``(kid, credential)`` answering a registration ceremony's ``challenge`` (base64url)
    with a fresh credential id and a "none" attestation of ``key``, as the JSON a browser
    posts to ``/webauthn/register/verify``. The relay names the key by its credential id."""
    origin = f"https://{rp_id}" if origin is None else origin
    credential_id = os.urandom(16)
    numbers = key.public_key().public_numbers()
    cose_key = cbor2.dumps(
        {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32), -3: numbers.y.to_bytes(32)}
    )
    auth_data = (
        hashlib.sha256(rp_id.encode()).digest()
        + bytes([FLAG_UP | FLAG_UV | 0x40])  # AT: attested credential data follows
        + (0).to_bytes(4)
        + bytes(16)  # AAGUID
        + len(credential_id).to_bytes(2)
        + credential_id
        + cose_key
    )
    client_data = {"type": "webauthn.create", "challenge": challenge, "origin": origin}
    credential = {
        "id": b64u_encode(credential_id),
        "rawId": b64u_encode(credential_id),
        "type": "public-key",
        "response": {
            "clientDataJSON": b64u_encode(json.dumps(client_data).encode()),
            "attestationObject": b64u_encode(
                cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
            ),
        },
    }
    return b64u_encode(credential_id), credential
