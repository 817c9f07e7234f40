"""Transaction-context rules (protocol §1): every value has exactly one meaning."""

from __future__ import annotations

from typing import Any

import pytest

from proof_messenger.protocol import ContextLimits, InvalidContext, cbor, validate_context


def _nest(depth: int, container: str = "map") -> dict[str, Any]:
    """A context whose deepest container is at ``depth`` (the context map is depth 1)."""
    inner: Any = 1
    for _ in range(depth - 1):
        inner = {"k": inner} if container == "map" else [inner]
    return {"type": "t", "deep": inner}


def test_valid_context_returns_its_deterministic_encoding() -> None:
    ctx = {"type": "wire_transfer", "amount_minor": 100, "memo": None, "ok": True, "l": [1, "a"]}
    assert validate_context(ctx) == cbor.encode(ctx)


@pytest.mark.parametrize(
    ("ctx", "message"),
    [
        ({"type": "t", "a": {"b": 1.5}}, r"^ctx\.a\.b: floats are not allowed"),
        ({"type": "t", "a": [1, 2.0]}, r"^ctx\.a\[1\]: floats are not allowed"),
        ({"type": "t", "a": {"b": b"\x00"}}, r"^ctx\.a\.b: byte string values are not allowed"),
        ({"type": "t", "a": {1: "x"}}, r"^ctx\.a: map keys must be text, not int"),
        ({"type": "t", "big": 2**63}, r"^ctx\.big: integer outside \[-2\^63, 2\^63-1\]"),
        ({"type": "t", "small": -(2**63) - 1}, r"^ctx\.small: integer outside"),
        ({"type": "t", "s": "\udcff"}, r"^ctx\.s: text is not valid Unicode"),
        ({"type": "t", "d": {1, 2}}, r"^ctx\.d: set values are not allowed"),
        ({"amount_minor": 1}, r"^ctx\.type: required key is missing"),
        ({"type": "Wire"}, r"^ctx\.type: must be 1-64 characters"),
        ({"type": ""}, r"^ctx\.type: must be 1-64 characters"),
        ({"type": "a" * 65}, r"^ctx\.type: must be 1-64 characters"),
        ({"type": "wire transfer"}, r"^ctx\.type: must be 1-64 characters"),
        ({"type": 7}, r"^ctx\.type: must be 1-64 characters"),
        ([("type", "t")], r"^ctx: must be a map, not list"),
    ],
)
def test_invalid_contexts_name_the_path(ctx: Any, message: str) -> None:
    with pytest.raises(InvalidContext, match=message) as info:
        validate_context(ctx)
    assert info.value.code == "invalid_context"


def test_integer_bounds_are_inclusive() -> None:
    validate_context({"type": "t", "a": 2**63 - 1, "b": -(2**63)})


def test_type_alphabet() -> None:
    validate_context({"type": "a" * 64})
    validate_context({"type": "payment.sepa-instant_v2"})


@pytest.mark.parametrize("container", ["map", "list"])
def test_depth_8_is_allowed_9_is_not(container: str) -> None:
    validate_context(_nest(8, container))
    with pytest.raises(InvalidContext, match="nesting deeper than 8"):
        validate_context(_nest(9, container))


def test_the_context_map_itself_is_depth_1() -> None:
    limits = ContextLimits(max_depth=1)
    validate_context({"type": "t", "a": 1}, limits)
    with pytest.raises(InvalidContext, match=r"ctx\.a: nesting deeper than 1"):
        validate_context({"type": "t", "a": {}}, limits)


def test_size_limit_is_on_the_encoded_context() -> None:
    # a2 | 64 "type" | 61 "t" | 61 "p" | 79 nnnn | n bytes  ->  13 + n bytes
    at_limit = {"type": "t", "p": "x" * (8192 - 13)}
    assert len(validate_context(at_limit)) == 8192
    with pytest.raises(InvalidContext, match="encoded size 8193 bytes exceeds the limit of 8192"):
        validate_context({"type": "t", "p": "x" * (8192 - 12)})


def test_custom_limits() -> None:
    with pytest.raises(InvalidContext, match="limit of 64"):
        validate_context({"type": "t", "p": "x" * 64}, ContextLimits(max_bytes=64))
    validate_context(_nest(12), ContextLimits(max_depth=12))


@pytest.mark.parametrize("kwargs", [{"max_depth": 0}, {"max_depth": 31}, {"max_bytes": 15}])
def test_limits_themselves_are_bounded(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ContextLimits(**kwargs)


def test_tuples_and_mapping_subclasses_encode_as_arrays_and_maps() -> None:
    from collections import OrderedDict

    ctx = OrderedDict([("type", "t"), ("pair", (1, 2))])
    assert validate_context(ctx) == cbor.encode({"type": "t", "pair": [1, 2]})
