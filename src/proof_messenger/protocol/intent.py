"""The intent: what a person signs (protocol §2), its digest and its proof id."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import cbor
from .context import DEFAULT_LIMITS, ContextLimits, check_context, to_plain
from .encoding import b64u_encode
from .errors import MalformedIntent, UnsupportedVersion

__all__ = [
    "DOMAIN",
    "INTENT_KEYS",
    "PROTOCOL_VERSION",
    "Intent",
    "digest",
    "new_nonce",
    "proof_id",
    "signed_bytes",
]

PROTOCOL_VERSION = 1
#: Domain separation: a signature over an intent can never be a signature over
#: anything else the same key might sign.
DOMAIN = b"proof-messenger/v1\x00"
INTENT_KEYS = frozenset({"v", "ctx", "aud", "sub", "iat", "exp", "nonce"})
NONCE_MIN, NONCE_MAX = 16, 64
#: Bounds we put on identifiers so that logs, tables and indexes stay sane.
MAX_AUD_CHARS = 253
MAX_SUB_CHARS = 256
_UINT_MAX = 2**63 - 1
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def signed_bytes(intent_bytes: bytes) -> bytes:
    return DOMAIN + intent_bytes


def digest(intent_bytes: bytes) -> bytes:
    """SHA-256 of the domain-separated intent: proof identity, replay key, WebAuthn challenge."""
    return hashlib.sha256(DOMAIN + intent_bytes).digest()


def proof_id(intent_digest: bytes) -> str:
    return b64u_encode(intent_digest)


def new_nonce(size: int = 32) -> bytes:
    if not NONCE_MIN <= size <= NONCE_MAX:
        raise ValueError(f"nonce size must be {NONCE_MIN}-{NONCE_MAX} bytes")
    return os.urandom(size)


@dataclass(frozen=True, slots=True)
class Intent:
    ctx: Mapping[str, Any]
    aud: str
    sub: str
    iat: int
    exp: int
    nonce: bytes
    v: int = PROTOCOL_VERSION
    _encoded: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        ctx: Mapping[str, Any],
        *,
        aud: str,
        sub: str,
        ttl: int = 300,
        nonce: bytes | None = None,
        now: float | None = None,
        limits: ContextLimits = DEFAULT_LIMITS,
    ) -> Intent:
        """A fresh, validated intent valid from ``now`` for ``ttl`` seconds."""
        iat = int(time.time() if now is None else now)
        intent = cls(
            ctx=ctx,
            aud=aud,
            sub=sub,
            iat=iat,
            exp=iat + ttl,
            nonce=new_nonce() if nonce is None else nonce,
        )
        intent.validate(limits)
        return intent

    def validate(self, limits: ContextLimits = DEFAULT_LIMITS) -> None:
        """Raise the protocol error for the first rule of §1-§2 this intent breaks."""
        self._validate(limits, None)

    def _validate(self, limits: ContextLimits, encoded_size: int | None) -> None:
        if type(self.v) is not int:
            raise MalformedIntent("v: must be an unsigned integer")
        if self.v != PROTOCOL_VERSION:
            raise UnsupportedVersion(f"v: intent version {self.v} is not supported")
        _text("aud", self.aud, MAX_AUD_CHARS)
        _text("sub", self.sub, MAX_SUB_CHARS)
        _uint("iat", self.iat)
        _uint("exp", self.exp)
        if not self.iat < self.exp:
            raise MalformedIntent("exp: must be later than iat")
        if not isinstance(self.nonce, bytes):
            raise MalformedIntent("nonce: must be a byte string")
        if not NONCE_MIN <= len(self.nonce) <= NONCE_MAX:
            raise MalformedIntent(f"nonce: must be {NONCE_MIN}-{NONCE_MAX} bytes")
        # Decoded from deterministic bytes, the context's own encoding is a part of them.
        check_context(self.ctx, limits, encoded_size_at_most=encoded_size)

    def to_map(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "ctx": self.ctx,
            "aud": self.aud,
            "sub": self.sub,
            "iat": self.iat,
            "exp": self.exp,
            "nonce": self.nonce,
        }

    def to_bytes(self) -> bytes:
        """``intent_bytes``: the deterministic CBOR that is signed."""
        if self._encoded is not None:
            return self._encoded
        return cbor.encode(to_plain(self.to_map()))

    def digest(self) -> bytes:
        return digest(self.to_bytes())

    def proof_id(self) -> str:
        return proof_id(self.digest())

    @classmethod
    def from_bytes(cls, data: bytes, limits: ContextLimits = DEFAULT_LIMITS) -> Intent:
        """Strictly decode and validate ``intent_bytes`` (check 2).

        Raises :class:`MalformedIntent`, :class:`NonCanonicalEncoding`,
        :class:`InvalidContext` or :class:`UnsupportedVersion`.
        """
        value = cbor.decode(data, strict=True)
        if not isinstance(value, dict):
            raise MalformedIntent("intent: must be a CBOR map")
        keys = set(value)
        if keys != INTENT_KEYS:
            missing = sorted(INTENT_KEYS - keys)
            extra = sorted(keys - INTENT_KEYS)
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if extra:
                parts.append("unexpected " + ", ".join(extra))
            raise MalformedIntent("intent: " + "; ".join(parts))
        intent = cls(
            v=value["v"],
            ctx=value["ctx"],
            aud=value["aud"],
            sub=value["sub"],
            iat=value["iat"],
            exp=value["exp"],
            nonce=value["nonce"],
            _encoded=bytes(data),
        )
        intent._validate(limits, len(data))
        return intent

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for display (nonce as base64url)."""
        out = self.to_map()
        out["nonce"] = b64u_encode(self.nonce)
        return out


def _text(name: str, value: Any, max_chars: int) -> None:
    if not isinstance(value, str):
        raise MalformedIntent(f"{name}: must be a text string")
    if not 1 <= len(value) <= max_chars:
        raise MalformedIntent(f"{name}: must be 1-{max_chars} characters")
    if _CONTROL.search(value) is not None:
        raise MalformedIntent(f"{name}: control characters are not allowed")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate (e.g. undecodable bytes from argv) has no UTF-8 form.
            raise MalformedIntent(f"{name}: text is not valid Unicode (lone surrogate)") from exc


def _uint(name: str, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= _UINT_MAX:
        raise MalformedIntent(f"{name}: must be an unsigned integer below 2^63")
