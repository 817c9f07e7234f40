"""Check 6 for ``webauthn.ES256``: real P-256 assertions built in Python, one test per code.

authenticator_data = SHA-256(rp_id) || flags || sign_count (4 bytes, big-endian);
client_data_json carries type / challenge / origin; the DER signature covers
authenticator_data || SHA-256(client_data_json).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from proof_messenger.protocol import (
    ALG_WEBAUTHN_ES256,
    Intent,
    Proof,
    ProofError,
    ResolvedKey,
    Verifier,
    VerifierSettings,
    b64u_encode,
    public_key_der,
)
from proof_messenger.protocol.webauthn import FLAG_UP, FLAG_UV, verify_assertion

from .helpers import ALICE, AUD, BOB, CTX, NONCE, NOW, SUB

ORIGIN = "https://payments.example.com"
CREDENTIAL_ID = b"credential-0001"
INTENT = Intent.create(CTX, aud=AUD, sub=SUB, nonce=NONCE, now=NOW)
DIGEST = INTENT.digest()


def assertion(
    *,
    key: ec.EllipticCurvePrivateKey = ALICE,
    rp_id: str = AUD,
    flags: int = FLAG_UP | FLAG_UV,
    sign_count: int = 5,
    client_data: dict[str, Any] | None = None,
    digest: bytes = DIGEST,
) -> dict[str, bytes]:
    auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + sign_count.to_bytes(4)
    if client_data is None:
        client_data = {"type": "webauthn.get", "challenge": b64u_encode(digest), "origin": ORIGIN}
    cdj = json.dumps(client_data).encode()
    sig = key.sign(auth_data + hashlib.sha256(cdj).digest(), ec.ECDSA(hashes.SHA256()))
    return {"authenticator_data": auth_data, "client_data_json": cdj, "signature": sig}


def run(parts: dict[str, bytes], *, stored: int = 0, uv: bool = False) -> Any:
    return verify_assertion(
        public_key=ALICE.public_key(),
        digest=DIGEST,
        audience=AUD,
        authenticator_data=parts["authenticator_data"],
        client_data_json=parts["client_data_json"],
        signature=parts["signature"],
        allowed_origins=frozenset({ORIGIN}),
        stored_sign_count=stored,
        require_user_verification=uv,
    )


def code_of(parts: dict[str, bytes], **kwargs: Any) -> str:
    with pytest.raises(ProofError) as info:
        run(parts, **kwargs)
    return info.value.code


def _cd(**changes: Any) -> dict[str, Any]:
    base = {"type": "webauthn.get", "challenge": b64u_encode(DIGEST), "origin": ORIGIN}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_happy_path() -> None:
    result = run(assertion(), stored=4, uv=True)
    assert (result.sign_count, result.user_verified, result.origin) == (5, True, ORIGIN)


def test_authenticator_without_a_counter_is_accepted() -> None:
    assert run(assertion(sign_count=0), stored=0).sign_count == 0


@pytest.mark.parametrize(
    ("client_data", "code"),
    [
        (_cd(type="webauthn.create"), "webauthn_invalid_type"),
        (_cd(type=None), "webauthn_invalid_type"),
        (_cd(challenge=b64u_encode(bytes(32))), "webauthn_challenge_mismatch"),
        (_cd(challenge=b64u_encode(DIGEST) + "="), "webauthn_challenge_mismatch"),
        (_cd(challenge=None), "webauthn_challenge_mismatch"),
        (_cd(challenge="é" + b64u_encode(DIGEST)[1:]), "webauthn_challenge_mismatch"),
        (_cd(origin="https://evil.example.com"), "webauthn_origin_mismatch"),
        (_cd(origin="https://payments.example.com:8443"), "webauthn_origin_mismatch"),
        (_cd(origin=None), "webauthn_origin_mismatch"),
        (_cd(crossOrigin=True), "webauthn_origin_mismatch"),
    ],
)
def test_client_data_checks(client_data: dict[str, Any], code: str) -> None:
    assert code_of(assertion(client_data=client_data)) == code


def test_cross_origin_false_is_fine() -> None:
    run(assertion(client_data=_cd(crossOrigin=False)))


def test_rp_id_hash_must_be_sha256_of_the_audience() -> None:
    assert code_of(assertion(rp_id="evil.example.com")) == "webauthn_rp_id_mismatch"


def test_user_presence_is_always_required() -> None:
    assert code_of(assertion(flags=FLAG_UV)) == "webauthn_user_not_present"


def test_user_verification_when_policy_requires_it() -> None:
    parts = assertion(flags=FLAG_UP)
    assert run(parts).user_verified is False
    assert code_of(parts, uv=True) == "webauthn_user_not_verified"


def test_signature() -> None:
    parts = assertion()
    assert code_of({**parts, "signature": assertion(key=BOB)["signature"]}) == "invalid_signature"
    # signed over different authenticator data (flags changed after signing)
    tampered = bytearray(parts["authenticator_data"])
    tampered[32] |= 0x40
    assert code_of({**parts, "authenticator_data": bytes(tampered)}) == "invalid_signature"
    # a raw r||s signature is not what authenticators produce
    assert code_of({**parts, "signature": bytes(64)}) == "invalid_signature"


@pytest.mark.parametrize(("new", "stored"), [(5, 5), (4, 5), (0, 5)])
def test_sign_count_regression_is_a_possible_clone(new: int, stored: int) -> None:
    assert code_of(assertion(sign_count=new), stored=stored) == "webauthn_sign_count"


def test_steps_run_in_specification_order() -> None:
    """Several defects at once: the earliest step of WebAuthn L2 §7.2 is reported."""
    bad = assertion(
        key=BOB, rp_id="evil", flags=0, sign_count=0, client_data=_cd(origin="https://x")
    )
    assert code_of(bad, stored=9, uv=True) == "webauthn_origin_mismatch"
    bad = assertion(key=BOB, rp_id="evil", flags=0, sign_count=0)
    assert code_of(bad, stored=9, uv=True) == "webauthn_rp_id_mismatch"
    bad = assertion(key=BOB, flags=0, sign_count=0)
    assert code_of(bad, stored=9, uv=True) == "webauthn_user_not_present"
    bad = assertion(key=BOB, flags=FLAG_UP, sign_count=0)
    assert code_of(bad, stored=9, uv=True) == "webauthn_user_not_verified"
    bad = assertion(key=BOB, sign_count=0)
    assert code_of(bad, stored=9, uv=True) == "invalid_signature"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client_data_json": b"\xff"}, "not UTF-8 JSON"),
        ({"client_data_json": b"[]"}, "must be a JSON object"),
        ({"authenticator_data": bytes(36)}, "shorter than 37 bytes"),
    ],
)
def test_malformed_parts(change: dict[str, bytes], message: str) -> None:
    with pytest.raises(ProofError, match=message) as info:
        run({**assertion(), **change})
    assert info.value.code == "malformed_proof"


# --- through the Verifier, as a relay runs it ----------------------------------------------------
def _proof(parts: dict[str, bytes]) -> Proof:
    return Proof(
        alg=ALG_WEBAUTHN_ES256,
        kid=b64u_encode(CREDENTIAL_ID),
        intent=INTENT.to_bytes(),
        sig=parts["signature"],
        authenticator_data=parts["authenticator_data"],
        client_data_json=parts["client_data_json"],
    )


def _verifier(*, stored: int = 0, uv: bool = False) -> Verifier:
    key = ResolvedKey(
        kid=b64u_encode(CREDENTIAL_ID),
        alg=ALG_WEBAUTHN_ES256,
        public_key=ALICE.public_key(),
        public_key_der=public_key_der(ALICE),
        sub=SUB,
        sign_count=stored,
    )
    settings = VerifierSettings(
        audience=AUD, webauthn_origins=frozenset({ORIGIN}), require_user_verification=uv
    )
    return Verifier(settings, keys={key.kid: key}.get, clock=lambda: NOW)


def test_verifier_accepts_a_passkey_proof_in_both_envelope_forms() -> None:
    proof = _proof(assertion(sign_count=8))
    result = _verifier(stored=7, uv=True).verify(proof.to_json())
    assert result.proof_id == INTENT.proof_id() and result.sign_count == 8
    assert result.user_verified
    assert _verifier(stored=7).verify(proof.to_cbor(), cbor=True).sign_count == 8


def test_verifier_binds_the_challenge_to_this_intent() -> None:
    other = Intent.create({**CTX, "amount_minor": 1}, aud=AUD, sub=SUB, nonce=NONCE, now=NOW)
    proof = _proof(assertion(digest=other.digest()))
    with pytest.raises(ProofError) as info:
        _verifier().verify(proof)
    assert info.value.code == "webauthn_challenge_mismatch"


def test_verifier_reports_sign_count_regression() -> None:
    with pytest.raises(ProofError) as info:
        _verifier(stored=9).verify(_proof(assertion(sign_count=9)))
    assert info.value.code == "webauthn_sign_count"


def test_no_allowed_origins_means_no_passkey_proof_is_accepted() -> None:
    v = Verifier(
        VerifierSettings(audience=AUD),
        keys=_verifier().keys,
        clock=lambda: NOW,
    )
    with pytest.raises(ProofError) as info:
        v.verify(_proof(assertion()))
    assert info.value.code == "webauthn_origin_mismatch"
