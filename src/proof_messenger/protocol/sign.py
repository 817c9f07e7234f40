"""Creating ES256 proofs with a software or device key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .context import DEFAULT_LIMITS, ContextLimits
from .envelope import ALG_ES256, Proof
from .intent import Intent, signed_bytes
from .keys import PrivateKey, kid_for, public_key_der, sign_es256

__all__ = ["create_proof", "sign_intent"]


def sign_intent(key: PrivateKey, intent: Intent, *, include_public_key: bool = True) -> Proof:
    intent_bytes = intent.to_bytes()
    der = public_key_der(key)
    return Proof(
        alg=ALG_ES256,
        kid=kid_for(der),
        intent=intent_bytes,
        sig=sign_es256(key, signed_bytes(intent_bytes)),
        public_key=der if include_public_key else None,
    )


def create_proof(
    key: PrivateKey,
    ctx: Mapping[str, Any],
    *,
    aud: str,
    sub: str,
    ttl: int = 300,
    nonce: bytes | None = None,
    now: float | None = None,
    include_public_key: bool = True,
    limits: ContextLimits = DEFAULT_LIMITS,
) -> Proof:
    """Validate ``ctx``, build the intent and sign it: the one call an application needs."""
    intent = Intent.create(ctx, aud=aud, sub=sub, ttl=ttl, nonce=nonce, now=now, limits=limits)
    return sign_intent(key, intent, include_public_key=include_public_key)
