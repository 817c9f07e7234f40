"""Hypothesis properties of the encoding, the strict decoder and the verifier."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proof_messenger.protocol import (
    Intent,
    MalformedIntent,
    NonCanonicalEncoding,
    Proof,
    ProofError,
    cbor,
)
from proof_messenger.protocol.keys import P256_ORDER

from .helpers import make_proof, verifier

# --- strategies ----------------------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
model_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
context_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20)
)
contexts = st.builds(
    lambda extra, kind: {**extra, "type": kind},
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            context_scalars,
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=6), inner, max_size=4)
            ),
            max_leaves=12,
        ),
        max_size=5,
    ),
    st.from_regex(r"[a-z0-9_.\-]{1,64}", fullmatch=True),
)


def _near(data: bytes) -> st.SearchStrategy[bytes]:
    """Valid encodings with a few bytes changed: most of the interesting edge cases."""
    edits = st.lists(
        st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)), max_size=3
    )

    def apply(changes: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for position, byte in changes:
            out[position] = byte
        return bytes(out)

    return edits.map(apply)


def typed(value: Any) -> Any:
    """A view in which True != 1 and b"" != "" (plain == conflates them)."""
    if isinstance(value, dict):
        return ("map", sorted((k, typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", [typed(v) for v in value])
    return (type(value).__name__, value)


# --- a test-side encoder that can break determinism on purpose -----------------------------------
class Writer:
    """Encodes like RFC 8949 preferred serialization, except where told not to."""

    def __init__(self, widen_at: int | None = None, unsorted: bool = False) -> None:
        self.widen_at = widen_at
        self.unsorted = unsorted
        self.heads = 0  # heads whose argument can be widened
        self.widened = False
        self.reordered = False

    def head(self, major: int, arg: int) -> bytes:
        index = self.heads
        self.heads += 1
        size = (
            0 if arg < 24 else 1 if arg < 0x100 else 2 if arg < 0x10000 else 4 if arg < 2**32 else 8
        )
        if index == self.widen_at and size < 8:
            size = {0: 1, 1: 2, 2: 4, 4: 8}[size]
            self.widened = True
        if size == 0:
            return bytes([major << 5 | arg])
        info = {1: 24, 2: 25, 4: 26, 8: 27}[size]
        return bytes([major << 5 | info]) + arg.to_bytes(size, "big")

    def write(self, value: Any) -> bytes:
        if value is False or value is True or value is None:
            return {False: b"\xf4", True: b"\xf5", None: b"\xf6"}[value]
        if isinstance(value, int):
            return self.head(0, value) if value >= 0 else self.head(1, -1 - value)
        if isinstance(value, bytes):
            return self.head(2, len(value)) + value
        if isinstance(value, str):
            raw = value.encode()
            return self.head(3, len(raw)) + raw
        if isinstance(value, list):
            return self.head(4, len(value)) + b"".join(self.write(v) for v in value)
        keys = sorted(value, key=lambda k: cbor.encode(k))
        if self.unsorted and len(keys) >= 2:
            keys.reverse()
            self.reordered = True
        out = self.head(5, len(keys))
        for key in keys:
            out += self.write(key) + self.write(value[key])
        return out


# --- encode / decode -----------------------------------------------------------------------------
@given(model_values)
def test_round_trip_and_both_decoders_agree(value: Any) -> None:
    data = cbor.encode(value)
    assert typed(cbor.decode(data)) == typed(value)
    parser = cbor._Parser(data, True, MalformedIntent)
    assert typed(parser.item(0, "")) == typed(value) and parser.pos == len(data)
    assert typed(cbor._fast_path(data)) == typed(value)
    # lax mode (envelopes) decodes deterministic input identically
    assert typed(cbor.decode(data, strict=False)) == typed(value)


@given(model_values)
def test_our_writer_is_the_deterministic_encoding(value: Any) -> None:
    """Independent check of cbor2's canonical mode against a from-scratch encoder."""
    assert Writer().write(value) == cbor.encode(value)


@given(model_values, st.data())
def test_any_non_shortest_head_is_non_canonical(value: Any, data: st.DataObject) -> None:
    heads = Writer()
    heads.write(value)
    assume(heads.heads > 0)
    writer = Writer(widen_at=data.draw(st.integers(0, heads.heads - 1)))
    encoded = writer.write(value)
    assume(writer.widened)
    with pytest.raises(NonCanonicalEncoding):
        cbor.decode(encoded)
    assert typed(cbor.decode(encoded, strict=False)) == typed(value)


@given(model_values)
def test_any_map_key_reordering_is_non_canonical(value: Any) -> None:
    writer = Writer(unsorted=True)
    encoded = writer.write(value)
    assume(writer.reordered)
    with pytest.raises(NonCanonicalEncoding):
        cbor.decode(encoded)


@given(contexts, st.data())
def test_non_deterministic_intents_are_rejected(ctx: dict[str, Any], data: st.DataObject) -> None:
    intent = Intent.create(ctx, aud="rp.example", sub="u", nonce=bytes(16), now=1_700_000_000)
    mapping = intent.to_map()
    assert Intent.from_bytes(Writer().write(mapping)) == intent
    reordered = Writer(unsorted=True).write(mapping)  # the intent map itself has 7 keys
    with pytest.raises(NonCanonicalEncoding):
        Intent.from_bytes(reordered)
    count = Writer()
    count.write(mapping)
    widen = Writer(widen_at=data.draw(st.integers(0, count.heads - 1)))
    widened = widen.write(mapping)
    assume(widen.widened)  # an 8-byte argument has no longer form
    with pytest.raises(NonCanonicalEncoding):
        Intent.from_bytes(widened)


# --- fuzz: only protocol errors, never anything else --------------------------------------------
PARSERS = {
    "cbor.decode": cbor.decode,
    "cbor.decode(lax)": lambda d: cbor.decode(d, strict=False),
    "Proof.from_json": Proof.from_json,
    "Proof.from_cbor": Proof.from_cbor,
    "Intent.from_bytes": Intent.from_bytes,
}


@pytest.mark.parametrize("name", list(PARSERS))
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_protocol_errors(name: str, data: bytes) -> None:
    with contextlib.suppress(ProofError):
        PARSERS[name](data)


VALID = make_proof()


@pytest.mark.parametrize("name", list(PARSERS))
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_mutated_valid_inputs_only_raise_protocol_errors(
    name: str, edits: list[tuple[int, int]]
) -> None:
    base = {
        "Proof.from_json": VALID.to_json().encode(),
        "Proof.from_cbor": VALID.to_cbor(),
    }.get(name, VALID.intent)
    data = bytearray(base)
    for position, byte in edits:
        data[position % len(data)] = byte
    with contextlib.suppress(ProofError):
        PARSERS[name](bytes(data))


@given(st.text(max_size=200))
def test_random_json_text_only_raises_protocol_errors(text: str) -> None:
    with contextlib.suppress(ProofError):
        Proof.from_json(text)


# --- tampering and malleability ------------------------------------------------------------------
@given(st.integers(0, len(VALID.intent) * 8 - 1))
def test_any_bit_flip_of_the_intent_is_rejected(bit: int) -> None:
    data = bytearray(VALID.intent)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProofError):
        verifier().verify(dataclasses.replace(VALID, intent=bytes(data)))


@given(st.integers(0, 64 * 8 - 1))
def test_any_bit_flip_of_the_signature_is_invalid_signature(bit: int) -> None:
    sig = bytearray(VALID.sig)
    sig[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProofError) as info:
        verifier().verify(dataclasses.replace(VALID, sig=bytes(sig)))
    assert info.value.code == "invalid_signature"


def test_every_single_bit_flip_of_the_intent_is_rejected() -> None:
    """The exhaustive version of the property above (the intent is ~200 bytes)."""
    v = verifier()
    for bit in range(len(VALID.intent) * 8):
        data = bytearray(VALID.intent)
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProofError):
            v.verify(dataclasses.replace(VALID, intent=bytes(data)))


@given(contexts)
def test_high_s_twin_verifies_with_the_same_proof_id(ctx: dict[str, Any]) -> None:
    proof = make_proof(ctx=ctx)
    r, s = proof.sig[:32], int.from_bytes(proof.sig[32:])
    twin = dataclasses.replace(proof, sig=r + (P256_ORDER - s).to_bytes(32))
    assert twin.sig != proof.sig
    v = verifier()
    assert (
        v.verify(twin).proof_id
        == v.verify(proof).proof_id
        == Intent.from_bytes(proof.intent).proof_id()
    )


@given(st.binary(max_size=60) | model_values.map(cbor.encode).flatmap(_near))
def test_fast_path_never_accepts_what_the_strict_parser_refuses(data: bytes) -> None:
    fast = cbor._fast_path(data)
    try:
        parser = cbor._Parser(data, True, MalformedIntent)
        strict = parser.item(0, "")
        if parser.pos != len(data):
            raise MalformedIntent("trailing")
    except ProofError:
        assert fast is cbor._MISS, data.hex()
        return
    if fast is not cbor._MISS:
        assert typed(fast) == typed(strict)
