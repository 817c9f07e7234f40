"""Differential tests: every hot-path shortcut gives exactly the answer of the plain rule.

Each fast path in the protocol core (base64url, the JSON envelope, the canonical-CBOR
check, the context walk) is compared with a straightforward reference on random and
mutated input: same value, or the same error class with the same message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proof_messenger.protocol import (
    ALG_WEBAUTHN_ES256,
    ContextLimits,
    InvalidContext,
    MalformedIntent,
    MalformedProof,
    Proof,
    cbor,
    context,
    envelope,
)
from proof_messenger.protocol.encoding import b64u_decode, b64u_encode
from proof_messenger.protocol.envelope import DEFAULT_ENVELOPE_LIMITS

from .helpers import make_proof

_B64U = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the class and message are what we compare
        return (type(exc).__name__, str(exc))


# --- base64url -----------------------------------------------------------------------------------
def reference_b64u_decode(text: str) -> bytes:
    """The rule as first written: regex, length, decode, and re-encode to compare."""
    if not isinstance(text, str) or _B64U.fullmatch(text) is None:
        raise ValueError("not unpadded base64url")
    if len(text) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards this
        raise ValueError("not unpadded base64url") from exc
    if b64u_encode(data) != text:
        raise ValueError("non-canonical base64url (trailing bits set)")
    return data


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n\t.é\x00\ud800"
b64_like = st.text(alphabet=_B64_CHARS, max_size=40) | st.binary(max_size=40).map(
    lambda b: b64u_encode(b)
)


@given(b64_like | st.text(max_size=20))
def test_b64u_decode_matches_the_reference(text: str) -> None:
    assert _outcome(b64u_decode, text) == _outcome(reference_b64u_decode, text)


@given(st.binary(max_size=64), st.integers(0, 63))
def test_b64u_any_other_last_character_is_refused(data: bytes, sextet: int) -> None:
    text = b64u_encode(data)
    if not text:
        return
    other = text[:-1] + _ALPHABET[sextet]
    assert _outcome(b64u_decode, other) == _outcome(reference_b64u_decode, other)
    if other != text:
        assert _outcome(b64u_decode, other)[1] != data


def test_b64u_every_last_character_at_every_length_matches_the_reference() -> None:
    """Exhaustive over the spare bits: 64 last characters after 0-3 full groups plus 0-3."""
    for prefix in ("", "QUJD", "QUJDREVG"):
        for middle in ("", "Q", "QU", "QUJ"):
            for last in _ALPHABET + "=+/ ":
                text = prefix + middle + last
                assert _outcome(b64u_decode, text) == _outcome(reference_b64u_decode, text), text


def test_b64u_decode_refuses_non_text() -> None:
    for value in (b"AAAA", None, 5):
        assert _outcome(b64u_decode, value) == ("ValueError", "not unpadded base64url")


# --- the JSON envelope ---------------------------------------------------------------------------
_VALID = make_proof()
_VALID_FIELDS: dict[str, Any] = _VALID.to_json_dict()
_WEBAUTHN_FIELDS: dict[str, Any] = {
    **_VALID_FIELDS,
    "alg": ALG_WEBAUTHN_ES256,
    "sig": b64u_encode(bytes(70)),
    "authenticator_data": b64u_encode(bytes(37)),
    "client_data_json": b64u_encode(b'{"type":"webauthn.get"}'),
}
_FIELD_NAMES = [*_WEBAUTHN_FIELDS, "extra", "V", "kid "]


def strict_from_json(data: bytes | str) -> Proof:
    """The envelope by the strict path alone: stdlib decoder with hooks, then _from_map."""
    if len(data) > DEFAULT_ENVELOPE_LIMITS.max_envelope_bytes:
        raise MalformedProof("envelope exceeds the size limit")
    value = envelope._strict_json(data)
    return Proof._from_map(value, text_bytes=True, limits=DEFAULT_ENVELOPE_LIMITS)


def _json_object(pairs: list[tuple[str, Any]], spacing: str, escape: bool) -> str:
    """A JSON object from pairs (duplicates kept, as a hostile client could send them)."""
    dump = partial(json.dumps, ensure_ascii=escape)
    sep = spacing + ":" + spacing
    return "{" + ",".join(dump(k) + sep + dump(v) for k, v in pairs) + "}"


_SAMPLE_VALUES: list[Any] = [
    *{json.dumps(v): v for v in _WEBAUTHN_FIELDS.values()}.values(),
    *(1, 2, 0, -1, 2**64, 1.0, True, False, None, "1", "", "A", "AB", "é", "\ud800", [1], {}),
    *("ES256", "es256", "none", b64u_encode(bytes(64)) + "=", b64u_encode(bytes(81))),
]
json_values = st.sampled_from(_SAMPLE_VALUES) | st.text(alphabet=_B64_CHARS, max_size=30)


def _one_edit(base: dict[str, Any], op: str, key: str, value: Any) -> list[tuple[str, Any]]:
    """``base`` with one change: a field set, dropped, or sent twice."""
    pairs = list(base.items())
    if op == "set":
        return [(k, value if k == key else v) for k, v in pairs] + (
            [] if key in base else [(key, value)]
        )
    if op == "drop":
        return [(k, v) for k, v in pairs if k != key]
    return [*pairs, (key, value)]  # "dup" (or "add" for a key not in base)


_BASES = [_VALID_FIELDS, _WEBAUTHN_FIELDS]
_OPS = ["set", "drop", "dup"]


def test_json_envelope_fast_path_matches_the_strict_path_on_every_single_edit() -> None:
    """Exhaustive: each base envelope, each field name, each sample value, each edit."""
    for base in _BASES:
        for op in _OPS:
            for key in _FIELD_NAMES:
                for value in _SAMPLE_VALUES if op != "drop" else [None]:
                    for spacing in ("", " "):
                        text = _json_object(_one_edit(base, op, key, value), spacing, False)
                        data = text.encode("utf-8", "surrogatepass")
                        fast = _outcome(Proof.from_json, data)
                        assert fast == _outcome(strict_from_json, data), text
                        assert fast == _outcome(Proof.from_json, text), text


pair_lists = st.lists(
    st.tuples(st.sampled_from(_FIELD_NAMES), json_values), max_size=10
) | st.builds(
    lambda base, edits: _edited(base, edits),
    st.sampled_from(_BASES),
    st.lists(
        st.tuples(st.sampled_from(_OPS), st.sampled_from(_FIELD_NAMES), json_values), max_size=3
    ),
)


def _edited(base: dict[str, Any], edits: list[tuple[str, str, Any]]) -> list[tuple[str, Any]]:
    pairs = list(base.items())
    for op, key, value in edits:
        pairs = _one_edit(dict(pairs), op, key, value) if op != "dup" else [*pairs, (key, value)]
    return pairs


@given(pair_lists, st.sampled_from(["", " ", "\n\t"]), st.booleans(), st.booleans())
def test_json_envelope_fast_path_matches_the_strict_path(
    pairs: list[tuple[str, Any]], spacing: str, escape: bool, as_bytes: bool
) -> None:
    text = _json_object(pairs, spacing, escape)
    data: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert _outcome(Proof.from_json, data) == _outcome(strict_from_json, data)


@given(
    st.sampled_from([_VALID_FIELDS, _WEBAUTHN_FIELDS]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_json_envelope_fast_path_matches_the_strict_path_on_mutated_bytes(
    fields: dict[str, Any], edits: list[tuple[int, int]]
) -> None:
    data = bytearray(json.dumps(fields).encode())
    for position, byte in edits:
        data[position % len(data)] = byte
    assert _outcome(Proof.from_json, bytes(data)) == _outcome(strict_from_json, bytes(data))


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_json_envelope_fast_path_matches_the_strict_path_on_noise(data: str | bytes) -> None:
    assert _outcome(Proof.from_json, data) == _outcome(strict_from_json, data)


def test_json_envelope_duplicate_keys_never_take_the_fast_path() -> None:
    """msgspec keeps the last duplicate; the quote count must send these to the strict path."""
    good = json.dumps(_VALID_FIELDS)
    for key in _VALID_FIELDS:
        value = json.dumps(_VALID_FIELDS[key])
        twice = good[:-1] + f', "{key}": {value}}}'
        assert envelope._fast_from_json(twice, DEFAULT_ENVELOPE_LIMITS) is None
        assert _outcome(Proof.from_json, twice) == ("MalformedProof", _duplicate_message(key))
    escaped = good[:-1] + ', "\\u0076": 1}'  # "v" again, spelt with an escape
    assert envelope._fast_from_json(escaped, DEFAULT_ENVELOPE_LIMITS) is None
    with pytest.raises(MalformedProof, match="duplicate key 'v'"):
        Proof.from_json(escaped)


def _duplicate_message(key: str) -> str:
    return f"envelope is not valid JSON: duplicate key {key!r}"


def test_honest_envelopes_take_the_fast_path() -> None:
    """The shortcut must actually be used for what clients send (compact or spaced)."""
    for fields in (_VALID_FIELDS, _WEBAUTHN_FIELDS):
        for text in (json.dumps(fields), json.dumps(fields, separators=(",", ":"))):
            fast = envelope._fast_from_json(text.encode(), DEFAULT_ENVELOPE_LIMITS)
            assert fast is not None and fast == strict_from_json(text)


# --- canonical CBOR ------------------------------------------------------------------------------
def _strict_decode(data: bytes) -> Any:
    parser = cbor._Parser(data, True, MalformedIntent)
    value = parser.item(0, "")
    if parser.pos != len(data):
        raise MalformedIntent("trailing")
    return value


def _cbor_map(pairs: list[tuple[str, Any]]) -> bytes:
    """A map of fewer than 24 pairs, in the given order (maybe not the deterministic one)."""
    assert len(pairs) < 24
    return bytes([0xA0 | len(pairs)]) + b"".join(cbor.encode(k) + cbor.encode(v) for k, v in pairs)


_KEYS = ["a", "b", "ab", "é", "z", "zz", "éa", "aé", "€", "𝄞", "", "ba"]


@given(st.lists(st.sampled_from(_KEYS), max_size=5), st.integers(0, 3))
def test_cbor_key_order_fast_path_matches_the_strict_decoder(keys: list[str], nest: int) -> None:
    """Key order by UTF-8 length first: "é" (2 bytes) sorts after "z" and with "ab"."""
    data = _cbor_map([(k, i) for i, k in enumerate(keys)])
    for _ in range(nest):
        data = b"\x81" + data  # inside arrays, too
    fast = cbor._fast_path(data)
    strict = _outcome(_strict_decode, data)
    if fast is cbor._MISS:
        assert strict[0] != "ok" or len(set(keys)) < len(keys), data.hex()
    else:
        assert strict == ("ok", fast)
    assert _outcome(cbor.decode, data) == strict


def test_cbor_every_pair_of_keys_in_both_orders() -> None:
    for first in _KEYS:
        for second in _KEYS:
            data = _cbor_map([(first, 1), (second, 2)])
            strict = _outcome(_strict_decode, data)
            assert _outcome(cbor.decode, data) == strict, (first, second)
            assert (cbor._fast_path(data) is not cbor._MISS) == (strict[0] == "ok")


def test_cbor_depth_bound_is_the_same_on_both_paths() -> None:
    for depth in range(cbor.MAX_DEPTH - 2, cbor.MAX_DEPTH + 3):
        for leaf in (b"\x80", b"\x01", b"\xa0"):
            data = b"\x81" * depth + leaf
            strict = _outcome(_strict_decode, data)
            assert _outcome(cbor.decode, data) == strict, (depth, leaf)
            assert (cbor._fast_path(data) is not cbor._MISS) == (strict[0] == "ok")


# --- context rules -------------------------------------------------------------------------------
context_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=5)
    | st.sampled_from(["\ud800", "ok\udfff", 1.5, b"x", (1, 2), 2**63, -(2**63) - 1, 2**63 - 1])
)
context_trees = st.recursive(
    context_leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(0, 2), inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=20,
)


def reference_check_shape(ctx: Any, limits: ContextLimits) -> None:
    """The context shape rules as first written: always the path-building walk."""
    if not isinstance(ctx, Mapping):
        raise InvalidContext(f"ctx: must be a map, not {context._kind(ctx)}")
    context._check(ctx, "ctx", 1, limits.max_depth)
    kind = ctx.get("type")
    if kind is None:
        raise InvalidContext("ctx.type: required key is missing")
    if not isinstance(kind, str) or context.TYPE_PATTERN.fullmatch(kind) is None:
        raise InvalidContext("ctx.type: must be 1-64 characters of [a-z0-9_.-]")


@given(
    st.dictionaries(st.text(max_size=4) | st.just("type"), context_trees, max_size=4),
    st.integers(1, 4),
)
def test_context_fast_walk_matches_the_checking_walk(ctx: dict[str, Any], max_depth: int) -> None:
    limits = ContextLimits(max_depth=max_depth)
    expected = _outcome(reference_check_shape, ctx, limits)
    assert _outcome(context._check_shape, ctx, limits) == expected
    if context._plainly_valid(ctx, max_depth):
        assert _outcome(context._check, ctx, "ctx", 1, max_depth) == ("ok", None)


def test_context_depth_bound_is_the_same_on_both_walks() -> None:
    for max_depth in (1, 2, 8):
        for depth in range(1, max_depth + 3):
            for inner in ([], {}, [1], {"k": 1}):
                ctx: Any = inner
                for _ in range(depth - 1):
                    ctx = {"k": ctx}
                ctx = {"type": "t", "n": ctx}
                slow = _outcome(context._check, ctx, "ctx", 1, max_depth)
                assert context._plainly_valid(ctx, max_depth) == (slow[0] == "ok")


_EDGE_LEAVES: list[Any] = [
    *(None, True, False, 0, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64),
    *("", "x", "é", "\ud800", "a\udfff", 1.5, float("nan"), b"x", bytearray(b"x"), (1,), ()),
    *({}, [], {1: "x"}, {"k": 2**63}, ["\ud800"], object()),
]


def test_context_every_edge_leaf_at_every_position() -> None:
    for leaf in _EDGE_LEAVES:
        for ctx in (
            {"type": "t", "x": leaf},
            {"type": "t", "x": [leaf]},
            {"type": "t", "x": {"y": [1, leaf]}},
            {"type": leaf},
        ):
            limits = ContextLimits()
            expected = _outcome(reference_check_shape, ctx, limits)
            assert _outcome(context._check_shape, ctx, limits) == expected, ctx
