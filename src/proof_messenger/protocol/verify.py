"""The offline verifier: checks 1-6 of protocol §4, in order, first failure wins.

The checks are split into pure stages so that a caller with I/O (the relay, which
resolves keys from its database) can run stage by stage without this module ever
touching a database or a clock it was not given:

* :meth:`Verifier.parse` - check 1 (envelope);
* :meth:`Verifier.check_intent` - checks 2-4 (intent, audience, time);
* :meth:`Verifier.check_key` - check 5 (key registered, active, owned by ``sub``);
* :meth:`Verifier.check_signature` - check 6 (ES256 or WebAuthn).

:meth:`Verifier.verify` runs all of them with the injected synchronous key resolver.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .context import DEFAULT_LIMITS, ContextLimits
from .envelope import (
    ALG_ES256,
    ALG_WEBAUTHN_ES256,
    DEFAULT_ENVELOPE_LIMITS,
    EnvelopeLimits,
    Proof,
)
from .errors import (
    Expired,
    InvalidSignature,
    KeyRevoked,
    LifetimeTooLong,
    NotYetValid,
    SubjectMismatch,
    UnknownKey,
    WrongAudience,
)
from .intent import MAX_AUD_CHARS, Intent, digest, proof_id, signed_bytes
from .keys import PublicKey, kid_for, public_key_der, verify_es256
from .webauthn import verify_assertion

__all__ = [
    "Clock",
    "KeyResolver",
    "ParsedProof",
    "ResolvedKey",
    "VerifiedProof",
    "Verifier",
    "VerifierSettings",
    "single_key_resolver",
]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ResolvedKey:
    """What a key registry knows about a ``kid``."""

    kid: str
    alg: str
    public_key: PublicKey
    public_key_der: bytes
    #: The subject the key belongs to; ``None`` trusts the key for any subject
    #: (offline use with a single known public key).
    sub: str | None
    status: Literal["active", "revoked"] = "active"
    sign_count: int = 0


class KeyResolver(Protocol):
    def __call__(self, kid: str, /) -> ResolvedKey | None: ...


@dataclass(frozen=True, slots=True)
class VerifierSettings:
    audience: str
    clock_skew: int = 60
    max_lifetime: int = 300
    context_limits: ContextLimits = DEFAULT_LIMITS
    envelope_limits: EnvelopeLimits = DEFAULT_ENVELOPE_LIMITS
    webauthn_origins: frozenset[str] = field(default_factory=frozenset)
    require_user_verification: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.audience, str) or not 1 <= len(self.audience) <= MAX_AUD_CHARS:
            raise ValueError(f"audience must be 1-{MAX_AUD_CHARS} characters")
        try:
            self.audience.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("audience is not valid Unicode (lone surrogate)") from exc
        if self.clock_skew < 0 or self.max_lifetime <= 0:
            raise ValueError("clock_skew must be >= 0 and max_lifetime > 0")


@dataclass(frozen=True, slots=True)
class ParsedProof:
    """A proof that passed checks 1-4."""

    proof: Proof
    intent: Intent
    digest: bytes
    proof_id: str


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """A proof that passed checks 1-6."""

    parsed: ParsedProof
    key: ResolvedKey
    user_verified: bool
    #: The authenticator's new sign count (WebAuthn), to be stored by the caller.
    sign_count: int | None = None

    @property
    def intent(self) -> Intent:
        return self.parsed.intent

    @property
    def proof_id(self) -> str:
        return self.parsed.proof_id

    @property
    def digest(self) -> bytes:
        return self.parsed.digest


class Verifier:
    def __init__(
        self,
        settings: VerifierSettings,
        keys: KeyResolver | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock

    # --- check 1 -------------------------------------------------------------------------------
    def parse(self, data: bytes | str | Mapping[str, Any], *, cbor: bool = False) -> Proof:
        limits = self.settings.envelope_limits
        if isinstance(data, Mapping):
            return Proof.from_mapping(data, binary=cbor, limits=limits)
        if cbor:
            if not isinstance(data, bytes):
                raise TypeError("CBOR envelopes are bytes")
            return Proof.from_cbor(data, limits)
        return Proof.from_json(data, limits)

    # --- checks 2-4 ----------------------------------------------------------------------------
    def check_intent(self, proof: Proof, *, now: float | None = None) -> ParsedProof:
        return self.check_claims(proof, self.decode_intent(proof), now=now)

    def decode_intent(self, proof: Proof) -> Intent:
        """Check 2 alone: the intent decodes, is deterministic and well-formed."""
        return Intent.from_bytes(proof.intent, self.settings.context_limits)

    def check_claims(
        self, proof: Proof, intent: Intent, *, now: float | None = None
    ) -> ParsedProof:
        """Checks 3-4 on a decoded intent: audience, then time."""
        s = self.settings
        if not hmac.compare_digest(intent.aud.encode(), s.audience.encode()):
            raise WrongAudience(f"proof is for {intent.aud[:100]!r}, not {s.audience!r}")
        t = self.clock() if now is None else now
        if intent.iat > t + s.clock_skew:
            raise NotYetValid(f"issued at {intent.iat}, which is in the future")
        if intent.exp < t - s.clock_skew:
            raise Expired(f"expired at {intent.exp}")
        if intent.exp - intent.iat > s.max_lifetime:
            raise LifetimeTooLong(
                f"lifetime {intent.exp - intent.iat} s exceeds the maximum of {s.max_lifetime} s"
            )
        d = digest(proof.intent)
        return ParsedProof(proof=proof, intent=intent, digest=d, proof_id=proof_id(d))

    # --- check 5 -------------------------------------------------------------------------------
    def check_key(self, parsed: ParsedProof, key: ResolvedKey | None) -> ResolvedKey:
        proof = parsed.proof
        if key is None or key.kid != proof.kid:
            raise UnknownKey(f"no registered key with kid {proof.kid[:64]!r}")
        if key.alg != proof.alg:
            # A key registered for one algorithm is never used under another:
            # a passkey credential cannot sign plain ES256 proofs and vice versa.
            raise UnknownKey(f"kid {proof.kid[:64]!r} is registered for {key.alg}, not {proof.alg}")
        if key.status != "active":
            raise KeyRevoked(f"key {proof.kid[:64]!r} has been revoked")
        if key.sub is not None and key.sub != parsed.intent.sub:
            raise SubjectMismatch(f"key {proof.kid[:64]!r} does not belong to the proof's subject")
        if proof.public_key is not None and not hmac.compare_digest(
            proof.public_key, key.public_key_der
        ):
            raise UnknownKey("the proof's public_key is not the key registered under its kid")
        return key

    # --- check 6 -------------------------------------------------------------------------------
    def check_signature(self, parsed: ParsedProof, key: ResolvedKey) -> VerifiedProof:
        proof = parsed.proof
        if proof.alg == ALG_ES256:
            if not verify_es256(key.public_key, proof.sig, signed_bytes(proof.intent)):
                raise InvalidSignature("the ES256 signature does not verify")
            return VerifiedProof(parsed=parsed, key=key, user_verified=False)
        assert proof.alg == ALG_WEBAUTHN_ES256  # check 1 admits nothing else
        assert proof.authenticator_data is not None and proof.client_data_json is not None
        result = verify_assertion(
            public_key=key.public_key,
            digest=parsed.digest,
            audience=parsed.intent.aud,
            authenticator_data=proof.authenticator_data,
            client_data_json=proof.client_data_json,
            signature=proof.sig,
            allowed_origins=self.settings.webauthn_origins,
            stored_sign_count=key.sign_count,
            require_user_verification=self.settings.require_user_verification,
        )
        return VerifiedProof(
            parsed=parsed,
            key=key,
            user_verified=result.user_verified,
            sign_count=result.sign_count,
        )

    # --- all of them ---------------------------------------------------------------------------
    def verify(
        self, data: bytes | str | Mapping[str, Any] | Proof, *, cbor: bool = False
    ) -> VerifiedProof:
        """Checks 1-6 with the injected key resolver; raises one ``ProofError`` per code."""
        if self.keys is None:
            raise RuntimeError("Verifier.verify needs a key resolver")
        proof = data if isinstance(data, Proof) else self.parse(data, cbor=cbor)
        parsed = self.check_intent(proof)
        key = self.check_key(parsed, self.keys(proof.kid))
        return self.check_signature(parsed, key)


def single_key_resolver(public_key: PublicKey, *, sub: str | None = None) -> KeyResolver:
    """A resolver that knows exactly one ES256 key (offline verification)."""
    der = public_key_der(public_key)
    resolved = ResolvedKey(
        kid=kid_for(der), alg=ALG_ES256, public_key=public_key, public_key_der=der, sub=sub
    )

    def resolve(kid: str) -> ResolvedKey | None:
        return resolved if kid == resolved.kid else None

    return resolve
