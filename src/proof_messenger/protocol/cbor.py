"""Deterministic CBOR (RFC 8949 §4.2.1) for the protocol's data model.

Encoding uses cbor2's canonical mode. cbor2 sorts map keys length-first (RFC 8949
§4.2.3); because every key in our model is a text string, the encoded keys share a
major type and a length-first order is exactly the bytewise order §4.2.1 asks for
(the committed vectors and the tests check this rather than assume it).

Decoding is hand-written because no library decoder rejects everything a verifier
must reject: cbor2 silently accepts trailing bytes, keeps the last of duplicate keys,
and accepts non-shortest heads and indefinite lengths. The decoder below accepts only
the model (unsigned/negative integers, byte and text strings, arrays, maps with text
keys, false/true/null) in its one deterministic form:

* structurally broken input, trailing bytes, invalid UTF-8, tags, floats, undefined
  and other simple values -> :class:`MalformedIntent`;
* well-formed CBOR in a non-deterministic form (a non-shortest head, an indefinite
  length, unsorted or duplicate map keys) -> :class:`NonCanonicalEncoding`.

A fast path decodes with cbor2's C decoder and accepts when the value is inside the
model, its maps' keys are in deterministic order and re-encoding reproduces the input
exactly; any doubt falls through to the strict decoder, which is the one that names
the problem.
"""

from __future__ import annotations

from typing import Any

import cbor2

from .errors import MalformedIntent, NonCanonicalEncoding, ProofError

__all__ = ["MAX_DEPTH", "decode", "encode"]

#: Hard bound on nesting while parsing, above any context limit, so hostile input can
#: never exhaust the stack. Context limits (§1) are enforced separately.
MAX_DEPTH = 32
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def encode(value: Any) -> bytes:
    """Deterministic CBOR of a value already known to be inside the model."""
    return cbor2.dumps(value, canonical=True)


def decode(
    data: bytes,
    *,
    strict: bool = True,
    error: type[ProofError] = MalformedIntent,
    root: str = "intent",
) -> Any:
    """Decode one CBOR item that must span all of ``data``.

    With ``strict`` (intents), the input must be the deterministic encoding. Without
    it (proof envelopes, which are transport framing, not signed bytes), key order and
    head length are free, but duplicates, indefinite lengths and everything outside
    the model are still refused - all as ``error``, since "non-canonical" is a
    statement about signed bytes only. ``error`` is the class for malformed input;
    ``root`` names the top-level item in messages.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error("expected bytes")
    data = bytes(data)
    if strict:
        fast = _fast_path(data)
        if fast is not _MISS:
            return fast
    parser = _Parser(data, strict, error, root)
    value = parser.item(0, "")
    if parser.pos != len(data):
        raise error(f"{len(data) - parser.pos} trailing byte(s) after the CBOR item")
    return value


_MISS = object()


def _fast_path(data: bytes) -> Any:
    """The decoded value when ``data`` is deterministic CBOR inside the model, else _MISS.

    cbor2's plain encoder always writes shortest heads and definite lengths and keeps
    a dict's order, so ``dumps(loads(data)) == data`` proves everything deterministic
    encoding asks for except key order (a duplicate key shrinks the output), and
    :func:`_in_model` checks the order on the way. This avoids canonical mode, which
    re-sorts every map and costs several times more.
    """
    try:
        value = cbor2.loads(data)
    except Exception:
        return _MISS
    if not _in_model(value):
        return _MISS
    try:
        if cbor2.dumps(value) != data:
            return _MISS
    except Exception:
        return _MISS
    return value


def _in_model(value: Any) -> bool:
    """Inside the model, at most MAX_DEPTH deep, every map's keys in deterministic order.

    Deterministic order of text keys is by UTF-8 length, then bytewise; code point order
    of valid text is the bytewise order of its UTF-8. One loop over an explicit stack,
    leaves checked inline: a call per value would cost more than the checks themselves.
    """
    stack: list[tuple[Any, int]] = [([value], -1)]
    pop = stack.pop
    push = stack.append
    while stack:
        container, depth = pop()
        if depth >= MAX_DEPTH and container:
            return False  # its items would sit deeper than MAX_DEPTH
        if type(container) is dict:
            previous = ""
            previous_size = -1
            items: Any = container.values()
            for key in container:
                if type(key) is not str:
                    return False
                size = len(key) if key.isascii() else len(key.encode("utf-8"))
                if size < previous_size or (size == previous_size and key <= previous):
                    return False
                previous, previous_size = key, size
        else:
            items = container
        for item in items:
            t = type(item)
            if t is str or t is bytes or t is bool or item is None:
                continue
            if t is int:
                if _INT_MIN <= item <= _INT_MAX:
                    continue
                return False
            if t is dict or t is list:
                push((item, depth + 1))
                continue
            return False
    return True


class _Parser:
    __slots__ = ("data", "error", "noncanonical", "pos", "root", "strict")

    def __init__(
        self, data: bytes, strict: bool, error: type[ProofError], root: str = "intent"
    ) -> None:
        self.data = data
        self.pos = 0
        self.strict = strict
        self.error = error
        self.root = root
        #: Well-formed but non-deterministic CBOR is "non-canonical" only where the
        #: encoding is signed (strict mode); elsewhere it is plain malformed input.
        self.noncanonical: type[ProofError] = NonCanonicalEncoding if strict else error

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.error("truncated CBOR")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _head(self, path: str) -> tuple[int, int, int]:
        """Return (major type, argument, additional info); enforce shortest form."""
        start = self.pos
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info == 31:
            if major in (2, 3, 4, 5):
                raise self.noncanonical(f"{path or self.root}: indefinite-length item")
            if major == 7:
                raise self.error(f"{path or self.root}: unexpected break code")
            raise self.error(f"{path or self.root}: invalid additional information 31")
        if info > 27:
            raise self.error(f"{path or self.root}: reserved additional information {info}")
        if major == 7:
            # floats (25-27) and one-byte simple values (24)
            kind = "floats are not allowed" if info >= 25 else "simple values are not allowed"
            raise self.error(f"{path or self.root}: {kind}")
        size = 1 << (info - 24)
        arg = int.from_bytes(self._take(size), "big")
        if self.strict:
            minimum = {1: 24, 2: 0x100, 4: 0x10000, 8: 0x100000000}[size]
            if arg < minimum:
                raise NonCanonicalEncoding(
                    f"{path or self.root}: integer or length not in shortest form (at byte {start})"
                )
        return major, arg, info

    def item(self, depth: int, path: str) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(f"{path or self.root}: nesting deeper than {MAX_DEPTH}")
        major, arg, info = self._head(path)
        if major == 0:
            return arg
        if major == 1:
            value = -1 - arg
            if value < _INT_MIN:
                raise self.error(f"{path or self.root}: integer below -2^63")
            return value
        if major == 2:
            return self._take(arg)
        if major == 3:
            raw = self._take(arg)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.error(f"{path or self.root}: invalid UTF-8 in text string") from exc
        if major == 4:
            if arg > len(self.data) - self.pos:
                raise self.error("truncated CBOR")
            return [self.item(depth + 1, f"{path}[{i}]") for i in range(arg)]
        if major == 5:
            return self._map(arg, depth, path)
        if major == 6:
            raise self.error(f"{path or self.root}: CBOR tags are not allowed")
        # major 7 with info < 24: simple values
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            raise self.error(f"{path or self.root}: undefined is not allowed")
        raise self.error(f"{path or self.root}: simple values are not allowed")

    def _map(self, count: int, depth: int, path: str) -> dict[str, Any]:
        if count > (len(self.data) - self.pos) // 2:
            raise self.error("truncated CBOR")
        result: dict[str, Any] = {}
        previous: bytes | None = None
        for _ in range(count):
            key_start = self.pos
            major, _arg, _info = self._peek_major()
            if major != 3:
                raise self.error(f"{path or self.root}: map keys must be text strings")
            key = self.item(depth + 1, path)
            key_bytes = self.data[key_start : self.pos]
            where = f"{path}.{key}" if path else key
            if key in result:
                raise self.noncanonical(f"{where}: duplicate map key")
            if self.strict and previous is not None and key_bytes <= previous:
                raise NonCanonicalEncoding(f"{where}: map keys are not in deterministic order")
            previous = key_bytes
            result[key] = self.item(depth + 1, where)
        return result

    def _peek_major(self) -> tuple[int, int, int]:
        if self.pos >= len(self.data):
            raise self.error("truncated CBOR")
        initial = self.data[self.pos]
        return initial >> 5, 0, initial & 0x1F
