"""API keys: ``pmk_<id>_<secret>``; the relay stores only the id and SHA-256 of the key.

The id is public (it names the key in listings and logs); the secret is 256 bits of
randomness, so a fast hash is the right choice (no password stretching is needed for
a high-entropy secret) and the comparison is constant-time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "ALL_SCOPES",
    "ParsedApiKey",
    "generate_api_key",
    "hash_api_key",
    "matches",
    "parse_api_key",
    "validate_scopes",
]

#: Scope -> what it allows.
ALL_SCOPES: dict[str, str] = {
    "verify": "POST /verify and /verify/batch",
    "keys:read": "GET /keys",
    "keys:write": "POST /keys, DELETE /keys/{kid} (implies keys:read)",
    "audit:read": "GET /audit, GET /audit/{id} with decrypted contexts",
    "approvals": "create and follow approval requests",
    "webhooks": "manage webhook subscriptions and deliveries",
}
_IMPLIES = {"keys:write": ("keys:read",)}
_FORMAT = re.compile(r"pmk_([a-z2-7]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class ParsedApiKey:
    key_id: str
    full: str


def generate_api_key() -> tuple[str, str]:
    """Return (key id, full key). The full key is shown once and never stored."""
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(16))
    secret = secrets.token_urlsafe(32)
    return key_id, f"pmk_{key_id}_{secret}"


def hash_api_key(full: str) -> bytes:
    return hashlib.sha256(full.encode("ascii")).digest()


def parse_api_key(text: str) -> ParsedApiKey | None:
    match = _FORMAT.fullmatch(text)
    if match is None:
        return None
    return ParsedApiKey(key_id=match.group(1), full=text)


def matches(full: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_api_key(full), stored_hash)


def validate_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(ALL_SCOPES)})")
    if not scopes:
        raise ValueError("at least one scope is required")
    return tuple(dict.fromkeys(scopes))


def expand(scopes: tuple[str, ...]) -> frozenset[str]:
    """The scopes a key grants: its own plus the ones they imply (``keys:write`` ->
    ``keys:read``). Every authenticated request asks; a key's scopes are one of a few
    tuples, so those are expanded once (an immutable frozenset, cached)."""
    if type(scopes) is tuple:
        return _expand_cached(scopes)
    return _expand(scopes)


def _expand(scopes: tuple[str, ...]) -> frozenset[str]:
    out = set(scopes)
    for scope in scopes:
        out.update(_IMPLIES.get(scope, ()))
    return frozenset(out)


_expand_cached = functools.lru_cache(maxsize=256)(_expand)
