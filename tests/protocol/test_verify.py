"""Checks 2-6 of protocol §4: each error code produced directly, and the order they run in."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from proof_messenger.protocol import (
    Intent,
    Proof,
    ProofError,
    Verifier,
    VerifierSettings,
    cbor,
    kid_for,
    public_key_der,
    sign_es256,
    signed_bytes,
    single_key_resolver,
)
from proof_messenger.protocol.envelope import ALG_WEBAUTHN_ES256

from .helpers import ALICE, AUD, BOB, CTX, NONCE, NOW, SUB, make_proof, resolved, verifier


def _resign(intent_map: dict[str, Any], key: Any = ALICE) -> Proof:
    """A correctly signed proof over arbitrary (possibly invalid) intent bytes."""
    data = cbor.encode(intent_map)
    return _signed(data, key)


def _signed(data: bytes, key: Any = ALICE) -> Proof:
    return Proof(
        alg="ES256",
        kid=kid_for(key),
        intent=data,
        sig=sign_es256(key, signed_bytes(data)),
        public_key=public_key_der(key),
    )


def _intent_map(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "ctx": CTX,
        "aud": AUD,
        "sub": SUB,
        "iat": NOW,
        "exp": NOW + 300,
        "nonce": NONCE,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _code(proof: Proof, v: Verifier | None = None) -> str:
    with pytest.raises(ProofError) as info:
        (v or verifier()).verify(proof)
    return info.value.code


def test_happy_path() -> None:
    proof = make_proof()
    result = verifier().verify(proof.to_json())
    assert result.proof_id == Intent.from_bytes(proof.intent).proof_id()
    assert result.intent.ctx == CTX and result.intent.sub == SUB
    assert result.key.kid == kid_for(ALICE) and not result.user_verified
    assert verifier().verify(proof.to_cbor(), cbor=True).proof_id == result.proof_id


# --- check 2 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [
        ({"nonce": _DROP}, "malformed_intent", "missing nonce"),
        ({"extra": 1}, "malformed_intent", "unexpected extra"),
        ({"v": 2}, "unsupported_version", "intent version 2"),
        ({"v": True}, "malformed_intent", "v: must be an unsigned integer"),
        ({"aud": ""}, "malformed_intent", "aud: must be 1-253 characters"),
        ({"aud": "a" * 254}, "malformed_intent", "aud: must be 1-253"),
        ({"sub": "a" * 257}, "malformed_intent", "sub: must be 1-256"),
        ({"sub": "al\nice"}, "malformed_intent", "sub: control characters"),
        ({"aud": "x\x7f"}, "malformed_intent", "aud: control characters"),
        ({"sub": b"alice"}, "malformed_intent", "sub: must be a text string"),
        ({"iat": -1}, "malformed_intent", "iat: must be an unsigned integer"),
        ({"exp": 2**63}, "malformed_intent", "exp: must be an unsigned integer below 2"),
        ({"exp": NOW}, "malformed_intent", "exp: must be later than iat"),
        ({"nonce": bytes(15)}, "malformed_intent", "nonce: must be 16-64 bytes"),
        ({"nonce": bytes(65)}, "malformed_intent", "nonce: must be 16-64 bytes"),
        ({"nonce": "x" * 32}, "malformed_intent", "nonce: must be a byte string"),
        ({"ctx": {"amount": 1}}, "invalid_context", "ctx.type: required"),
        ({"ctx": {"type": "t", "b": b"x"}}, "invalid_context", "ctx.b: byte string"),
        ({"ctx": [1]}, "invalid_context", "ctx: must be a map"),
        ({"ctx": {"type": "t", "n": 2**64 - 1}}, "invalid_context", "ctx.n: integer outside"),
    ],
)
def test_check_2_intent_rules(changes: dict[str, Any], code: str, message: str) -> None:
    proof = _resign(_intent_map(**changes))
    with pytest.raises(ProofError, match=message) as info:
        verifier().verify(proof)
    assert info.value.code == code
    # unsupported_version is a check-1 class, also raised for an intent's own ``v``
    assert info.value.check == (1 if code == "unsupported_version" else 2)


def test_check_2_not_a_map_and_raw_decoding_errors() -> None:
    assert _code(_signed(cbor.encode([1, 2]))) == "malformed_intent"
    good = make_proof().intent
    assert _code(_signed(good + b"\x00")) == "malformed_intent"
    assert _code(_signed(good[:-1])) == "malformed_intent"
    # re-encode one head (v: 1) in a longer form: 0x01 -> 0x18 0x01
    assert good[:4] == bytes.fromhex("a7617601")
    assert _code(_signed(good[:3] + b"\x18\x01" + good[4:])) == "non_canonical_encoding"


def test_intent_version_is_checked_before_the_other_fields() -> None:
    proof = _resign(_intent_map(v=2, aud=""))
    assert _code(proof) == "unsupported_version"


# --- check 3 ---------------------------------------------------------------------------------
def test_check_3_wrong_audience() -> None:
    proof = make_proof(aud="other.example.com")
    with pytest.raises(ProofError, match=r"not 'payments\.example\.com'") as info:
        verifier().verify(proof)
    assert info.value.code == "wrong_audience"


def test_audience_comparison_is_exact() -> None:
    assert _code(make_proof(aud=AUD.upper())) == "wrong_audience"
    assert _code(make_proof(aud=AUD + ".")) == "wrong_audience"


# --- check 4 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "code"),
    [
        (NOW - 61, "not_yet_valid"),
        (NOW - 60, None),  # iat == now + skew is still fine
        (NOW + 300 + 60, None),  # exp == now - skew is still fine
        (NOW + 300 + 61, "expired"),
    ],
)
def test_check_4_time_window_with_skew(now: int, code: str | None) -> None:
    v = verifier(now=now)
    if code is None:
        v.verify(make_proof())
    else:
        assert _code(make_proof(), v) == code


def test_check_4_lifetime() -> None:
    assert _code(make_proof(ttl=301)) == "lifetime_too_long"
    verifier(max_lifetime=3600).verify(make_proof(ttl=3600))
    assert _code(make_proof(ttl=3601), verifier(max_lifetime=3600)) == "lifetime_too_long"


def test_expiry_is_judged_before_lifetime() -> None:
    assert _code(make_proof(ttl=1000), verifier(now=NOW + 5000)) == "expired"


# --- check 5 ---------------------------------------------------------------------------------
def test_check_5_unknown_key() -> None:
    assert _code(make_proof(BOB)) == "unknown_key"


def test_check_5_key_registered_for_another_algorithm() -> None:
    v = verifier(resolved(alg=ALG_WEBAUTHN_ES256))
    with pytest.raises(ProofError, match=r"registered for webauthn\.ES256") as info:
        v.verify(make_proof())
    assert info.value.code == "unknown_key"


def test_check_5_revoked() -> None:
    assert _code(make_proof(), verifier(resolved(status="revoked"))) == "key_revoked"


def test_check_5_subject_mismatch() -> None:
    assert _code(make_proof(sub="mallory")) == "subject_mismatch"
    # a key registered for no particular subject (offline, single key) accepts any subject
    verifier(resolved(sub=None)).verify(make_proof(sub="mallory"))


def test_check_5_public_key_substitution_is_unknown_key() -> None:
    """An attacker's key in ``public_key`` never replaces the registered one."""
    proof = dataclasses.replace(make_proof(), public_key=public_key_der(BOB))
    with pytest.raises(ProofError, match="not the key registered") as info:
        verifier().verify(proof)
    assert info.value.code == "unknown_key"


def test_check_5_resolver_answering_for_another_kid() -> None:
    registry = resolved(BOB)
    v = Verifier(VerifierSettings(audience=AUD), keys=lambda kid: registry, clock=lambda: NOW)
    assert _code(make_proof(), v) == "unknown_key"


def test_single_key_resolver() -> None:
    v = Verifier(
        VerifierSettings(audience=AUD),
        keys=single_key_resolver(ALICE.public_key(), sub=SUB),
        clock=lambda: NOW,
    )
    v.verify(make_proof())
    assert _code(make_proof(sub="bob"), v) == "subject_mismatch"
    assert _code(make_proof(BOB), v) == "unknown_key"


# --- check 6 ---------------------------------------------------------------------------------
def test_check_6_invalid_signature() -> None:
    proof = make_proof()
    other = make_proof(ctx={**CTX, "amount_minor": 1})
    assert _code(dataclasses.replace(proof, sig=other.sig)) == "invalid_signature"
    assert _code(dataclasses.replace(proof, sig=bytes(64))) == "invalid_signature"
    forged = sign_es256(BOB, signed_bytes(proof.intent))
    assert _code(dataclasses.replace(proof, sig=forged)) == "invalid_signature"


def test_signature_without_domain_separation_is_rejected() -> None:
    proof = make_proof()
    bare = sign_es256(ALICE, proof.intent)
    assert _code(dataclasses.replace(proof, sig=bare)) == "invalid_signature"


# --- order, settings, staged use ---------------------------------------------------------------
def test_first_failure_wins() -> None:
    """A proof that is wrong in many ways reports the earliest check."""
    proof = make_proof(BOB, aud="elsewhere", sub="mallory")
    proof = dataclasses.replace(proof, sig=bytes(64))
    assert _code(proof, verifier(now=NOW + 10_000)) == "wrong_audience"
    assert _code(make_proof(BOB, sub="mallory"), verifier(now=NOW + 10_000)) == "expired"


def test_staged_api_matches_verify() -> None:
    v = verifier()
    proof = v.parse(make_proof().to_json())
    parsed = v.check_intent(proof)
    key = v.check_key(parsed, resolved())
    assert v.check_signature(parsed, key).proof_id == v.verify(proof).proof_id


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audience": ""},
        {"audience": "a" * 254},
        {"audience": "\udcff"},
        {"audience": AUD, "clock_skew": -1},
        {"audience": AUD, "max_lifetime": 0},
    ],
)
def test_settings_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        VerifierSettings(**kwargs)


def test_lone_surrogate_in_aud_or_sub_is_malformed_intent() -> None:
    """Regression: undecodable argv bytes reach ``aud``/``sub`` as lone surrogates; they
    used to pass validation and crash the encoder with UnicodeEncodeError."""
    for field in ("aud", "sub"):
        with pytest.raises(ProofError, match=f"{field}: text is not valid Unicode") as info:
            make_proof(ALICE, **{field: "pay\udcff"})
        assert info.value.code == "malformed_intent"
