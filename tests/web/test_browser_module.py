"""The browser module (web/static/proof-messenger.js) in real Chromium, held to the Python side.

Everything the module produces is checked against an independent implementation: cbor2 for the
CBOR bytes, hashlib for digests, pyca/cryptography for device-key signatures and py_webauthn plus
cryptography for passkey assertions made by a CDP virtual authenticator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proof_messenger.protocol import (
    ALG_WEBAUTHN_ES256,
    ProofError,
    ResolvedKey,
    Verifier,
    VerifierSettings,
    single_key_resolver,
)
from proof_messenger.protocol import cbor as pm_cbor
from tests.conftest import PROJECT_VECTORS, load_json, shared_vector

pytestmark = pytest.mark.browser

DOMAIN = b"proof-messenger/v1\x00"
SAFE_INT = 2**53 - 1
INT64 = (-(2**63), 2**63 - 1)


# --- transport helpers (see conftest.TEST_PAGE) ---------------------------------------------------
def to_js(value: Any) -> Any:
    """Python value -> transport JSON understood by the test page's ``t.revive``."""
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -SAFE_INT <= value <= SAFE_INT else {"$bigint": str(value)}
    if isinstance(value, list | tuple):
        return [to_js(v) for v in value]
    if isinstance(value, dict):
        return {k: to_js(v) for k, v in value.items()}
    raise TypeError(f"cannot send {type(value).__name__} to the browser")


def from_js(value: Any) -> Any:
    """Transport JSON produced by ``t.dehydrate`` -> Python value."""
    if isinstance(value, list):
        return [from_js(v) for v in value]
    if isinstance(value, dict):
        if list(value) == ["$bytes"]:
            return bytes.fromhex(value["$bytes"])
        if list(value) == ["$bigint"]:
            return int(value["$bigint"])
        return {k: from_js(v) for k, v in value.items()}
    return value


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def verify_es256(spki_der: bytes, message: bytes, raw_sig: bytes) -> None:
    """Raises InvalidSignature unless raw r||s is a valid ECDSA P-256/SHA-256 signature."""
    assert len(raw_sig) == 64
    public_key = serialization.load_der_public_key(spki_der)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(
        int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    )
    public_key.verify(der, message, ec.ECDSA(hashes.SHA256()))


# JS snippets run with one argument (transport JSON) and return transport JSON.
ENCODE_BATCH = """(values) => values.map((v) => t.hex(pm.encodeCbor(t.revive(v))))"""
ROUNDTRIP_BATCH = """(hexes) => hexes.map((h) => {
  const decoded = pm.decodeCbor(t.unhex(h));
  return {value: t.dehydrate(decoded), again: t.hex(pm.encodeCbor(decoded))};
})"""
DECODE_ERRORS = """async (hexes) => Promise.all(
  hexes.map((h) => t.attempt(() => t.dehydrate(pm.decodeCbor(t.unhex(h))))))"""


# --- protocol vectors (tests/vectors/protocol-v1.json) --------------------------------------------
VECTORS: dict[str, Any] = load_json(PROJECT_VECTORS / "protocol-v1.json")
VECTOR_KEYS = {k["name"]: k for k in VECTORS["keys"]}
INTENT_LEVEL_PREFIXES = ("intent-", "context-")

REPRODUCE_POSITIVE = """async (v) => {
  const spec = t.revive(v.intent);
  const {intent, intentBytes} = pm.buildIntent({ctx: spec.ctx, aud: spec.aud, sub: spec.sub,
                                                iat: spec.iat, ttl: spec.exp - spec.iat,
                                                nonce: spec.nonce});
  const digest = await pm.intentDigest(intentBytes);
  const vectorBytes = t.unhex(v.intentHex);
  const decoded = pm.decodeIntent(vectorBytes);
  const env = {...v.envelope};
  const algo = {name: "ECDSA", namedCurve: "P-256"};
  const es256 = {name: "ECDSA", hash: "SHA-256"};
  const subtle = crypto.subtle;
  const publicKey = await subtle.importKey("spki", t.unhex(v.spki), algo, true, ["verify"]);
  const privateKey = await subtle.importKey("pkcs8", t.unhex(v.pkcs8), algo, false, ["sign"]);
  const vectorSigOk = await subtle.verify(es256, publicKey, t.unhex(v.sig),
                                          pm.signedBytes(vectorBytes));
  const own = await pm.signIntentWithDeviceKey({privateKey, publicKey}, intentBytes);
  const ownSigOk = await subtle.verify(es256, publicKey, pm.base64urlDecode(own.sig),
                                       pm.signedBytes(intentBytes));
  return {
    intentHex: t.hex(intentBytes),
    signedHex: t.hex(pm.signedBytes(intentBytes)),
    digestHex: t.hex(digest),
    proofId: pm.proofId(digest),
    reencoded: t.hex(pm.encodeIntent(decoded)),
    decoded: t.dehydrate(decoded),
    kid: (await pm.deviceKeyId(publicKey)).kid,
    envelopeJson: pm.envelopeToJson(env),
    envelopeCborHex: t.hex(pm.envelopeToCbor(env)),
    vectorSigOk, own, ownSigOk,
  };
}"""


def _intent_transport(spec: dict[str, Any]) -> dict[str, Any]:
    intent = {k: v for k, v in spec.items() if k != "nonce_hex"}
    intent["nonce"] = bytes.fromhex(spec["nonce_hex"])
    return intent


@pytest.mark.parametrize("vector", VECTORS["positive"], ids=lambda v: v["name"])
def test_protocol_vector_positive_is_reproduced(shared_page: Any, vector: dict[str, Any]) -> None:
    key = VECTOR_KEYS[vector["key"]]
    intent = _intent_transport(vector["intent"])
    r = shared_page.evaluate(
        REPRODUCE_POSITIVE,
        {
            "intent": to_js(intent),
            "intentHex": vector["intent_cbor_hex"],
            "envelope": vector["envelope_json"],
            "spki": key["public_spki_der_hex"],
            "pkcs8": key["private_pkcs8_der_hex"],
            "sig": vector["signature_hex"],
        },
    )
    assert r["intentHex"] == vector["intent_cbor_hex"]
    assert r["signedHex"] == vector["signed_bytes_hex"]
    assert r["digestHex"] == vector["digest_hex"]
    assert r["proofId"] == vector["proof_id"]
    assert r["reencoded"] == vector["intent_cbor_hex"]
    assert from_js(r["decoded"]) == intent  # exact, including integers beyond 2^53
    assert r["kid"] == key["kid"] == vector["envelope_json"]["kid"]
    assert json.loads(r["envelopeJson"]) == vector["envelope_json"]
    assert r["envelopeCborHex"] == vector["envelope_cbor_hex"]
    assert r["vectorSigOk"] is True
    # the module signing with the vector's key yields the vector's envelope but for the
    # (randomised) signature, which verifies both in WebCrypto and in pyca/cryptography
    own = dict(r["own"])
    own_sig = unb64u(own.pop("sig"))
    expected = {k: v for k, v in vector["envelope_json"].items() if k != "sig"}
    assert own == expected
    assert r["ownSigOk"] is True
    verify_es256(
        bytes.fromhex(key["public_spki_der_hex"]),
        bytes.fromhex(vector["signed_bytes_hex"]),
        own_sig,
    )


def test_protocol_vector_negatives_at_the_intent_level(shared_page: Any) -> None:
    cases = [n for n in VECTORS["negative"] if n.get("intent_cbor_hex")]
    results = shared_page.evaluate(
        """(hexes) => Promise.all(hexes.map((h) => t.attempt(() => {
          pm.decodeIntent(t.unhex(h));
          return true;
        })))""",
        [n["intent_cbor_hex"] for n in cases],
    )
    intent_level = 0
    for case, result in zip(cases, results, strict=True):
        if case["name"].startswith(INTENT_LEVEL_PREFIXES):
            intent_level += 1
            assert not result["ok"], case["name"]
            assert result["code"] == case["expected_error"], (case["name"], result)
        else:  # the defect is elsewhere (envelope, audience, time, key, signature)
            assert result["ok"], (case["name"], result)
    assert intent_level >= 15
    codes = {c["expected_error"] for c in cases if c["name"].startswith(INTENT_LEVEL_PREFIXES)}
    assert {"non_canonical_encoding", "malformed_intent", "invalid_context"} <= codes


# --- RFC 8949 Appendix A --------------------------------------------------------------------------
def _appendix_cases() -> tuple[list[tuple[str, Any]], list[str]]:
    """(hex, value) pairs the protocol's value model can express, and hex it must refuse."""
    entries = load_json(shared_vector("cbor", "appendix_a.json"))
    accepted: list[tuple[str, Any]] = []
    refused: list[str] = []

    def in_model(v: Any) -> bool:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return True
        if isinstance(v, int):
            return -(2**63) <= v < 2**64  # the decoder's range, as in the Python library
        if isinstance(v, list):
            return all(in_model(x) for x in v)
        if isinstance(v, dict):
            return all(in_model(x) for x in v.values())
        return False  # floats

    for e in entries:
        if not e["roundtrip"]:
            refused.append(e["hex"])  # indefinite lengths, non-preferred floats
        elif "decoded" in e and in_model(e["decoded"]):
            accepted.append((e["hex"], e["decoded"]))
        elif m := re.fullmatch(r"h'([0-9a-fA-F]*)'", e.get("diagnostic", "")):
            accepted.append((e["hex"], bytes.fromhex(m.group(1))))
        else:
            refused.append(e["hex"])  # floats, tags, undefined, simple values, int keys, bignums
    return accepted, refused


def test_appendix_a_deterministic_examples_encode_and_decode_exactly(shared_page: Any) -> None:
    accepted, _ = _appendix_cases()
    assert len(accepted) >= 30
    encoded = shared_page.evaluate(ENCODE_BATCH, [to_js(v) for _, v in accepted])
    assert encoded == [h for h, _ in accepted]
    decoded = shared_page.evaluate(ROUNDTRIP_BATCH, [h for h, _ in accepted])
    assert [from_js(d["value"]) for d in decoded] == [v for _, v in accepted]
    assert [d["again"] for d in decoded] == [h for h, _ in accepted]


def test_appendix_a_examples_outside_the_model_are_refused(shared_page: Any) -> None:
    _, refused = _appendix_cases()
    results = shared_page.evaluate(DECODE_ERRORS, refused)
    outcome = dict(zip(refused, results, strict=True))
    assert all(not r["ok"] for r in results), [h for h, r in outcome.items() if r["ok"]]
    # indefinite lengths are the non-deterministic spellings of valid values ...
    for h in ("5f42010243030405ff", "7f657374726561646d696e67ff", "9fff", "bf61610161629f0203ffff"):
        assert outcome[h]["code"] == "non_canonical_encoding", h
    # ... whereas floats, tags, simple values and integer map keys are outside the value model
    for h in (
        "f93c00",
        "fb7e37e43c8800759c",
        "c249010000000000000000",
        "f7",
        "f0",
        "a201020304",
        "3bffffffffffffffff",  # -2^64: below the model's -2^63
    ):
        assert outcome[h]["code"] == "malformed_intent", h


def test_decoder_rejects_non_deterministic_and_malformed_input(shared_page: Any) -> None:
    cases = {
        "1817": "non_canonical_encoding",  # 23 with a one-byte argument
        "190017": "non_canonical_encoding",
        "1a0000ffff": "non_canonical_encoding",
        "1b00000000ffffffff": "non_canonical_encoding",
        "3817": "non_canonical_encoding",  # -24 spelled long
        "780161": "non_canonical_encoding",  # text length 1 with a one-byte argument
        "a2616201616101": "non_canonical_encoding",  # keys out of order
        "a2616101616101": "non_canonical_encoding",  # duplicate key
        "a26261610161620102": "non_canonical_encoding",  # "aa" before "b": length-first wins
        "0000": "malformed_intent",  # trailing byte
        "": "malformed_intent",
        "18": "malformed_intent",  # truncated head
        "62c3": "malformed_intent",  # truncated text
        "62c328": "malformed_intent",  # invalid UTF-8
        "63eda080": "malformed_intent",  # encoded lone surrogate
        "1c": "malformed_intent",  # reserved additional information
        "ff": "malformed_intent",  # stray break
        "5b0000000100000000": "malformed_intent",  # length far past the end of input
        "f818": "malformed_intent",  # simple(24)
    }
    results = shared_page.evaluate(DECODE_ERRORS, list(cases))
    got = {h: r.get("code", "accepted") for h, r in zip(cases, results, strict=True)}
    assert got == cases


def test_decoded_proto_key_stays_data(shared_page: Any) -> None:
    data = canonical({"__proto__": {"polluted": True}, "type": "x"})
    r = shared_page.evaluate(
        """(h) => {
          const v = pm.decodeCbor(t.unhex(h));
          return {own: Object.keys(v), protoIsObject: Object.getPrototypeOf(v) === Object.prototype,
                  polluted: ({}).polluted === true || v.polluted === true,
                  again: t.hex(pm.encodeCbor(v))};
        }""",
        data.hex(),
    )
    assert r == {
        "own": ["type", "__proto__"],  # canonical order: shorter key first
        "protoIsObject": True,
        "polluted": False,
        "again": data.hex(),
    }


# --- property tests against cbor2 -----------------------------------------------------------------
KEYS = st.text(max_size=8).filter(lambda k: k not in ("$bytes", "$bigint"))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.integers(min_value=-1000, max_value=1000)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
CTX_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64[0], max_value=INT64[1])
    | st.text(max_size=12)
)
CTX_VALUES = st.recursive(
    CTX_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
CONTEXTS = st.builds(
    lambda t, rest: {**rest, "type": t},
    st.from_regex(r"[a-z0-9_.-]{1,64}", fullmatch=True),
    st.dictionaries(KEYS, CTX_VALUES, max_size=6),
).filter(lambda c: depth(c) <= 8)

BATCH = st.lists(VALUES, min_size=10, max_size=10)
PROPERTY_SETTINGS = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY_SETTINGS
@given(values=BATCH)
def test_encode_matches_cbor2_canonical_and_decodes_back(
    shared_page: Any, values: list[Any]
) -> None:
    expected = [canonical(v).hex() for v in values]
    assert shared_page.evaluate(ENCODE_BATCH, [to_js(v) for v in values]) == expected
    decoded = shared_page.evaluate(ROUNDTRIP_BATCH, expected)
    assert [from_js(d["value"]) for d in decoded] == values
    assert [d["again"] for d in decoded] == expected


@PROPERTY_SETTINGS
@given(
    contexts=st.lists(CONTEXTS, min_size=10, max_size=10),
    iat=st.integers(min_value=0, max_value=2**40),
    nonce=st.binary(min_size=16, max_size=64),
)
def test_intent_bytes_digest_and_proof_id_match_python(
    shared_page: Any, contexts: list[dict[str, Any]], iat: int, nonce: bytes
) -> None:
    got = shared_page.evaluate(
        """async ({contexts, iat, nonce}) => Promise.all(contexts.map(async (c) => {
          const ctx = t.revive(c);
          const ctxHex = t.hex(pm.validateContext(ctx));
          const {intentBytes} = pm.buildIntent({ctx, aud: "bank.example", sub: "alice", iat,
                                                ttl: 120, nonce: t.unhex(nonce)});
          const digest = await pm.intentDigest(intentBytes);
          const decoded = pm.decodeIntent(intentBytes);
          return {ctx: ctxHex, intent: t.hex(intentBytes), digest: t.hex(digest),
                  id: pm.proofId(digest), decoded: t.dehydrate(decoded)};
        }))""",
        {"contexts": [to_js(c) for c in contexts], "iat": iat, "nonce": nonce.hex()},
    )
    for ctx, result in zip(contexts, got, strict=True):
        intent = {
            "v": 1,
            "ctx": ctx,
            "aud": "bank.example",
            "sub": "alice",
            "iat": iat,
            "exp": iat + 120,
        }
        intent["nonce"] = nonce
        intent_bytes = canonical(intent)
        digest = hashlib.sha256(DOMAIN + intent_bytes).digest()
        assert result["ctx"] == canonical(ctx).hex()
        assert result["intent"] == intent_bytes.hex()
        assert result["digest"] == digest.hex()
        assert result["id"] == b64u(digest)
        assert from_js(result["decoded"]) == intent


def _python_decode(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", pm_cbor.decode(data, strict=True)
    except ProofError as exc:
        return exc.code, None


MUTATIONS = st.lists(
    st.tuples(
        VALUES, st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.booleans()
    ),
    min_size=20,
    max_size=20,
)


@PROPERTY_SETTINGS
@given(cases=MUTATIONS)
def test_decoder_agrees_with_the_python_decoder_on_mutated_input(
    shared_page: Any, cases: list[tuple[Any, int, int, bool]]
) -> None:
    """Differential check: corrupt one byte (or cut the tail) of a valid encoding; the JS decoder
    must accept exactly what the Python decoder accepts, and reject with the same code."""
    inputs: list[bytes] = []
    for value, pos, byte, truncate in cases:
        buf = bytearray(canonical(value))
        i = pos % len(buf)
        if truncate:
            del buf[i:]
        else:
            buf[i] = byte
        inputs.append(bytes(buf))
    results = shared_page.evaluate(DECODE_ERRORS, [d.hex() for d in inputs])
    for data, result in zip(inputs, results, strict=True):
        code, value = _python_decode(data)
        if code == "ok":
            assert result["ok"], (data.hex(), result)
            assert from_js(result["value"]) == value, data.hex()
        else:
            assert result.get("code") == code, (data.hex(), code, result)


# --- context rules (§1) ---------------------------------------------------------------------------
def test_validate_context_rejects_each_rule_with_code_and_path(shared_page: Any) -> None:
    results = shared_page.evaluate(
        """() => {
          const deep = (n) => (n === 0 ? 1 : {x: deep(n - 1)});
          const cases = {
            float: {type: "pay", amount: 1.5},
            nan: {type: "pay", amount: NaN},
            infinity: {type: "pay", items: [Infinity]},
            unsafe: {type: "pay", amount: 2 ** 53},
            bigint_over: {type: "pay", amount: 2n ** 63n},
            bigint_under: {type: "pay", amount: -(2n ** 63n) - 1n},
            bytes: {type: "pay", blob: new Uint8Array(2)},
            undef: {type: "pay", x: undefined},
            date: {type: "pay", when: new Date(0)},
            surrogate_value: {type: "pay", memo: "a\\uD800"},
            surrogate_key: {type: "pay", ["k\\uDC00"]: 1},
            map_int_key: new Map([["type", "pay"], [1, 2]]),
            missing_type: {amount: 1},
            empty_type: {type: ""},
            upper_type: {type: "Wire"},
            long_type: {type: "a".repeat(65)},
            int_type: {type: 7},
            too_deep: {type: "pay", a: deep(8)},
            too_big: {type: "pay", memo: "x".repeat(8192)},
            not_a_map: ["type", "pay"],
          };
          const out = {};
          for (const [name, ctx] of Object.entries(cases)) {
            try { pm.validateContext(ctx); out[name] = {ok: true}; }
            catch (e) {
              out[name] = {code: e.code, path: e.path, message: e.message,
                           isPm: e instanceof pm.ProofMessengerError};
            }
          }
          out.ok_depth_8 = t.hex(pm.validateContext({type: "pay", a: deep(7)}));
          out.ok_bigint = t.hex(pm.validateContext({type: "pay", a: 2n ** 63n - 1n,
                                                    b: -(2n ** 63n)}));
          const map = new Map([["type", "pay"], ["amount_minor", 1250000]]);
          out.ok_map = t.hex(pm.validateContext(map));
          try {
            pm.validateContext({type: "pay", a: {b: 1}}, {maxDepth: 1});
            out.small_limit = "ok";
          } catch (e) { out.small_limit = e.path; }
          return out;
        }"""
    )
    expected_paths: dict[str, str | None] = {
        "float": "ctx.amount",
        "nan": "ctx.amount",
        "infinity": "ctx.items[0]",
        "unsafe": "ctx.amount",
        "bigint_over": "ctx.amount",
        "bigint_under": "ctx.amount",
        "bytes": "ctx.blob",
        "undef": "ctx.x",
        "date": "ctx.when",
        "surrogate_value": "ctx.memo",
        "surrogate_key": None,  # the path holds the lone surrogate itself; not comparable here
        "map_int_key": "ctx",
        "missing_type": "ctx.type",
        "empty_type": "ctx.type",
        "upper_type": "ctx.type",
        "long_type": "ctx.type",
        "int_type": "ctx.type",
        "too_deep": "ctx.a.x.x.x.x.x.x.x",
        "too_big": "ctx",
        "not_a_map": "ctx",
    }
    for name, path in expected_paths.items():
        r = results[name]
        assert r.get("code") == "invalid_context", (name, r)
        assert r["isPm"], name
        if path is not None:
            assert r["path"] == path, (name, r)
            assert r["message"].startswith(path + ": "), (name, r)
    assert results["float"]["message"].startswith("ctx.amount: floats are not allowed")
    assert results["ok_depth_8"] == canonical({"type": "pay", "a": _deep(7)}).hex()
    assert results["ok_bigint"] == canonical({"type": "pay", "a": 2**63 - 1, "b": -(2**63)}).hex()
    assert results["ok_map"] == canonical({"type": "pay", "amount_minor": 1250000}).hex()
    assert results["small_limit"] == "ctx.a"


def _deep(n: int) -> Any:
    return 1 if n == 0 else {"x": _deep(n - 1)}


def test_encoder_refuses_floats_and_foreign_types(shared_page: Any) -> None:
    results = shared_page.evaluate(
        """() => [1.5, NaN, -Infinity, 2 ** 60, 2n ** 64n, -(2n ** 64n) - 1n, undefined, () => 1,
                 Symbol("s"), new Date(0), new Uint16Array(2), "\\uDFFF", [0.1], {a: {b: 0.5}}]
          .map((v) => {
            try { pm.encodeCbor(v); return null; } catch (e) { return [e.code, e.message]; }
          })"""
    )
    assert all(r is not None and r[0] == "invalid_argument" for r in results), results
    assert results[0][1] == "value: floats are not allowed"
    assert results[13][1] == "value.a.b: floats are not allowed"


def test_build_intent_defaults_and_argument_checks(page: Any) -> None:
    r = page.evaluate(
        """async () => {
          const before = Math.floor(Date.now() / 1000);
          const {intent, intentBytes} = pm.buildIntent({ctx: {type: "pay"}, aud: "a", sub: "s"});
          const after = Math.floor(Date.now() / 1000);
          const bad = (opts) => {
          try { pm.buildIntent(opts); return null } catch (e) { return `${e.code} ${e.message}`; }
          };
          const base = {ctx: {type: "pay"}, aud: "a", sub: "s"};
          return {
            inWindow: intent.iat >= before && intent.iat <= after,
            ttl: intent.exp - intent.iat, nonceLen: intent.nonce.length, hex: t.hex(intentBytes),
            intent: t.dehydrate(intent),
            shortNonce: bad({...base, nonce: new Uint8Array(15)}),
            longNonce: bad({...base, nonce: new Uint8Array(65)}),
            zeroTtl: bad({...base, ttl: 0}),
            noAud: bad({...base, aud: undefined}),
            badCtx: bad({...base, ctx: {type: "pay", f: 0.5}}),
          };
        }"""
    )
    assert r["inWindow"] and r["ttl"] == 300 and r["nonceLen"] == 32
    assert r["hex"] == canonical(from_js(r["intent"])).hex()
    assert r["shortNonce"] == "malformed_intent nonce: must be 16-64 bytes"
    assert r["longNonce"] == "malformed_intent nonce: must be 16-64 bytes"
    assert r["zeroTtl"].startswith("invalid_argument ttl:")
    assert r["noAud"] == "malformed_intent aud: must be a text string"
    assert r["badCtx"].startswith("invalid_context ctx.f: floats are not allowed")


def test_base64url_is_unpadded_and_strict(shared_page: Any) -> None:
    samples = [b"", b"\x00", b"\xff\xfe", b"\xfb\xff\xbf", bytes(range(256))]
    r = shared_page.evaluate(
        """(hexes) => ({
          enc: hexes.map((h) => pm.base64urlEncode(t.unhex(h))),
          dec: hexes.map((h) => t.hex(pm.base64urlDecode(pm.base64urlEncode(t.unhex(h))))),
          bad: ["AA==", "A", "AB", "a+b/", "AA AA"].map((s) => {
            try { pm.base64urlDecode(s); return "ok"; } catch (e) { return e.code; }
          }),
        })""",
        [s.hex() for s in samples],
    )
    assert r["enc"] == [b64u(s) for s in samples]
    assert r["dec"] == [s.hex() for s in samples]
    assert (
        r["bad"] == ["invalid_argument"] * 5
    )  # padding, bad length, trailing bits, alphabet, space


# --- device keys ----------------------------------------------------------------------------------
SIGN_WITH_NEW_KEY = """async ({name, ctx}) => {
  const key = await pm.createDeviceKey({keyName: name});
  const {intentBytes} = pm.buildIntent({ctx: t.revive(ctx), aud: "bank.example", sub: "alice"});
  const env = await pm.signIntentWithDeviceKey(key, intentBytes);
  return {env, kid: key.kid, spki: t.hex(key.spki), json: pm.envelopeToJson(env),
          cbor: t.hex(pm.envelopeToCbor(env)), extractable: key.privateKey.extractable,
          usages: key.privateKey.usages};
}"""


def test_device_key_signature_verifies_in_python(page: Any) -> None:
    ctx = {"type": "wire_transfer", "amount_minor": 1_250_000, "currency": "EUR", "to": "ACME"}
    r = page.evaluate(SIGN_WITH_NEW_KEY, {"name": f"k-{uuid.uuid4()}", "ctx": ctx})
    env = r["env"]
    assert set(env) == {"v", "alg", "kid", "intent", "sig", "public_key"}
    assert env["v"] == 1 and env["alg"] == "ES256"
    spki = unb64u(env["public_key"])
    assert spki.hex() == r["spki"]
    assert env["kid"] == r["kid"] == b64u(hashlib.sha256(spki).digest())
    intent_bytes = unb64u(env["intent"])
    assert cbor2.loads(intent_bytes)["ctx"] == ctx
    sig = unb64u(env["sig"])
    verify_es256(spki, DOMAIN + intent_bytes, sig)
    with pytest.raises(InvalidSignature):  # the domain prefix is part of what is signed
        verify_es256(spki, intent_bytes, sig)
    with pytest.raises(InvalidSignature):
        verify_es256(spki, DOMAIN + intent_bytes[:-1] + bytes([intent_bytes[-1] ^ 1]), sig)
    # JSON and CBOR envelope forms
    assert json.loads(r["json"]) == env
    assert list(json.loads(r["json"])) == ["v", "alg", "kid", "intent", "sig", "public_key"]
    as_bytes = {
        k: (unb64u(v) if k in ("intent", "sig", "public_key") else v) for k, v in env.items()
    }
    assert r["cbor"] == canonical(as_bytes).hex()
    assert r["extractable"] is False
    assert r["usages"] == ["sign"]
    # and the project's own verifier accepts both forms
    public_key = serialization.load_der_public_key(spki)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    verifier = Verifier(
        VerifierSettings(audience="bank.example"), single_key_resolver(public_key, sub="alice")
    )
    assert (
        verifier.verify(r["json"]).proof_id
        == verifier.verify(bytes.fromhex(r["cbor"]), cbor=True).proof_id
    )


def test_device_key_private_key_cannot_be_exported(page: Any) -> None:
    r = page.evaluate(
        """async (name) => {
          const key = await pm.createDeviceKey({keyName: name});
          const out = {};
          for (const format of ["pkcs8", "jwk"]) {
            try { await crypto.subtle.exportKey(format, key.privateKey); out[format] = "exported"; }
            catch (e) { out[format] = e.name; }
          }
          const stored = await pm.loadDeviceKey(name);
          try {
            await crypto.subtle.exportKey("pkcs8", stored.privateKey);
            out.stored = "exported";
          } catch (e) { out.stored = e.name; }
          return out;
        }""",
        f"k-{uuid.uuid4()}",
    )
    assert r == {
        "pkcs8": "InvalidAccessError",
        "jwk": "InvalidAccessError",
        "stored": "InvalidAccessError",
    }


def test_device_key_persists_across_reload(page: Any) -> None:
    name = f"k-{uuid.uuid4()}"
    first = page.evaluate(SIGN_WITH_NEW_KEY, {"name": name, "ctx": {"type": "login"}})
    page.reload()
    page.wait_for_function("window.pmReady === true")
    r = page.evaluate(
        """async (name) => {
          const key = await pm.loadDeviceKey(name);
          const {intentBytes} = pm.buildIntent({ctx: {type: "pay", n: 2}, aud: "bank.example",
                                                sub: "alice"});
          const env = await pm.signIntentWithDeviceKey(key, intentBytes);
          const dup = await t.attempt(() => pm.createDeviceKey({keyName: name}));
          const missing = await t.attempt(() => pm.loadDeviceKey(name + "-nope"));
          await pm.deleteDeviceKey(name);
          const gone = await t.attempt(() => pm.loadDeviceKey(name));
          return {env, kid: key.kid, dup: dup.code, missing: missing.code, gone: gone.code};
        }""",
        name,
    )
    assert r["kid"] == first["kid"] == r["env"]["kid"]
    assert r["env"]["public_key"] == first["env"]["public_key"]
    verify_es256(
        unb64u(r["env"]["public_key"]), DOMAIN + unb64u(r["env"]["intent"]), unb64u(r["env"]["sig"])
    )
    assert (r["dup"], r["missing"], r["gone"]) == ("key_exists", "key_not_found", "key_not_found")


# --- passkeys -------------------------------------------------------------------------------------
def test_passkey_registration_and_intent_assertion(
    localhost_context_page: tuple[Any, Any], static_port: int
) -> None:
    import webauthn
    from webauthn.helpers import decode_credential_public_key
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.decode_credential_public_key import DecodedEC2PublicKey
    from webauthn.helpers.structs import (
        AuthenticatorSelectionCriteria,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    context, page = localhost_context_page
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    origin = f"http://localhost:{static_port}"
    options = webauthn.generate_registration_options(
        rp_id="localhost",
        rp_name="Proof-Messenger test",
        user_name="alice",
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
    )
    registration = page.evaluate("(o) => pm.registerPasskey(o)", webauthn.options_to_json(options))
    assert registration["type"] == "public-key"
    assert registration["rawId"] == registration["id"]
    verified = webauthn.verify_registration_response(
        credential=json.dumps(registration),
        expected_challenge=options.challenge,
        expected_rp_id="localhost",
        expected_origin=origin,
        require_user_verification=True,
    )
    credential_id = verified.credential_id
    assert registration["rawId"] == b64u(credential_id)

    r = page.evaluate(
        """async (credentialId) => {
          const ctx = {type: "wire_transfer", amount_minor: 1250000};
          const {intentBytes} = pm.buildIntent({ctx, aud: "localhost", sub: "alice"});
          const env = await pm.signIntentWithPasskey({intentBytes, credentialId,
                                                      rpId: "localhost",
                                                      userVerification: "required"});
          const digest = await pm.intentDigest(intentBytes);
          return {env, digest: t.hex(digest), cbor: t.hex(pm.envelopeToCbor(env)),
                  json: pm.envelopeToJson(env)};
        }""",
        b64u(credential_id),
    )
    env = r["env"]
    assert set(env) == {
        "v",
        "alg",
        "kid",
        "intent",
        "sig",
        "authenticator_data",
        "client_data_json",
    }
    assert env["v"] == 1 and env["alg"] == "webauthn.ES256"
    assert env["kid"] == b64u(credential_id)
    intent_bytes = unb64u(env["intent"])
    digest = hashlib.sha256(DOMAIN + intent_bytes).digest()
    assert r["digest"] == digest.hex()

    client_data_raw = unb64u(env["client_data_json"])
    client_data = json.loads(client_data_raw)
    assert client_data["type"] == "webauthn.get"
    assert client_data["challenge"] == b64u(digest)
    assert client_data["origin"] == origin

    auth_data = unb64u(env["authenticator_data"])
    assert auth_data[:32] == hashlib.sha256(b"localhost").digest()  # rpIdHash = SHA-256(aud)
    assert auth_data[32] & 0x01 and auth_data[32] & 0x04  # UP and UV

    cose = decode_credential_public_key(verified.credential_public_key)
    # py_webauthn offers EdDSA first; registerPasskey asks for the protocol's ES256 only
    assert isinstance(cose, DecodedEC2PublicKey)
    assert cose.alg == COSEAlgorithmIdentifier.ECDSA_SHA_256
    public_key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(cose.x, "big"), int.from_bytes(cose.y, "big"), ec.SECP256R1()
    ).public_key()
    signed = auth_data + hashlib.sha256(client_data_raw).digest()
    public_key.verify(unb64u(env["sig"]), signed, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public_key.verify(
            unb64u(env["sig"]), signed[:-1] + bytes([signed[-1] ^ 1]), ec.ECDSA(hashes.SHA256())
        )

    # py_webauthn agrees, with the intent digest as the expected challenge
    webauthn.verify_authentication_response(
        credential={
            "id": env["kid"],
            "rawId": env["kid"],
            "type": "public-key",
            "response": {
                "clientDataJSON": env["client_data_json"],
                "authenticatorData": env["authenticator_data"],
                "signature": env["sig"],
            },
        },
        expected_challenge=digest,
        expected_rp_id="localhost",
        expected_origin=origin,
        credential_public_key=verified.credential_public_key,
        credential_current_sign_count=0,
        require_user_verification=True,
    )
    # the project's own verifier accepts the passkey proof in both forms
    verifier = Verifier(
        VerifierSettings(
            audience="localhost",
            webauthn_origins=frozenset({origin}),
            require_user_verification=True,
        ),
        lambda kid: (
            ResolvedKey(
                kid=kid,
                alg=ALG_WEBAUTHN_ES256,
                public_key=public_key,
                public_key_der=public_key.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                sub="alice",
            )
            if kid == b64u(credential_id)
            else None
        ),
    )
    accepted = verifier.verify(r["json"])
    assert accepted.user_verified and accepted.proof_id == b64u(digest)
    assert verifier.verify(bytes.fromhex(r["cbor"]), cbor=True).proof_id == accepted.proof_id
    assert json.loads(r["json"]) == env
    byte_fields = ("intent", "sig", "authenticator_data", "client_data_json")
    as_bytes = {k: (unb64u(v) if k in byte_fields else v) for k, v in env.items()}
    assert r["cbor"] == canonical(as_bytes).hex()

    # a cancelled / impossible ceremony surfaces as a coded error, not a bare DOMException
    failure = page.evaluate(
        """async () => {
          const {intentBytes} = pm.buildIntent({ctx: {type: "pay"}, aud: "localhost",
                                                sub: "alice"});
          return t.attempt(() => pm.signIntentWithPasskey({intentBytes, rpId: "localhost",
              credentialId: new Uint8Array(16), timeout: 5000}));
        }"""
    )
    assert failure["ok"] is False and failure["code"] == "webauthn_failed"
    wrong_rp = page.evaluate(
        """async () => {
          const {intentBytes} = pm.buildIntent({ctx: {type: "pay"}, aud: "bank.example",
                                                sub: "alice"});
          return t.attempt(() => pm.signIntentWithPasskey({intentBytes, rpId: "localhost"}));
        }"""
    )
    assert wrong_rp["ok"] is False and wrong_rp["code"] == "invalid_argument"

    no_es256 = json.loads(webauthn.options_to_json(options))
    no_es256["pubKeyCredParams"] = [{"type": "public-key", "alg": -8}]
    refused = page.evaluate("(o) => t.attempt(() => pm.registerPasskey(o))", no_es256)
    assert refused["ok"] is False and refused["code"] == "invalid_argument"
