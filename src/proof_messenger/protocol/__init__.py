"""The protocol core: pure functions and types, no I/O beyond what callers inject.

Imports only the standard library, cryptography and cbor2 (protocol-v1).
"""

from .context import DEFAULT_LIMITS, ContextLimits, validate_context
from .encoding import b64u_decode, b64u_encode
from .envelope import ALG_ES256, ALG_WEBAUTHN_ES256, EnvelopeLimits, Proof
from .errors import *  # noqa: F403 - the error tree is part of the public API
from .errors import __all__ as _errors_all
from .intent import DOMAIN, Intent, digest, new_nonce, proof_id, signed_bytes
from .keys import (
    KeyFormatError,
    generate_private_key,
    kid_for,
    load_private_key_pem,
    load_public_key,
    load_public_key_der,
    private_key_to_pem,
    public_key_der,
    public_key_to_pem,
    sign_es256,
    verify_es256,
)
from .sign import create_proof, sign_intent
from .verify import (
    ParsedProof,
    ResolvedKey,
    VerifiedProof,
    Verifier,
    VerifierSettings,
    single_key_resolver,
)

__all__ = [
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
    *_errors_all,
]
