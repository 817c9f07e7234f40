"""Check 6 for ``webauthn.ES256`` proofs: a passkey assertion over the intent digest.

Follows W3C WebAuthn Level 2 §7.2 (verifying an authentication assertion) with the
protocol's bindings: the challenge is the intent digest and the RP id is the
intent's audience. The steps run in the specification's order (type, challenge,
origin, rpIdHash, UP, UV, signature, sign count) and each failure has its own code.

This is written against the specification rather than through py_webauthn's
``verify_authentication_response`` because that function reports every failure as
one exception type with free-text messages; a verifier that must say *which* check
failed needs the steps apart. py_webauthn is used by the relay for the registration
ceremony, where its behaviour is exactly what we want.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection
from dataclasses import dataclass

from .encoding import b64u_encode
from .errors import (
    InvalidSignature,
    MalformedProof,
    WebAuthnChallengeMismatch,
    WebAuthnInvalidType,
    WebAuthnOriginMismatch,
    WebAuthnRpIdMismatch,
    WebAuthnSignCount,
    WebAuthnUserNotPresent,
    WebAuthnUserNotVerified,
)
from .keys import PublicKey, verify_es256_der

__all__ = ["FLAG_UP", "FLAG_UV", "AssertionResult", "verify_assertion"]

FLAG_UP = 0x01
FLAG_UV = 0x04


@dataclass(frozen=True, slots=True)
class AssertionResult:
    sign_count: int
    user_verified: bool
    origin: str


def verify_assertion(
    *,
    public_key: PublicKey,
    digest: bytes,
    audience: str,
    authenticator_data: bytes,
    client_data_json: bytes,
    signature: bytes,
    allowed_origins: Collection[str],
    stored_sign_count: int,
    require_user_verification: bool,
) -> AssertionResult:
    try:
        client_data = json.loads(client_data_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedProof("client_data_json: not UTF-8 JSON") from exc
    if not isinstance(client_data, dict):
        raise MalformedProof("client_data_json: must be a JSON object")
    if len(authenticator_data) < 37:
        raise MalformedProof("authenticator_data: shorter than 37 bytes")

    if client_data.get("type") != "webauthn.get":
        raise WebAuthnInvalidType("clientDataJSON.type must be 'webauthn.get'")
    challenge = client_data.get("challenge")
    if not isinstance(challenge, str) or not hmac.compare_digest(
        challenge.encode("ascii", "replace"), b64u_encode(digest).encode("ascii")
    ):
        raise WebAuthnChallengeMismatch("clientDataJSON.challenge is not the intent digest")
    origin = client_data.get("origin")
    if not isinstance(origin, str) or origin not in allowed_origins:
        shown = origin[:100] if isinstance(origin, str) else "missing"
        raise WebAuthnOriginMismatch(f"origin {shown!r} is not in the allowed origins")
    if client_data.get("crossOrigin") is True:
        raise WebAuthnOriginMismatch("cross-origin assertions are not accepted")

    rp_id_hash = authenticator_data[:32]
    if not hmac.compare_digest(rp_id_hash, hashlib.sha256(audience.encode("utf-8")).digest()):
        raise WebAuthnRpIdMismatch("rpIdHash is not SHA-256 of the audience")
    flags = authenticator_data[32]
    if not flags & FLAG_UP:
        raise WebAuthnUserNotPresent("the user-present (UP) flag is not set")
    user_verified = bool(flags & FLAG_UV)
    if require_user_verification and not user_verified:
        raise WebAuthnUserNotVerified("user verification (UV) is required but was not performed")

    signed = authenticator_data + hashlib.sha256(client_data_json).digest()
    if not verify_es256_der(public_key, signature, signed):
        raise InvalidSignature("the assertion signature does not verify")

    sign_count = int.from_bytes(authenticator_data[33:37], "big")
    if (sign_count or stored_sign_count) and sign_count <= stored_sign_count:
        raise WebAuthnSignCount(
            f"sign count {sign_count} did not increase past {stored_sign_count}: "
            "the authenticator may have been cloned"
        )
    return AssertionResult(sign_count=sign_count, user_verified=user_verified, origin=origin)
