"""The webhook signature: ``X-Proof-Messenger-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``.

``v1`` is the hex HMAC-SHA-256 of ``"<t>." + body`` keyed with the UTF-8 bytes of the
subscription secret. The timestamp is signed so a captured delivery cannot be replayed
later than ``tolerance`` seconds; several ``v1`` values let a sender sign with an old and a
new secret while receivers roll over (any one matching value is enough).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from ..audit.primitives import hmac_sha256, hmac_sha256_verify

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "WebhookSignatureError",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Proof-Messenger-Signature"
EVENT_HEADER = "X-Proof-Messenger-Event"
DELIVERY_HEADER = "X-Proof-Messenger-Delivery"
_MAX_HEADER = 4096

Secret = str | bytes


class WebhookSignatureError(ValueError):
    """The delivery must be refused; ``reason`` says why (safe to log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(secret: Secret) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("webhook secret must not be empty")
    return key


def _mac(secret: Secret, timestamp: int, body: bytes) -> bytes:
    return hmac_sha256(_key(secret), str(timestamp).encode("ascii") + b"." + body)


def sign(secret: Secret | Sequence[Secret], body: bytes, t: int | None = None) -> str:
    """The signature header value for ``body`` at Unix time ``t`` (now if None).

    Pass several secrets (new first) during a rotation: one ``v1`` per secret.
    """
    timestamp = int(time.time()) if t is None else int(t)
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    if not secrets:
        raise ValueError("at least one secret is required")
    return ",".join([f"t={timestamp}", *(f"v1={_mac(s, timestamp, body).hex()}" for s in secrets)])


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def _parse(header: str) -> tuple[int, list[bytes]]:
    if len(header) > _MAX_HEADER:
        raise WebhookSignatureError("signature header is too long")
    timestamp: int | None = None
    tags: list[bytes] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("malformed signature header: expected key=value pairs")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise WebhookSignatureError("malformed signature header: bad or repeated t")
            timestamp = int(value)
        elif name == "v1":
            try:
                tag = bytes.fromhex(value)
            except ValueError:
                raise WebhookSignatureError("malformed signature header: v1 is not hex") from None
            tags.append(tag)
        # Unknown schemes (a future v2) are ignored, so senders can add them first.
    if timestamp is None:
        raise WebhookSignatureError("malformed signature header: no timestamp")
    if not tags:
        raise WebhookSignatureError("no v1 signature in the header")
    return timestamp, tags


def verify_signature(
    secret: Secret | Sequence[Secret],
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = 300,
    now: float | None = None,
) -> int:
    """Check a delivery's signature; return its timestamp or raise WebhookSignatureError.

    ``headers`` is any mapping (case-insensitive lookup of the header name); ``body`` must
    be the raw bytes received, before any JSON parsing. ``secret`` may be several secrets
    (the receiver's side of a rotation). The comparison is constant-time.
    """
    header = _header(headers, SIGNATURE_HEADER)
    if header is None:
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp, tags = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"timestamp is outside the tolerance of {tolerance} s (possible replay)"
        )
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    message = str(timestamp).encode("ascii") + b"." + body
    matched = False
    for candidate in secrets:
        key = _key(candidate)
        for tag in tags:
            # Check every pair (no early exit) so timing does not reveal which one matched.
            matched |= hmac_sha256_verify(key, message, tag)
    if not matched:
        raise WebhookSignatureError("no signature matches the body and secret")
    return timestamp
