"""One exception class per protocol error code (protocol-v1 §4).

Every rejection anywhere in the project is one of these, so a caller can
always branch on ``exc.code`` and a relay can always answer with a stable,
machine-readable code and the HTTP status that belongs to it.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ERROR_CLASSES",
    "ApprovalExpired",
    "ApprovalMismatch",
    "Expired",
    "InvalidContext",
    "InvalidSignature",
    "KeyRevoked",
    "LifetimeTooLong",
    "MalformedIntent",
    "MalformedProof",
    "NonCanonicalEncoding",
    "NotYetValid",
    "PolicyDenied",
    "ProofError",
    "ProofMessengerError",
    "Replayed",
    "SubjectMismatch",
    "UnknownKey",
    "UnsupportedAlgorithm",
    "UnsupportedVersion",
    "WebAuthnChallengeMismatch",
    "WebAuthnError",
    "WebAuthnInvalidType",
    "WebAuthnOriginMismatch",
    "WebAuthnRpIdMismatch",
    "WebAuthnSignCount",
    "WebAuthnUserNotPresent",
    "WebAuthnUserNotVerified",
    "WrongAudience",
    "error_for_code",
]


class ProofMessengerError(Exception):
    """Root of every error the project raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: object) -> None:
        self.detail = detail or self.title
        self.extra: dict[str, object] = dict(extra)
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


class ProofError(ProofMessengerError):
    """A proof was rejected by one of the protocol's checks."""

    code: ClassVar[str] = "invalid_proof"
    status: ClassVar[int] = 422
    title: ClassVar[str] = "Proof rejected"
    #: Which numbered check of protocol §4 produced the error.
    check: ClassVar[int] = 0


# --- check 1: envelope ---------------------------------------------------------------------------
class MalformedProof(ProofError):
    code = "malformed_proof"
    status = 400
    title = "Malformed proof envelope"
    check = 1


class UnsupportedVersion(ProofError):
    code = "unsupported_version"
    status = 400
    title = "Unsupported protocol version"
    check = 1


class UnsupportedAlgorithm(ProofError):
    code = "unsupported_algorithm"
    status = 400
    title = "Unsupported signature algorithm"
    check = 1


# --- check 2: intent ------------------------------------------------------------------------------
class MalformedIntent(ProofError):
    code = "malformed_intent"
    status = 400
    title = "Malformed intent"
    check = 2


class NonCanonicalEncoding(ProofError):
    code = "non_canonical_encoding"
    status = 400
    title = "Intent is not deterministic CBOR"
    check = 2


class InvalidContext(ProofError):
    code = "invalid_context"
    status = 400
    title = "Invalid transaction context"
    check = 2


# --- check 3: audience ----------------------------------------------------------------------------
class WrongAudience(ProofError):
    code = "wrong_audience"
    title = "Proof is for another audience"
    check = 3


# --- check 4: time --------------------------------------------------------------------------------
class NotYetValid(ProofError):
    code = "not_yet_valid"
    title = "Proof is not yet valid"
    check = 4


class Expired(ProofError):
    code = "expired"
    title = "Proof has expired"
    check = 4


class LifetimeTooLong(ProofError):
    code = "lifetime_too_long"
    title = "Proof lifetime exceeds the maximum"
    check = 4


# --- check 5: key ---------------------------------------------------------------------------------
class UnknownKey(ProofError):
    code = "unknown_key"
    title = "Unknown key"
    check = 5


class KeyRevoked(ProofError):
    code = "key_revoked"
    status = 403
    title = "Key has been revoked"
    check = 5


class SubjectMismatch(ProofError):
    code = "subject_mismatch"
    title = "Key or token does not belong to the proof's subject"
    check = 5


# --- check 6: signature ---------------------------------------------------------------------------
class InvalidSignature(ProofError):
    code = "invalid_signature"
    title = "Invalid signature"
    check = 6


class WebAuthnError(ProofError):
    code = "webauthn_invalid"
    title = "Invalid WebAuthn assertion"
    check = 6


class WebAuthnInvalidType(WebAuthnError):
    code = "webauthn_invalid_type"
    title = "clientDataJSON type is not webauthn.get"


class WebAuthnChallengeMismatch(WebAuthnError):
    code = "webauthn_challenge_mismatch"
    title = "WebAuthn challenge is not the intent digest"


class WebAuthnOriginMismatch(WebAuthnError):
    code = "webauthn_origin_mismatch"
    title = "WebAuthn origin is not allowed"


class WebAuthnRpIdMismatch(WebAuthnError):
    code = "webauthn_rp_id_mismatch"
    title = "WebAuthn rpIdHash does not match the audience"


class WebAuthnUserNotPresent(WebAuthnError):
    code = "webauthn_user_not_present"
    title = "Authenticator did not report user presence"


class WebAuthnUserNotVerified(WebAuthnError):
    code = "webauthn_user_not_verified"
    title = "Authenticator did not report user verification"


class WebAuthnSignCount(WebAuthnError):
    code = "webauthn_sign_count"
    title = "Sign count did not increase (possible cloned authenticator)"


# --- checks 7-9: relay-side -----------------------------------------------------------------------
class Replayed(ProofError):
    code = "replayed"
    status = 409
    title = "Proof was already accepted"
    check = 7


class ApprovalMismatch(ProofError):
    code = "approval_mismatch"
    title = "Proof does not match its approval request"
    check = 8


class ApprovalExpired(ProofError):
    code = "approval_expired"
    status = 409
    title = "Approval request is no longer pending"
    check = 8


class PolicyDenied(ProofError):
    code = "policy_denied"
    status = 403
    title = "Denied by policy"
    check = 9


ERROR_CLASSES: dict[str, type[ProofMessengerError]] = {
    cls.code: cls
    for cls in (
        MalformedProof,
        UnsupportedVersion,
        UnsupportedAlgorithm,
        MalformedIntent,
        NonCanonicalEncoding,
        InvalidContext,
        WrongAudience,
        NotYetValid,
        Expired,
        LifetimeTooLong,
        UnknownKey,
        KeyRevoked,
        SubjectMismatch,
        InvalidSignature,
        WebAuthnError,
        WebAuthnInvalidType,
        WebAuthnChallengeMismatch,
        WebAuthnOriginMismatch,
        WebAuthnRpIdMismatch,
        WebAuthnUserNotPresent,
        WebAuthnUserNotVerified,
        WebAuthnSignCount,
        Replayed,
        ApprovalMismatch,
        ApprovalExpired,
        PolicyDenied,
    )
}


def error_for_code(code: str, detail: str | None = None) -> ProofMessengerError:
    """Rebuild the exception for a code received over the wire (SDKs use this)."""
    cls = ERROR_CLASSES.get(code, ProofMessengerError)
    return cls(detail)
