"""The proof envelope (protocol §3): check 1 in both its JSON and CBOR forms."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proof_messenger.protocol import (
    EnvelopeLimits,
    MalformedProof,
    Proof,
    ProofError,
    UnsupportedAlgorithm,
    UnsupportedVersion,
    b64u_encode,
    cbor,
)

from .helpers import make_proof

PROOF = make_proof()
GOOD: dict[str, Any] = PROOF.to_json_dict()


def _with(**changes: Any) -> dict[str, Any]:
    out = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


_DROP = object()


def test_json_and_cbor_round_trip() -> None:
    assert Proof.from_json(PROOF.to_json()) == PROOF
    assert Proof.from_json(PROOF.to_json().encode()) == PROOF
    assert Proof.from_json(GOOD) == PROOF
    assert Proof.from_cbor(PROOF.to_cbor()) == PROOF
    assert set(GOOD) == {"v", "alg", "kid", "intent", "sig", "public_key"}


def test_cbor_envelope_holds_real_byte_strings() -> None:
    decoded = cbor.decode(PROOF.to_cbor(), strict=False)
    assert decoded["intent"] == PROOF.intent and decoded["sig"] == PROOF.sig


def test_cbor_envelope_key_order_is_free() -> None:
    """Only signed bytes must be deterministic; the envelope is framing."""
    items = list(cbor.decode(PROOF.to_cbor(), strict=False).items())
    reordered = b"\xa6" + b"".join(cbor.encode(k) + cbor.encode(v) for k, v in reversed(items))
    assert reordered != PROOF.to_cbor()
    assert Proof.from_cbor(reordered) == PROOF


@pytest.mark.parametrize(
    ("envelope", "error", "message"),
    [
        (_with(v=2), UnsupportedVersion, "proof version 2"),
        (_with(v=0), UnsupportedVersion, "proof version 0"),
        (_with(v=True), MalformedProof, "v: required"),
        (_with(v="1"), MalformedProof, "v: required"),
        (_with(v=_DROP), MalformedProof, "v: required"),
        (_with(alg="ES384"), UnsupportedAlgorithm, "'ES384' is not supported"),
        (_with(alg="none"), UnsupportedAlgorithm, "'none' is not supported"),
        (_with(alg="es256"), UnsupportedAlgorithm, "not supported"),
        (_with(alg=_DROP), MalformedProof, "alg: required"),
        (_with(alg=1), MalformedProof, "alg: required"),
        # v and alg are judged before anything else, so a future proof says so
        (_with(v=2, extra="x", kid=_DROP), UnsupportedVersion, "version 2"),
        (_with(alg="EdDSA", extra="x", sig="AA"), UnsupportedAlgorithm, "not supported"),
        (_with(extra="x"), MalformedProof, "unexpected field"),
        (_with(kid=_DROP), MalformedProof, "kid: required"),
        (_with(kid=""), MalformedProof, "kid: required"),
        (_with(kid="k" * 1367), MalformedProof, "kid: required, 1-1366"),
        (_with(kid=5), MalformedProof, "kid: required"),
        (_with(intent=_DROP), MalformedProof, "intent: required"),
        (_with(intent=""), MalformedProof, "intent: required"),
        (_with(intent=None), MalformedProof, "intent: must not be null"),
        (_with(intent=GOOD["intent"] + "="), MalformedProof, "intent: not unpadded base64url"),
        (_with(intent="+" + GOOD["intent"][1:]), MalformedProof, "intent: not unpadded"),
        (_with(intent=" " + GOOD["intent"]), MalformedProof, "intent: not unpadded"),
        (_with(intent=[1]), MalformedProof, "intent: must be a base64url string"),
        (_with(sig="AB"), MalformedProof, "non-canonical base64url"),  # trailing bits set
        (_with(sig="A"), MalformedProof, "impossible base64url length"),
        (_with(sig=b64u_encode(PROOF.sig[:63])), MalformedProof, "sig: ES256 signatures are 64"),
        (_with(sig=b64u_encode(PROOF.sig + b"\x00")), MalformedProof, "sig: ES256 signatures"),
        (_with(sig=b64u_encode(bytes(81))), MalformedProof, "sig: longer than 80 bytes"),
        (_with(public_key=b64u_encode(bytes(513))), MalformedProof, "public_key: longer than 512"),
        (_with(intent=b64u_encode(bytes(16385))), MalformedProof, "intent: longer than 16384"),
        (_with(authenticator_data="AAAA"), MalformedProof, "only allowed with webauthn.ES256"),
        (_with(client_data_json="AAAA"), MalformedProof, "only allowed with webauthn.ES256"),
        (_with(alg="webauthn.ES256"), MalformedProof, "authenticator_data: required"),
        (
            _with(alg="webauthn.ES256", authenticator_data="AAAA"),
            MalformedProof,
            "client_data_json: required",
        ),
    ],
)
def test_check_1(envelope: dict[str, Any], error: type[ProofError], message: str) -> None:
    for form in (envelope, json.dumps(envelope)):
        with pytest.raises(error, match=message) as info:
            Proof.from_json(form)
        assert type(info.value) is error and info.value.check == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        ("[]", "envelope must be a map"),
        ("null", "envelope must be a map"),
        ('{"v": 1.0}', "fraction or exponent"),
        ('{"v": 1e0}', "fraction or exponent"),
        ('{"v": NaN}', "NaN is not allowed"),
        ('{"v": 1, "v": 1}', "duplicate key 'v'"),
        ("[" * 10_000, "not valid JSON"),
        (b"\xff\xfe{", "not valid JSON"),
    ],
)
def test_json_syntax(text: str | bytes, message: str) -> None:
    with pytest.raises(MalformedProof, match=message):
        Proof.from_json(text)


def test_envelope_size_limit() -> None:
    limits = EnvelopeLimits(max_envelope_bytes=100)
    with pytest.raises(MalformedProof, match="size limit"):
        Proof.from_json(PROOF.to_json(), limits)
    with pytest.raises(MalformedProof, match="size limit"):
        Proof.from_cbor(PROOF.to_cbor(), limits)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(sig=b64u_encode(m["sig"])), "sig: must be a CBOR byte string"),
        (lambda m: m.update(v=2), "version 2"),
        (lambda m: m.update(extra=b""), "unexpected field"),
        (lambda m: m.update(public_key=None), "public_key: must not be null"),
    ],
)
def test_cbor_check_1(mutate: Any, message: str) -> None:
    value = cbor.decode(PROOF.to_cbor(), strict=False)
    mutate(value)
    with pytest.raises(ProofError, match=message) as info:
        Proof.from_cbor(cbor.encode(value))
    assert info.value.check == 1


def test_cbor_envelope_must_be_a_map() -> None:
    with pytest.raises(MalformedProof, match="envelope must be a map"):
        Proof.from_cbor(cbor.encode([1]))
    with pytest.raises(MalformedProof, match="trailing"):
        Proof.from_cbor(PROOF.to_cbor() + b"\x00")
