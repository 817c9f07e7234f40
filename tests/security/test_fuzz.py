"""Fuzz the decoders, the verifier and the relay's /verify, seeded from the committed vectors.

Property: every input ends in a value or in a ProofError carrying a known protocol code
(over HTTP: a 200 or a problem+json 4xx with a known code) - never another exception,
never a 5xx. A generous per-input deadline turns a hang into a failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proof_messenger.protocol import (
    Intent,
    Proof,
    ProofError,
    ResolvedKey,
    Verifier,
    VerifierSettings,
    cbor,
    load_public_key_der,
)

from .fuzzing import (
    EXAMPLES,
    EXECUTED,
    HTTP_CODES,
    PROTOCOL_CODES,
    adversarial_text,
    mutated,
    mutated_envelope,
    seed_corpus,
    vectors,
)
from .relay import Relay, new_key, register, sign

SEEDS = seed_corpus()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),  # a hang guard, not a performance assertion
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=False,
)


def _registry() -> dict[str, ResolvedKey]:
    data = vectors()
    out = {}
    for k in data["keys"]:
        der = bytes.fromhex(k["public_spki_der_hex"])
        out[k["kid"]] = ResolvedKey(
            kid=k["kid"],
            alg="ES256",
            public_key=load_public_key_der(der),
            public_key_der=der,
            sub=k["name"],
            status="active",
        )
    return out


REGISTRY = _registry()
VERIFIER = Verifier(
    VerifierSettings(audience="payments.example.com"),
    keys=REGISTRY.get,
    clock=lambda: 1_764_000_010.0,
)


def only_protocol_errors(target: str, fn: Any, data: Any) -> None:
    EXECUTED[target] += 1
    try:
        fn(data)
    except ProofError as exc:
        assert exc.code in PROTOCOL_CODES, exc.code


TARGETS: dict[str, tuple[Any, str]] = {
    "cbor.decode": (cbor.decode, "intent"),
    "cbor.decode(envelope)": (lambda d: cbor.decode(d, strict=False), "cbor"),
    "Intent.from_bytes": (Intent.from_bytes, "intent"),
    "Proof.from_json": (Proof.from_json, "json"),
    "Proof.from_cbor": (Proof.from_cbor, "cbor"),
    "Verifier.verify(json)": (lambda d: VERIFIER.verify(d), "json"),
    "Verifier.verify(cbor)": (lambda d: VERIFIER.verify(d, cbor=True), "cbor"),
}


@pytest.mark.parametrize("target", list(TARGETS))
@FUZZ
@given(data=st.data())
def test_fuzz_decoders_seeded_from_vectors(target: str, data: st.DataObject) -> None:
    fn, corpus = TARGETS[target]
    raw = data.draw(mutated(SEEDS[corpus]) | st.binary(max_size=200))
    only_protocol_errors(target, fn, raw)


def test_seed_corpus_is_the_vectors() -> None:
    assert len(SEEDS["json"]) == 44 and len(SEEDS["cbor"]) == 5 and len(SEEDS["intent"]) >= 40
    # The positive seeds verify, so mutations start from inputs that reach every check.
    for case in vectors()["positive"]:
        VERIFIER.verify(json.dumps(case["envelope_json"]).encode())


def test_regression_lone_surrogate_kid_is_malformed() -> None:
    envelope = dict(vectors()["positive"][0]["envelope_json"], kid="\ud800")
    with pytest.raises(ProofError) as info:
        Proof.from_json(json.dumps(envelope))
    assert info.value.code == "malformed_proof"


# --- over HTTP -----------------------------------------------------------------------------------
@dataclass
class FuzzTarget:
    """The relay's client and a valid envelope that was never sent (JSON and CBOR)."""

    client: httpx.Client
    fresh: dict[str, Any]
    fresh_cbor: bytes


@pytest.fixture(scope="module")
def http(relay: Relay) -> Iterator[FuzzTarget]:
    with relay.client() as c:
        key = new_key()
        register(c, key)
        yield FuzzTarget(c, json.loads(sign(key).to_json()), sign(key).to_cbor())


def answer_is_clean(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code == 200:
        assert r.json()["valid"] is True
        return
    assert r.headers["content-type"].startswith("application/problem+json"), r.text[:300]
    assert r.json()["code"] in PROTOCOL_CODES | HTTP_CODES, r.text[:300]


@FUZZ
@given(data=st.data())
def test_fuzz_verify_over_http(http: FuzzTarget, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["bytes-json", "bytes-cbor", "structure", "batch"]))
    EXECUTED[f"HTTP /verify ({kind})"] += 1
    if kind == "bytes-json":
        body = data.draw(mutated([*SEEDS["json"], json.dumps(http.fresh).encode()]))
        r = http.client.post("/verify", content=body, headers={"content-type": "application/json"})
    elif kind == "bytes-cbor":
        body = data.draw(mutated([*SEEDS["cbor"], http.fresh_cbor]))
        r = http.client.post("/verify", content=body, headers={"content-type": "application/cbor"})
    elif kind == "structure":
        base = data.draw(
            st.sampled_from([http.fresh, *(c["envelope_json"] for c in vectors()["positive"])])
        )
        envelope = data.draw(mutated_envelope(base))
        r = http.client.post(
            "/verify", content=json.dumps(envelope), headers={"content-type": "application/json"}
        )
    else:
        envelope = data.draw(mutated_envelope(http.fresh))
        extra = data.draw(st.lists(st.none() | st.integers() | st.text(max_size=5), max_size=2))
        r = http.client.post(
            "/verify/batch",
            content=json.dumps({"proofs": [envelope, *extra]}),
            headers={"content-type": "application/json"},
        )
        if r.status_code == 200:
            for result in r.json()["results"]:
                assert result.get("valid") is True or result["code"] in PROTOCOL_CODES
            return
    answer_is_clean(r)


@settings(FUZZ, max_examples=max(50, EXAMPLES // 4))
@given(
    name=st.sampled_from(["v", "alg", "kid", "intent", "sig", "public_key"]), value=adversarial_text
)
def test_fuzz_one_field_of_a_fresh_envelope_over_http(
    http: FuzzTarget, name: str, value: str
) -> None:
    """A valid fresh envelope with one field made adversarial text: these reach the store."""
    EXECUTED["HTTP /verify (one adversarial field)"] += 1
    envelope = {**http.fresh, name: value}
    r = http.client.post(
        "/verify", content=json.dumps(envelope), headers={"content-type": "application/json"}
    )
    answer_is_clean(r)
