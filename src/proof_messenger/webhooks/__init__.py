"""Signed, durable webhooks: the relay's delivery worker and the receivers' verifier.

Receivers need only :func:`verify_signature` (no relay dependencies are imported).
"""

from .signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookSignatureError,
    sign,
    verify_signature,
)

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "WebhookSignatureError",
    "sign",
    "verify_signature",
]

#: Every event a subscription can ask for.
EVENT_TYPES: tuple[str, ...] = (
    "proof.verified",
    "proof.rejected",
    "approval.approved",
    "approval.declined",
    "approval.expired",
    "key.revoked",
    # Also emitted by the relay (beyond the list): a new approval request, and a
    # passkey registered through the WebAuthn ceremony.
    "approval.created",
    "webauthn.registered",
)
