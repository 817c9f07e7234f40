"""Transaction-context rules (protocol §1).

A context is what the person approves, so every value must have exactly one
meaning: text, integers in [-2^63, 2^63-1], booleans, null, arrays and maps with
text keys. Floats are refused because 0.1 + 0.2 is not an amount of money; amounts
are integers in minor units (``amount_minor``) or decimal strings.

Depth counts containers: the context map itself is depth 1, a map or array inside
it depth 2, and so on; the default limit is 8. Size is the length of the context's
deterministic CBOR encoding; the default limit is 8 KiB.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import cbor
from .errors import InvalidContext

__all__ = [
    "DEFAULT_LIMITS",
    "TYPE_PATTERN",
    "ContextLimits",
    "check_context",
    "to_plain",
    "validate_context",
]

TYPE_PATTERN = re.compile(r"[a-z0-9_.\-]{1,64}")
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ContextLimits:
    max_depth: int = 8
    max_bytes: int = 8192

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= cbor.MAX_DEPTH - 2:
            raise ValueError(f"max_depth must be between 1 and {cbor.MAX_DEPTH - 2}")
        if self.max_bytes < 16:
            raise ValueError("max_bytes must be at least 16")


DEFAULT_LIMITS = ContextLimits()


def validate_context(ctx: Any, limits: ContextLimits = DEFAULT_LIMITS) -> bytes:
    """Check ``ctx`` against §1 and return its deterministic encoding.

    Raises :class:`InvalidContext` whose message starts with the path of the
    offending value, e.g. ``ctx.recipient.iban: floats are not allowed``.
    """
    check_context(ctx, limits)
    encoded = cbor.encode(to_plain(ctx))
    _check_size(len(encoded), limits)
    return encoded


def check_context(
    ctx: Any, limits: ContextLimits = DEFAULT_LIMITS, *, encoded_size_at_most: int | None = None
) -> None:
    """Check ``ctx`` against §1 without keeping its encoding.

    ``encoded_size_at_most`` is a known upper bound on the size of its deterministic
    encoding (a context decoded from N bytes of deterministic CBOR encodes in fewer than
    N); when it is within the limit, the context is not re-encoded just to be measured.
    """
    _check_shape(ctx, limits)
    if encoded_size_at_most is None or encoded_size_at_most > limits.max_bytes:
        _check_size(len(cbor.encode(to_plain(ctx))), limits)


def _check_size(size: int, limits: ContextLimits) -> None:
    if size > limits.max_bytes:
        raise InvalidContext(
            f"ctx: encoded size {size} bytes exceeds the limit of {limits.max_bytes}"
        )


def _check_shape(ctx: Any, limits: ContextLimits) -> None:
    if type(ctx) is not dict and not isinstance(ctx, Mapping):
        raise InvalidContext(f"ctx: must be a map, not {_kind(ctx)}")
    if not _plainly_valid(ctx, limits.max_depth):
        _check(ctx, "ctx", 1, limits.max_depth)
    kind = ctx.get("type")
    if kind is None:
        raise InvalidContext("ctx.type: required key is missing")
    if not isinstance(kind, str) or TYPE_PATTERN.fullmatch(kind) is None:
        raise InvalidContext("ctx.type: must be 1-64 characters of [a-z0-9_.-]")


def _plainly_valid(ctx: Any, max_depth: int) -> bool:
    """True when ``_check`` would find nothing wrong with ``ctx``, judged without paths.

    The common case (plain dicts, lists, text, integers) in one loop over an explicit
    stack, with no call and no path string per value. ``False`` means "not sure": then
    :func:`_check` walks again, builds the paths and raises the first error (or accepts
    a Mapping or tuple that is merely not a plain dict or list).
    """
    stack: list[tuple[Any, int]] = [(ctx, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        container, depth = pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return False
            items: Any = container.values()
        elif type(container) is list:
            items = container
        else:
            return False
        for item in items:
            t = type(item)
            if t is str:
                if not item.isascii():
                    try:
                        item.encode("utf-8")
                    except UnicodeEncodeError:
                        return False
                continue
            if t is int:
                if _INT_MIN <= item <= _INT_MAX:
                    continue
                return False
            if t is bool or item is None:
                continue
            if (t is dict or t is list) and depth < max_depth:
                push((item, depth + 1))
                continue
            return False
    return True


def _check(value: Any, path: str, depth: int, max_depth: int) -> None:
    # Exact leaf types first: an ABC isinstance check costs more than the rule itself.
    t = type(value)
    if t is str:
        _check_text(value, path)
        return
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidContext(f"{path}: integer outside [-2^63, 2^63-1]")
        return
    if t is bool or value is None:
        return
    if isinstance(value, Mapping):
        if depth > max_depth:
            raise InvalidContext(f"{path}: nesting deeper than {max_depth}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidContext(f"{path}: map keys must be text, not {_kind(key)}")
            _check(item, f"{path}.{key}", depth + 1, max_depth)
    elif isinstance(value, list | tuple):
        if depth > max_depth:
            raise InvalidContext(f"{path}: nesting deeper than {max_depth}")
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1, max_depth)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidContext(f"{path}: integer outside [-2^63, 2^63-1]")
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float):
        raise InvalidContext(
            f"{path}: floats are not allowed (use integer minor units or a decimal string)"
        )
    else:
        raise InvalidContext(f"{path}: {_kind(value)} values are not allowed")


def _check_text(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidContext(f"{path}: text is not valid Unicode (lone surrogate)") from exc


def to_plain(value: Any) -> Any:
    """Normalise tuples and Mapping subclasses so cbor2 encodes them as arrays and maps."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "byte string"
    return type(value).__name__
