"""base64url without padding, strictly: one value, one string."""

from __future__ import annotations

import base64
import binascii

__all__ = ["b64u_decode", "b64u_encode"]

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: url-safe -> standard alphabet, so the C decoder (binascii) can do the work.
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
#: The 6-bit value of each alphabet byte, to look at the last character's spare bits.
_SEXTET = {byte: value for value, byte in enumerate(_ALPHABET)}
_PADDING = (b"", b"", b"==", b"=")


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Decode unpadded base64url; raise ``ValueError`` on anything else.

    Rejects padding, the standard alphabet, whitespace, impossible lengths and
    non-zero trailing bits, so that two different strings never decode to the
    same bytes (a proof has exactly one textual form).

    On the hot path of every proof, so each rule is one C-level operation: deleting
    the alphabet leaves nothing only for valid text, and the spare bits of the last
    character are the only way two strings could decode alike (no re-encoding).
    """
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not unpadded base64url")
    raw = text.encode("ascii")
    if raw.translate(None, _ALPHABET):
        raise ValueError("not unpadded base64url")
    rest = len(raw) & 3
    if rest:
        if rest == 1:
            raise ValueError("impossible base64url length")
        # 2 characters left carry 8 bits (4 spare), 3 carry 16 (2 spare).
        if _SEXTET[raw[-1]] & (0x0F if rest == 2 else 0x03):
            raise ValueError("non-canonical base64url (trailing bits set)")
    return binascii.a2b_base64(raw.translate(_TO_STANDARD) + _PADDING[rest])
