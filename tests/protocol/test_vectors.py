"""The committed protocol vectors: our library reproduces and judges them exactly."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from proof_messenger.protocol import (
    Intent,
    Proof,
    ProofError,
    ResolvedKey,
    Verifier,
    VerifierSettings,
    load_public_key_der,
    verify_es256,
)
from proof_messenger.protocol.intent import DOMAIN, digest, proof_id, signed_bytes
from tests.conftest import PROJECT_VECTORS, REPO, load_json

VECTORS: dict[str, Any] = load_json(PROJECT_VECTORS / "protocol-v1.json")
KEYS = {k["name"]: k for k in VECTORS["keys"]}


def test_file_is_reproducible() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_vectors.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_domain() -> None:
    assert bytes.fromhex(VECTORS["domain_hex"]) == DOMAIN == b"proof-messenger/v1\x00"


@pytest.mark.parametrize("key", VECTORS["keys"], ids=lambda k: k["name"])
def test_key_material_is_consistent(key: dict[str, Any]) -> None:
    private = serialization.load_der_private_key(bytes.fromhex(key["private_pkcs8_der_hex"]), None)
    spki = bytes.fromhex(key["public_spki_der_hex"])
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == spki
    )


@pytest.mark.parametrize("vector", VECTORS["positive"], ids=lambda v: v["name"])
def test_positive(vector: dict[str, Any]) -> None:
    spec = dict(vector["intent"])
    spec["nonce"] = bytes.fromhex(spec.pop("nonce_hex"))
    intent = Intent(**spec)
    intent_bytes = bytes.fromhex(vector["intent_cbor_hex"])
    assert intent.to_bytes() == intent_bytes
    assert Intent.from_bytes(intent_bytes) == intent
    assert signed_bytes(intent_bytes).hex() == vector["signed_bytes_hex"]
    assert digest(intent_bytes).hex() == vector["digest_hex"]
    assert proof_id(digest(intent_bytes)) == vector["proof_id"]

    key = KEYS[vector["key"]]
    public = load_public_key_der(bytes.fromhex(key["public_spki_der_hex"]))
    assert verify_es256(public, bytes.fromhex(vector["signature_hex"]), signed_bytes(intent_bytes))

    envelope = Proof.from_json(vector["envelope_json"])
    assert envelope.to_json_dict() == vector["envelope_json"]
    assert envelope.to_cbor().hex() == vector["envelope_cbor_hex"]
    assert Proof.from_cbor(bytes.fromhex(vector["envelope_cbor_hex"])) == envelope

    verifier = _verifier(
        {"audience": intent.aud, "now": intent.iat},
        [{"key": vector["key"], "sub": intent.sub, "status": "active"}],
    )
    result = verifier.verify(vector["envelope_json"])
    assert result.proof_id == vector["proof_id"]


def _verifier(settings: dict[str, Any], registry: list[dict[str, Any]]) -> Verifier:
    known: dict[str, ResolvedKey] = {}
    for entry in registry:
        key = KEYS[entry["key"]]
        der = bytes.fromhex(key["public_spki_der_hex"])
        known[key["kid"]] = ResolvedKey(
            kid=key["kid"],
            alg="ES256",
            public_key=load_public_key_der(der),
            public_key_der=der,
            sub=entry["sub"],
            status=entry["status"],
        )
    now = settings["now"]
    return Verifier(
        VerifierSettings(
            audience=settings["audience"],
            clock_skew=settings.get("clock_skew", 60),
            max_lifetime=settings.get("max_lifetime", 300),
        ),
        keys=known.get,
        clock=lambda: float(now),
    )


@pytest.mark.parametrize("vector", VECTORS["negative"], ids=lambda v: v["name"])
def test_negative(vector: dict[str, Any]) -> None:
    verifier = _verifier(vector["verifier"], vector["registry"])
    with pytest.raises(ProofError) as info:
        verifier.verify(vector["envelope_json"])
    assert info.value.code == vector["expected_error"], info.value.detail


def test_every_check_1_to_6_code_has_a_negative_vector() -> None:
    codes = {v["expected_error"] for v in VECTORS["negative"]}
    assert codes >= {
        "malformed_proof",
        "unsupported_version",
        "unsupported_algorithm",
        "malformed_intent",
        "non_canonical_encoding",
        "invalid_context",
        "wrong_audience",
        "not_yet_valid",
        "expired",
        "lifetime_too_long",
        "unknown_key",
        "key_revoked",
        "subject_mismatch",
        "invalid_signature",
    }
