"""base64url without padding, strictly: one value, one string."""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64u_decode", "b64u_encode"]

_B64U = re.compile(r"[A-Za-z0-9_-]*")


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Decode unpadded base64url; raise ``ValueError`` on anything else.

    Rejects padding, the standard alphabet, whitespace, impossible lengths and
    non-zero trailing bits, so that two different strings never decode to the
    same bytes (a proof has exactly one textual form).
    """
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
