"""Small builders shared by the protocol tests (real keys, real signatures, no mocks)."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from proof_messenger.protocol import (
    ALG_ES256,
    Proof,
    ResolvedKey,
    Verifier,
    VerifierSettings,
    create_proof,
    kid_for,
    public_key_der,
)
from proof_messenger.protocol.keys import P256_ORDER, PrivateKey

AUD = "payments.example.com"
SUB = "alice"
NOW = 1_764_000_000
CTX: dict[str, Any] = {
    "type": "wire_transfer",
    "amount_minor": 1_250_000,
    "currency": "EUR",
    "recipient": {"name": "ACME GmbH", "iban": "DE89370400440532013000"},
}
NONCE = bytes(range(32))


def fixed_key(label: str) -> PrivateKey:
    scalar = int.from_bytes(hashlib.sha256(b"test key " + label.encode()).digest())
    return ec.derive_private_key(scalar % (P256_ORDER - 1) + 1, ec.SECP256R1())


ALICE = fixed_key("alice")
BOB = fixed_key("bob")


def make_proof(key: PrivateKey = ALICE, **overrides: Any) -> Proof:
    args: dict[str, Any] = {"aud": AUD, "sub": SUB, "ttl": 300, "nonce": NONCE, "now": NOW}
    ctx = overrides.pop("ctx", CTX)
    args.update(overrides)
    return create_proof(key, ctx, **args)


def resolved(
    key: PrivateKey = ALICE, *, sub: str | None = SUB, status: str = "active", alg: str = ALG_ES256
) -> ResolvedKey:
    der = public_key_der(key)
    return ResolvedKey(
        kid=kid_for(der),
        alg=alg,
        public_key=key.public_key(),
        public_key_der=der,
        sub=sub,
        status=status,  # type: ignore[arg-type]
    )


def verifier(*keys: ResolvedKey, now: float = NOW, **settings: Any) -> Verifier:
    registry = {k.kid: k for k in (keys or (resolved(),))}
    settings.setdefault("audience", AUD)
    return Verifier(VerifierSettings(**settings), keys=registry.get, clock=lambda: float(now))
