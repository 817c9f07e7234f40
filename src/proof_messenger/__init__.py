"""Proof-Messenger: non-repudiable approval of exact transactions.

The public API of the protocol library is re-exported here; the relay, store,
SDK and CLI live in their own subpackages.

The re-export is lazy (PEP 562): ``from proof_messenger import Proof`` and
``from proof_messenger import *`` work as before, but importing a subpackage (the
CLI, the ``serve`` parent, the store) no longer imports the protocol core with it
(eleven modules whose dataclasses cost the ``serve`` parent about 9% of its CPU
before the workers start). ``tests/test_public_api.py`` keeps the name list equal to
``proof_messenger.protocol.__all__``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: ``proof_messenger.protocol.__all__``, spelled out so that looking a name up here
#: imports the protocol core only for one of these names (not for ``from .. import cli``).
_PROTOCOL_NAMES = (
    "ALG_ES256",
    "ALG_WEBAUTHN_ES256",
    "DEFAULT_LIMITS",
    "DOMAIN",
    "ContextLimits",
    "EnvelopeLimits",
    "Intent",
    "KeyFormatError",
    "ParsedProof",
    "Proof",
    "ResolvedKey",
    "VerifiedProof",
    "Verifier",
    "VerifierSettings",
    "b64u_decode",
    "b64u_encode",
    "create_proof",
    "digest",
    "generate_private_key",
    "kid_for",
    "load_private_key_pem",
    "load_public_key",
    "load_public_key_der",
    "new_nonce",
    "private_key_to_pem",
    "proof_id",
    "public_key_der",
    "public_key_to_pem",
    "sign_es256",
    "sign_intent",
    "signed_bytes",
    "single_key_resolver",
    "validate_context",
    "verify_es256",
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
)

__all__ = ["__version__", *_PROTOCOL_NAMES]

if TYPE_CHECKING:
    from .protocol import *  # noqa: F403
else:  # hidden from type checkers, so that a misspelt name is still reported

    def __getattr__(name: str) -> Any:
        if name not in _PROTOCOL_NAMES:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(".protocol", __name__), name)
        globals()[name] = value  # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_PROTOCOL_NAMES})
