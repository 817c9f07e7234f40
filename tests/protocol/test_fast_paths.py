"""Differential tests: every hot-path shortcut gives exactly the answer of the plain rule.

Each fast path in the protocol core (base64url, the JSON envelope, the canonical-CBOR
check, the context walk) is compared with a straightforward reference on random and
mutated input: same value, or the same error class with the same message.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proof_messenger.protocol.encoding import b64u_decode, b64u_encode

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
