"""Deterministic CBOR: RFC 8949 Appendix A, and every rejection rule of the strict decoder."""

from __future__ import annotations

from typing import Any

import pytest

from proof_messenger.protocol import cbor
from proof_messenger.protocol.envelope import Proof
from proof_messenger.protocol.errors import MalformedIntent, MalformedProof, NonCanonicalEncoding
from tests.conftest import load_json, shared_vector

APPENDIX_A: list[dict[str, Any]] = load_json(shared_vector("cbor", "appendix_a.json"))
_OUTSIDE = object()  # marker: the item is outside our data model


def _model_value(entry: dict[str, Any]) -> Any:
    """The entry's value in our model, or ``_OUTSIDE`` (floats, tags, undefined, simple
    values, non-text map keys, integers beyond [-2^63, 2^64-1])."""
    first = int(entry["hex"][:2], 16)
    if first >> 5 == 6:  # tagged, including the bignums 2^64 and -2^64-1
        return _OUTSIDE
    if "decoded" in entry:
        value = entry["decoded"]
        if isinstance(value, float):
            return _OUTSIDE
        if isinstance(value, int) and not isinstance(value, bool) and value < -(2**63):
            return _OUTSIDE
        return value
    diag: str = entry["diagnostic"]
    if diag.startswith("h'"):
        return bytes.fromhex(diag[2:-1])
    if diag == "(_ h'0102', h'030405')":
        return b"\x01\x02\x03\x04\x05"
    # Infinity, NaN, undefined, simple(n), {1: 2, 3: 4}
    return _OUTSIDE


IN_MODEL = [e for e in APPENDIX_A if _model_value(e) is not _OUTSIDE]
CANONICAL = [e for e in IN_MODEL if e["roundtrip"]]
NON_PREFERRED = [e for e in IN_MODEL if not e["roundtrip"]]
OUTSIDE = [e for e in APPENDIX_A if _model_value(e) is _OUTSIDE]


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["hex"][:24] for e in entries]


def test_classification_covers_the_whole_appendix() -> None:
    assert len(APPENDIX_A) == 82
    assert (len(CANONICAL), len(NON_PREFERRED), len(OUTSIDE)) == (35, 11, 36)


@pytest.mark.parametrize("entry", CANONICAL, ids=_ids(CANONICAL))
def test_in_model_examples_encode_to_the_listed_bytes(entry: dict[str, Any]) -> None:
    value = _model_value(entry)
    data = bytes.fromhex(entry["hex"])
    assert cbor.encode(value) == data
    assert cbor.decode(data) == value
    # the strict parser on its own agrees with the fast path
    parser = cbor._Parser(data, True, MalformedIntent)
    assert parser.item(0, "") == value and parser.pos == len(data)


@pytest.mark.parametrize("entry", NON_PREFERRED, ids=_ids(NON_PREFERRED))
def test_non_preferred_forms_are_non_canonical(entry: dict[str, Any]) -> None:
    data = bytes.fromhex(entry["hex"])
    with pytest.raises(NonCanonicalEncoding):
        cbor.decode(data)
    # ... and the preferred form of the same value is what we would have produced
    assert cbor.decode(cbor.encode(_model_value(entry))) == _model_value(entry)


@pytest.mark.parametrize("entry", OUTSIDE, ids=_ids(OUTSIDE))
def test_items_outside_the_model_are_malformed(entry: dict[str, Any]) -> None:
    data = bytes.fromhex(entry["hex"])
    with pytest.raises(MalformedIntent):
        cbor.decode(data)
    with pytest.raises(MalformedIntent):
        cbor.decode(data, strict=False)


def test_floats_are_named_in_the_message() -> None:
    with pytest.raises(MalformedIntent, match="floats are not allowed"):
        cbor.decode(bytes.fromhex("a16161f93c00"))  # {"a": 1.0}


def test_map_keys_sort_bytewise_not_alphabetically() -> None:
    # "b" (61 62) sorts before "aa" (62 61 61): shorter encodings first for text keys.
    assert cbor.encode({"aa": 2, "b": 1}).hex() == "a2616201626161" + "02"
    assert cbor.decode(bytes.fromhex("a2 6162 01 626161 02")) == {"b": 1, "aa": 2}
    with pytest.raises(NonCanonicalEncoding, match="deterministic order"):
        cbor.decode(bytes.fromhex("a2 626161 02 6162 01"))


@pytest.mark.parametrize(
    ("hex_", "message"),
    [
        ("", "truncated"),
        ("1a0000", "truncated"),
        ("62 61", "truncated"),
        ("83 01 02", "truncated"),
        ("a1 6161", "truncated"),
        ("9b ffffffffffffffff", "truncated"),
        ("01 00", "trailing byte"),
        ("ff", "break code"),
        ("1c", "reserved additional information"),
        ("1f", "additional information 31"),
        ("62 c3 28", "invalid UTF-8"),
        ("63 ed a0 80", "invalid UTF-8"),  # a UTF-8-encoded lone surrogate
        ("a1 01 02", "map keys must be text"),
        ("a1 41 61 01", "map keys must be text"),
        ("3b 8000000000000000", r"below -2\^63"),
        ("c1 00", "tags are not allowed"),
        ("f7", "undefined"),
        ("f0", "simple values"),
        ("f8 20", "simple values"),
        ("fa 3f800000", "floats"),
    ],
)
def test_malformed(hex_: str, message: str) -> None:
    data = bytes.fromhex(hex_.replace(" ", ""))
    with pytest.raises(MalformedIntent, match=message):
        cbor.decode(data)


@pytest.mark.parametrize(
    ("hex_", "message"),
    [
        ("18 17", "shortest form"),  # 23 in one extra byte
        ("19 00ff", "shortest form"),
        ("1a 0000ffff", "shortest form"),
        ("1b 00000000ffffffff", "shortest form"),
        ("38 00", "shortest form"),  # -1 in one extra byte
        ("78 01 61", "shortest form"),  # a text length in one extra byte
        ("a1 61 61 5f ff", "indefinite"),
        ("a2 6161 01 6161 02", "duplicate map key"),
        ("a2 6162 01 6161 02", "deterministic order"),
    ],
)
def test_non_canonical(hex_: str, message: str) -> None:
    data = bytes.fromhex(hex_.replace(" ", ""))
    with pytest.raises(NonCanonicalEncoding, match=message):
        cbor.decode(data)


def test_nesting_is_bounded() -> None:
    deep = b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(MalformedIntent, match="nesting deeper"):
        cbor.decode(deep)
    ok = b"\x81" * cbor.MAX_DEPTH + b"\x00"
    assert cbor.decode(ok) is not None
    # hostile depth far beyond the stack never becomes a RecursionError
    with pytest.raises(MalformedIntent):
        cbor.decode(b"\x81" * 100_000)


def test_integer_range_of_the_model() -> None:
    assert cbor.decode(bytes.fromhex("1bffffffffffffffff")) == 2**64 - 1
    assert cbor.decode(bytes.fromhex("3b7fffffffffffffff")) == -(2**63)


def test_lax_mode_accepts_any_order_and_width_but_not_duplicates() -> None:
    """Envelopes are framing, not signed bytes: key order and head width are free there."""
    assert cbor.decode(bytes.fromhex("a2616201616100"), strict=False) == {"b": 1, "a": 0}
    assert cbor.decode(bytes.fromhex("1a00000001"), strict=False) == 1


def test_envelope_framing_errors_are_malformed_proof_not_non_canonical() -> None:
    """Regression: duplicate keys and indefinite lengths in a CBOR *envelope* used to be
    reported as ``non_canonical_encoding`` (a check-2 code about signed intent bytes)."""
    duplicate = bytes.fromhex("a2 6176 01 6176 01".replace(" ", ""))
    with pytest.raises(MalformedProof, match="v: duplicate map key") as info:
        Proof.from_cbor(duplicate)
    assert info.value.code == "malformed_proof"
    indefinite = bytes.fromhex("bf 6176 01 ff".replace(" ", ""))
    with pytest.raises(MalformedProof, match="envelope: indefinite-length item"):
        Proof.from_cbor(indefinite)
    with pytest.raises(MalformedProof, match="envelope: CBOR tags"):
        Proof.from_cbor(bytes.fromhex("c0 a0".replace(" ", "")))


def test_encode_rejects_nothing_we_decode() -> None:
    value = {"ctx": {"l": [1, -1, "x", b"\x00", None, True, False, {}]}, "n": 2**64 - 1}
    data = cbor.encode(value)
    assert cbor.decode(data) == value
