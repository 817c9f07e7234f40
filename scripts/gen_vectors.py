#!/usr/bin/env python3
"""Generate tests/vectors/protocol-v1.json: the bytes every implementation must reproduce.

Keys are derived from fixed scalars and signatures use RFC 6979 deterministic nonces,
so running this again yields the identical file (a test checks that). Other SDKs and
the browser module are held to these bytes.

    python scripts/gen_vectors.py            # rewrite the file
    python scripts/gen_vectors.py --check    # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proof_messenger.protocol import cbor
from proof_messenger.protocol.envelope import Proof
from proof_messenger.protocol.intent import DOMAIN, Intent, digest, proof_id, signed_bytes
from proof_messenger.protocol.keys import (
    P256_ORDER,
    PrivateKey,
    kid_for,
    public_key_der,
    sign_es256,
)

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "protocol-v1.json"
AUD = "payments.example.com"
NOW = 1_764_000_000  # 2025-11-24T16:00:00Z: fixed, so the file never changes


def fixed_key(name: str) -> PrivateKey:
    scalar = int.from_bytes(hashlib.sha256(b"proof-messenger test key " + name.encode()).digest())
    return ec.derive_private_key(scalar % (P256_ORDER - 1) + 1, ec.SECP256R1())


KEYS = {name: fixed_key(name) for name in ("alice", "bob")}


def nonce(label: str, size: int = 32) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"nonce {label} {counter}".encode()).digest()
        counter += 1
    return out[:size]


def key_entry(name: str, key: PrivateKey) -> dict[str, Any]:
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    numbers = key.private_numbers()
    pub = numbers.public_numbers
    return {
        "name": name,
        "private_pkcs8_der_hex": pkcs8.hex(),
        "private_scalar_hex": f"{numbers.private_value:064x}",
        "public_spki_der_hex": public_key_der(key).hex(),
        "public_x_hex": f"{pub.x:064x}",
        "public_y_hex": f"{pub.y:064x}",
        "kid": kid_for(key),
    }


def envelope(key_name: str, intent_bytes: bytes, *, include_public_key: bool = True) -> Proof:
    key = KEYS[key_name]
    return Proof(
        alg="ES256",
        kid=kid_for(key),
        intent=intent_bytes,
        sig=sign_es256(key, signed_bytes(intent_bytes)),
        public_key=public_key_der(key) if include_public_key else None,
    )


def intent_json(intent: Intent) -> dict[str, Any]:
    m = intent.to_map()
    m["nonce_hex"] = m.pop("nonce").hex()
    return m


POSITIVE: list[tuple[str, str, dict[str, Any], str, int, int, bytes]] = [
    (
        "wire-transfer",
        "alice",
        {
            "type": "wire_transfer",
            "amount_minor": 1250000,
            "currency": "EUR",
            "recipient": {"name": "ACME GmbH", "iban": "DE89370400440532013000"},
            "invoice": "881",
        },
        "alice",
        NOW,
        NOW + 300,
        nonce("wire-transfer"),
    ),
    (
        "all-value-kinds",
        "alice",
        {
            "type": "demo.kinds",
            "zero": 0,
            "small": 23,
            "one_byte": 24,
            "two_bytes": 256,
            "four_bytes": 65536,
            "eight_bytes": 4294967296,
            "max_int": 2**63 - 1,
            "min_int": -(2**63),
            "negative": -500,
            "yes": True,
            "no": False,
            "nothing": None,
            "empty_text": "",
            "unicode": "Zürich — 東京 — \U0001f4b6",
            "list": [1, "two", [3, {"four": 4}], None],
            "empty_list": [],
            "empty_map": {},
        },
        "alice",
        NOW,
        NOW + 60,
        nonce("all-value-kinds"),
    ),
    (
        "key-order",
        "bob",
        {
            # deterministic order is bytewise on the encoded keys: shorter first,
            # then by UTF-8 bytes ("z" < "é" because 0x7a < 0xc3)
            "type": "key_order",
            "b": 1,
            "a": 2,
            "aa": 3,
            "z": 4,
            "é": 5,
            "A": 6,
            "ab": 7,
            "a_very_long_key_name_over_twenty_three_chars": 8,
        },
        "bob",
        NOW,
        NOW + 120,
        nonce("key-order"),
    ),
    (
        "nonce-16",
        "bob",
        {"type": "login.step_up"},
        "bob",
        NOW,
        NOW + 30,
        nonce("nonce-16", 16),
    ),
    (
        "nonce-64-deep",
        "alice",
        {
            "type": "payroll.batch",
            # the context map is depth 1, so l8's map is at depth 8: the limit
            "l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": {"leaf": "deepest allowed"}}}}}}},
        },
        "alice",
        NOW,
        NOW + 300,
        nonce("nonce-64-deep", 64),
    ),
]


def positive_vectors() -> list[dict[str, Any]]:
    out = []
    for name, key_name, ctx, sub, iat, exp, n in POSITIVE:
        intent = Intent(ctx=ctx, aud=AUD, sub=sub, iat=iat, exp=exp, nonce=n)
        intent.validate()
        ib = intent.to_bytes()
        env = envelope(key_name, ib)
        out.append(
            {
                "name": name,
                "key": key_name,
                "intent": intent_json(intent),
                "intent_cbor_hex": ib.hex(),
                "signed_bytes_hex": signed_bytes(ib).hex(),
                "digest_hex": digest(ib).hex(),
                "proof_id": proof_id(digest(ib)),
                "signature_hex": env.sig.hex(),
                "envelope_json": env.to_json_dict(),
                "envelope_cbor_hex": env.to_cbor().hex(),
            }
        )
    return out


def _base_intent(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "v": 1,
        "ctx": {"type": "wire_transfer", "amount_minor": 1000, "currency": "EUR"},
        "aud": AUD,
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 300,
        "nonce": nonce("negative"),
    }
    m.update(overrides)
    return m


def _enc(m: dict[str, Any]) -> bytes:
    return cbor.encode(m)


def _head(major: int, value: int, width: int) -> bytes:
    """A CBOR head with a forced argument width (for non-shortest encodings)."""
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([(major << 5) | info]) + value.to_bytes(width, "big")


def _text(s: str) -> bytes:
    return cbor.encode(s)


def _manual_map(items: list[tuple[str, bytes]], head: bytes | None = None) -> bytes:
    out = head if head is not None else bytes([0xA0 | len(items)])
    for key, encoded_value in items:
        out += _text(key) + encoded_value
    return out


def _items(m: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(k, cbor.encode(v)) for k, v in m.items()]


def _sorted_items(m: dict[str, Any]) -> list[tuple[str, bytes]]:
    return sorted(_items(m), key=lambda kv: _text(kv[0]))


def negative_vectors() -> list[dict[str, Any]]:
    base = _base_intent()
    registry_alice = [{"key": "alice", "sub": "alice", "status": "active"}]
    verifier = {"audience": AUD, "now": NOW + 10, "clock_skew": 60, "max_lifetime": 300}
    cases: list[dict[str, Any]] = []

    def add(
        name: str,
        expected: str,
        description: str,
        *,
        intent_bytes: bytes | None = None,
        env_json: dict[str, Any] | None = None,
        mutate: Callable[[dict[str, Any]], None] | None = None,
        registry: list[dict[str, Any]] | None = None,
        verifier_overrides: dict[str, Any] | None = None,
        key_name: str = "alice",
    ) -> None:
        if env_json is None:
            assert intent_bytes is not None
            env_json = envelope(key_name, intent_bytes).to_json_dict()
        if mutate is not None:
            mutate(env_json)
        cases.append(
            {
                "name": name,
                "description": description,
                "expected_error": expected,
                "envelope_json": env_json,
                "intent_cbor_hex": intent_bytes.hex() if intent_bytes is not None else None,
                "verifier": {**verifier, **(verifier_overrides or {})},
                "registry": registry if registry is not None else registry_alice,
            }
        )

    good = _enc(base)
    # --- check 1 -------------------------------------------------------------------------------
    add(
        "envelope-version-2",
        "unsupported_version",
        "envelope v is 2",
        intent_bytes=good,
        mutate=lambda e: e.update(v=2),
    )
    add(
        "envelope-alg-es384",
        "unsupported_algorithm",
        "alg is not ES256/webauthn.ES256",
        intent_bytes=good,
        mutate=lambda e: e.update(alg="ES384"),
    )
    add(
        "envelope-alg-none",
        "unsupported_algorithm",
        "alg 'none' is refused",
        intent_bytes=good,
        mutate=lambda e: e.update(alg="none"),
    )
    add(
        "envelope-sig-63-bytes",
        "malformed_proof",
        "ES256 signature is not 64 bytes",
        intent_bytes=good,
        mutate=lambda e: e.update(sig=e["sig"][:-2]),
    )
    add(
        "envelope-intent-padded-base64",
        "malformed_proof",
        "base64url with padding",
        intent_bytes=good,
        mutate=lambda e: e.update(intent=e["intent"] + "="),
    )
    add(
        "envelope-intent-std-base64",
        "malformed_proof",
        "standard base64 alphabet",
        intent_bytes=good,
        mutate=lambda e: e.update(intent=e["intent"].replace("_", "/") + "+"),
    )
    add(
        "envelope-unknown-field",
        "malformed_proof",
        "an unknown envelope field",
        intent_bytes=good,
        mutate=lambda e: e.update(extra="x"),
    )
    add(
        "envelope-missing-kid",
        "malformed_proof",
        "kid missing",
        intent_bytes=good,
        mutate=lambda e: e.pop("kid"),
    )
    add(
        "envelope-webauthn-fields-on-es256",
        "malformed_proof",
        "authenticator_data present on an ES256 proof",
        intent_bytes=good,
        mutate=lambda e: e.update(authenticator_data="AAAA"),
    )
    # --- check 2 -------------------------------------------------------------------------------
    unsorted = _manual_map(list(reversed(_sorted_items(base))))
    add(
        "intent-unsorted-keys",
        "non_canonical_encoding",
        "intent map keys not in bytewise order",
        intent_bytes=unsorted,
    )
    items = _sorted_items(base)
    non_shortest = _manual_map(
        [(k, _head(0, base["iat"], 8) if k == "iat" else v) for k, v in items]
    )
    add(
        "intent-non-shortest-int",
        "non_canonical_encoding",
        "iat encoded in 8 bytes",
        intent_bytes=non_shortest,
    )
    non_shortest_len = _manual_map(items, head=bytes([0xB8, len(items)]))
    add(
        "intent-non-shortest-map-length",
        "non_canonical_encoding",
        "map length in 1 extra byte",
        intent_bytes=non_shortest_len,
    )
    indefinite = bytes([0xBF]) + _manual_map(items)[1:] + b"\xff"
    add(
        "intent-indefinite-map",
        "non_canonical_encoding",
        "indefinite-length intent map",
        intent_bytes=indefinite,
    )
    dup_items = [*items[:1], *items]
    dup = _manual_map(dup_items, head=bytes([0xA0 | len(dup_items)]))
    add("intent-duplicate-key", "non_canonical_encoding", "the same key twice", intent_bytes=dup)
    add(
        "intent-trailing-byte",
        "malformed_intent",
        "one byte after the intent map",
        intent_bytes=good + b"\x00",
    )
    add("intent-truncated", "malformed_intent", "intent cut short", intent_bytes=good[:-1])
    tagged = _manual_map([(k, b"\xc1" + v if k == "iat" else v) for k, v in items])
    add("intent-tag", "malformed_intent", "iat wrapped in tag 1 (epoch time)", intent_bytes=tagged)
    ctx_items = _sorted_items(base["ctx"])
    float_ctx = _manual_map(
        [
            (k, bytes.fromhex("fb408f440000000000") if k == "amount_minor" else v)
            for k, v in ctx_items
        ]
    )
    with_float = _manual_map([(k, float_ctx if k == "ctx" else v) for k, v in items])
    add(
        "intent-float-in-context",
        "malformed_intent",
        "amount_minor is a float (1000.5)",
        intent_bytes=with_float,
    )
    add(
        "intent-missing-nonce",
        "malformed_intent",
        "no nonce key",
        intent_bytes=_enc({k: v for k, v in base.items() if k != "nonce"}),
    )
    add(
        "intent-extra-key",
        "malformed_intent",
        "an extra top-level key",
        intent_bytes=_enc({**base, "memo": "x"}),
    )
    add(
        "intent-nonce-15-bytes",
        "malformed_intent",
        "nonce shorter than 16 bytes",
        intent_bytes=_enc({**base, "nonce": nonce("short", 15)}),
    )
    add(
        "intent-exp-not-after-iat",
        "malformed_intent",
        "exp equals iat",
        intent_bytes=_enc({**base, "exp": NOW}),
    )
    add(
        "intent-version-2",
        "unsupported_version",
        "intent v is 2",
        intent_bytes=_enc({**base, "v": 2}),
    )
    add(
        "context-missing-type",
        "invalid_context",
        "ctx has no type",
        intent_bytes=_enc({**base, "ctx": {"amount_minor": 1}}),
    )
    add(
        "context-bad-type",
        "invalid_context",
        "ctx.type has capitals and a space",
        intent_bytes=_enc({**base, "ctx": {"type": "Wire Transfer"}}),
    )
    deep: dict[str, Any] = {"leaf": "too deep"}
    for level in range(9, 1, -1):
        deep = {f"l{level}": deep}
    add(
        "context-depth-9",
        "invalid_context",
        "nesting depth 9 > 8",
        intent_bytes=_enc({**base, "ctx": {"type": "deep", **deep}}),
    )
    add(
        "context-bytes-value",
        "invalid_context",
        "a byte string inside the context",
        intent_bytes=_enc({**base, "ctx": {"type": "x", "blob": b"\x00"}}),
    )
    add(
        "context-too-large",
        "invalid_context",
        "encoded context over 8 KiB",
        intent_bytes=_enc({**base, "ctx": {"type": "x", "memo": "m" * 8200}}),
    )
    # --- check 3 -------------------------------------------------------------------------------
    add(
        "wrong-audience",
        "wrong_audience",
        "intent for another relying party",
        intent_bytes=_enc({**base, "aud": "evil.example.com"}),
    )
    # --- check 4 -------------------------------------------------------------------------------
    add(
        "not-yet-valid",
        "not_yet_valid",
        "iat beyond now + skew",
        intent_bytes=_enc({**base, "iat": NOW + 200, "exp": NOW + 400}),
    )
    add(
        "expired",
        "expired",
        "exp before now - skew",
        intent_bytes=good,
        verifier_overrides={"now": NOW + 300 + 61},
    )
    add(
        "lifetime-too-long",
        "lifetime_too_long",
        "exp - iat = 301 > 300",
        intent_bytes=_enc({**base, "exp": NOW + 301}),
    )
    # --- check 5 -------------------------------------------------------------------------------
    add("unknown-key", "unknown_key", "kid not in the registry", intent_bytes=good, registry=[])
    add(
        "key-revoked",
        "key_revoked",
        "the key was revoked",
        intent_bytes=good,
        registry=[{"key": "alice", "sub": "alice", "status": "revoked"}],
    )
    add(
        "subject-mismatch",
        "subject_mismatch",
        "the key belongs to bob, the intent says alice",
        intent_bytes=good,
        registry=[{"key": "alice", "sub": "bob", "status": "active"}],
    )

    def substitute(e: dict[str, Any]) -> None:
        e["public_key"] = envelope("bob", good).to_json_dict()["public_key"]

    add(
        "public-key-substitution",
        "unknown_key",
        "envelope public_key differs from the registered key",
        intent_bytes=good,
        mutate=substitute,
    )

    # --- check 6 -------------------------------------------------------------------------------
    def flip_sig(e: dict[str, Any]) -> None:
        sig = bytearray(envelope("alice", good).sig)
        sig[10] ^= 0x01
        e["sig"] = Proof(alg="ES256", kid="k", intent=b"x", sig=bytes(sig)).to_json_dict()["sig"]

    add(
        "signature-bit-flip",
        "invalid_signature",
        "one bit of s flipped",
        intent_bytes=good,
        mutate=flip_sig,
    )
    other = _enc({**base, "ctx": {**base["ctx"], "amount_minor": 999999}})
    other_sig = envelope("alice", other).to_json_dict()["sig"]
    add(
        "signature-for-other-intent",
        "invalid_signature",
        "a valid signature over a different amount",
        intent_bytes=good,
        mutate=lambda e: e.update(sig=other_sig),
    )
    add(
        "signature-by-other-key",
        "invalid_signature",
        "signed by bob, kid says alice",
        intent_bytes=good,
        mutate=lambda e: e.update(sig=envelope("bob", good).to_json_dict()["sig"]),
    )
    return cases


def build() -> dict[str, Any]:
    return {
        "protocol": "proof-messenger/v1",
        "generated_by": "scripts/gen_vectors.py",
        "description": (
            "Fixed keys, intents, their deterministic CBOR, digests, RFC 6979 signatures "
            "and envelopes; negative cases name the protocol error code a verifier must "
            "return. Each negative case has exactly one defect. A verifier is configured "
            "with 'verifier' (audience, now, clock_skew, max_lifetime) and a key registry "
            "built from 'registry' (key name from 'keys', the subject it belongs to, status)."
        ),
        "domain_hex": DOMAIN.hex(),
        "keys": [key_entry(n, k) for n, k in KEYS.items()],
        "positive": positive_vectors(),
        "negative": negative_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run scripts/gen_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
