"""The verification pipeline: protocol checks 1-9 against the store, then the audit row.

Checks 1-6 are the pure protocol verifier; this module adds what needs state: the key
registry (5), the sign count of passkeys (6), replay (7), approval requests (8) and
business policy (9). Every outcome, accepted or rejected, becomes exactly one audit
row, and the answer is built only after that row has committed.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
import structlog

from ..audit.crypto import Keyring
from ..protocol import (
    ContextLimits,
    EnvelopeLimits,
    ParsedProof,
    Proof,
    ProofError,
    ResolvedKey,
    VerifiedProof,
    Verifier,
    VerifierSettings,
)
from ..protocol.errors import (
    ApprovalExpired,
    ApprovalMismatch,
    Replayed,
    SubjectMismatch,
    WebAuthnSignCount,
)
from ..protocol.intent import Intent
from ..protocol.intent import digest as intent_digest
from ..protocol.intent import proof_id as make_proof_id
from ..protocol.keys import KeyFormatError, load_public_key_der
from ..store.base import (
    AppendResult,
    ApprovalTransition,
    AuditDraft,
    AuditRecord,
    KeyRecord,
    OutboxEvent,
    PolicyApproval,
    Store,
)
from .config import Settings
from .metrics import metrics

__all__ = ["ClientInfo", "Outcome", "VerificationService", "new_event_id"]

log = structlog.get_logger("proof_messenger.verify")
_json = msgspec.json.Encoder()


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so event ids sort like the log."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ClientInfo:
    ip: str | None = None
    user_agent: str | None = None
    api_key_id: str | None = None


@dataclass(slots=True)
class Outcome:
    accepted: bool
    status: int
    body: dict[str, Any]
    error: ProofError | None = None
    record: AuditRecord | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the end user is according to an ID token (OIDC), when one is given."""

    sub: str
    roles: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)


class ApprovalHook(Protocol):
    """Check 8: bind a proof to the approval request its nonce names, if any.

    Returning an :class:`ApprovalTransition` makes the accepted audit row and the
    request's pending -> approved compare-and-set one transaction (see ``_accept``).
    """

    async def check(self, verified: VerifiedProof) -> Any: ...


class PolicyHook(Protocol):
    """Check 9: business policy; raises PolicyDenied naming the rule."""

    async def check(self, verified: VerifiedProof, identity: Identity | None) -> Any:
        """Raise PolicyDenied, or return None / a value for ``after_accept`` (N-of-M)."""
        ...


AcceptedCallback = Callable[[VerifiedProof, AuditRecord, Any], Awaitable[None]]


class VerificationService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        *,
        clock: Callable[[], float] = time.time,
        approvals: ApprovalHook | None = None,
        policy: PolicyHook | None = None,
        on_accepted: AcceptedCallback | None = None,
        outbox_for: Callable[[str, dict[str, Any]], list[OutboxEvent]] | None = None,
    ) -> None:
        v = settings.verification
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.clock = clock
        self.approvals = approvals
        self.policy = policy
        self.on_accepted = on_accepted
        self.outbox_for = outbox_for
        origins = frozenset(settings.webauthn.origins) or frozenset(
            {f"https://{settings.audience}"}
        )
        self.verifier = Verifier(
            VerifierSettings(
                audience=settings.audience,
                clock_skew=v.clock_skew_seconds,
                max_lifetime=v.max_lifetime_seconds,
                context_limits=ContextLimits(
                    max_depth=v.max_context_depth, max_bytes=v.max_context_bytes
                ),
                envelope_limits=EnvelopeLimits(
                    max_intent_bytes=max(16 * 1024, v.max_context_bytes + 1024)
                ),
                webauthn_origins=origins,
                require_user_verification=settings.webauthn.require_user_verification,
            ),
            clock=clock,
        )
        self._verifier_uv = Verifier(
            replace(self.verifier.settings, require_user_verification=True), clock=clock
        )

    # --- the pipeline --------------------------------------------------------------------------
    async def verify(
        self,
        body: bytes | Mapping[str, Any],
        *,
        cbor: bool,
        client: ClientInfo,
        identity: Identity | None = None,
        require_user_verification: bool = False,
        expect_nonce: bytes | None = None,
    ) -> Outcome:
        """Run checks 1-9 and audit the outcome.

        ``expect_nonce`` (approval page submissions): the proof must answer the approval
        request with this nonce, else ``approval_mismatch`` (audited like any rejection).
        """
        proof: Proof | None = None
        intent: Intent | None = None
        parsed: ParsedProof | None = None
        verified: VerifiedProof | None = None
        now = self.clock()
        try:
            proof = body if isinstance(body, Proof) else self.verifier.parse(body, cbor=cbor)
            intent = self.verifier.decode_intent(proof)
            parsed = self.verifier.check_claims(proof, intent, now=now)
            if expect_nonce is not None and parsed.intent.nonce != expect_nonce:
                raise ApprovalMismatch("this proof does not answer this approval request")
            key = await self._resolve(proof.kid)
            self.verifier.check_key(parsed, key)
            assert key is not None
            try:
                verified = self._check_signature(parsed, key, require_user_verification)
            except WebAuthnSignCount:
                # The exact assertion that was already accepted comes back with
                # its (now stale) counter. That is a replay, not a cloned authenticator:
                # report it as one instead of raising a false clone alarm.
                if await self.store.is_claimed(parsed.digest):
                    raise Replayed("this proof was already accepted") from None
                raise
            if identity is not None and identity.sub != parsed.intent.sub:
                raise SubjectMismatch("the user token's subject is not the proof's subject")
            if verified.sign_count is not None and not await self.store.advance_sign_count(
                key.kid, key.sign_count, verified.sign_count
            ):
                raise WebAuthnSignCount(
                    "sign count moved concurrently: possible cloned authenticator"
                )
            # The claim in store.append decides replays atomically; this early look only
            # matters when a hook (policy, or an approval request this proof answers)
            # would otherwise run for a replay. Otherwise a replay gets the same answer and
            # audit row from the claim, and /verify saves a database read.
            found: Any = ...  # the approval request named by the nonce, once looked up
            find = getattr(self.approvals, "find", None)
            if find is not None:
                found = await find(verified)
            if (
                self.policy is not None or (self.approvals is not None and found is not None)
            ) and await self.store.is_claimed(parsed.digest):
                raise Replayed("this proof was already accepted")
            binding = None
            if self.approvals is not None:
                binding = await (
                    self.approvals.check(verified)
                    if found is ...
                    else self.approvals.check(verified, found)  # type: ignore[call-arg]
                )
            policy_result = None
            if self.policy is not None:
                policy_result = await self.policy.check(verified, identity)
        except ProofError as exc:
            return await self._reject(exc, proof, intent, parsed, client, now)
        return await self._accept(verified, binding, client, now, policy_result)

    async def reject_unparsed(self, exc: ProofError, client: ClientInfo) -> Outcome:
        """Audit and answer input that never became a proof envelope."""
        return await self._reject(exc, None, None, None, client, self.clock())

    def _check_signature(
        self, parsed: ParsedProof, key: ResolvedKey, require_uv: bool
    ) -> VerifiedProof:
        verifier = self._verifier_uv if require_uv else self.verifier
        return verifier.check_signature(parsed, key)

    async def _resolve(self, kid: str) -> ResolvedKey | None:
        record = await self.store.get_key(kid)
        if record is None:
            return None
        return resolved_key(record)

    # --- outcomes ------------------------------------------------------------------------------
    async def _append(
        self,
        draft: AuditDraft,
        *,
        claim_digest: bytes | None = None,
        outbox: list[OutboxEvent] | None = None,
        approval: ApprovalTransition | None = None,
        policy_approval: PolicyApproval | None = None,
    ) -> AppendResult:
        """Append one audit row, timing it for the audit write latency histogram."""
        started = time.perf_counter()
        try:
            return await self.store.append(
                draft,
                claim_digest=claim_digest,
                outbox=outbox or (),
                approval=approval,
                policy_approval=policy_approval,
            )
        finally:
            metrics().audit_write_latency.observe(time.perf_counter() - started)

    async def _accept(
        self,
        verified: VerifiedProof,
        binding: Any,
        client: ClientInfo,
        now: float,
        policy_result: Any = None,
    ) -> Outcome:
        intent = verified.intent
        event_id = new_event_id()
        payload = self._accepted_body(verified, event_id, now)
        # Every accepted proof is one proof.verified row; one that answers an approval
        # request names it in `detail`, and the request's pending -> approved CAS commits
        # with this very row (webhooks get approval.approved as well).
        transition = binding if isinstance(binding, ApprovalTransition) else None
        event_type = "proof.verified"
        if transition is not None:
            payload["approval_id"] = transition.approval_id
        outbox = self.outbox_for("proof.verified", payload) if self.outbox_for else []
        if transition is not None and self.outbox_for:
            outbox = [*outbox, *self.outbox_for("approval.approved", payload)]
        draft = self._draft(
            event_id,
            now,
            event_type,
            "accepted",
            client,
            sub=intent.sub,
            kid=verified.key.kid,
            ctx=intent.ctx,
            proof_id=verified.proof_id,
            detail=f"approval {transition.approval_id}" if transition is not None else None,
        )
        # The approval request's CAS (check 8) and an N-of-M approval row (check 9)
        # both commit in the same transaction as the audit row, or neither does.
        result = await self._append(
            draft,
            claim_digest=verified.digest,
            outbox=outbox,
            approval=transition,
            policy_approval=getattr(policy_result, "approval_row", None),
        )
        if result.transition_failed:
            # Decided or expired between check 8 and the commit (another request won).
            exc: ProofError = ApprovalExpired(
                "the approval request was decided or expired before this proof arrived"
            )
            parsed = verified.parsed
            return await self._reject(exc, parsed.proof, parsed.intent, parsed, client, now)
        if result.replayed or result.record is None:
            # Lost the race to a concurrent copy on this or another instance.
            exc = Replayed("this proof was already accepted")
            parsed = verified.parsed
            return await self._reject(exc, parsed.proof, parsed.intent, parsed, client, now)
        record = result.record
        payload["leaf_index"] = record.seq - 1
        if self.on_accepted is not None:
            await self.on_accepted(verified, record, binding)
        # --- policy engine: report the N-of-M state after the commit ------------
        after_accept = getattr(self.policy, "after_accept", None)
        if policy_result is not None and after_accept is not None:
            payload.update(await after_accept(verified, record, policy_result))
        # --- end policy engine ---------------------------------------------------------------
        log.info(
            "proof.verified",
            proof_id=verified.proof_id,
            sub=intent.sub,
            kid=verified.key.kid,
            tx_type=draft.tx_type,
            audit_event_id=event_id,
            api_key=client.api_key_id,
        )
        return Outcome(True, 200, payload, record=record)

    def _accepted_body(self, verified: VerifiedProof, event_id: str, now: float) -> dict[str, Any]:
        intent = verified.intent
        return {
            "valid": True,
            "proof_id": verified.proof_id,
            "sub": intent.sub,
            "kid": verified.key.kid,
            "alg": verified.parsed.proof.alg,
            "context": intent.ctx,
            "iat": intent.iat,
            "exp": intent.exp,
            "user_verified": verified.user_verified,
            "verified_at": iso(now),
            "audit_event_id": event_id,
        }

    async def _reject(
        self,
        exc: ProofError,
        proof: Proof | None,
        intent: Intent | None,
        parsed: ParsedProof | None,
        client: ClientInfo,
        now: float,
    ) -> Outcome:
        pid: str | None = None
        if parsed is not None:
            pid = parsed.proof_id
        elif proof is not None:
            pid = make_proof_id(intent_digest(proof.intent))
        event_id = new_event_id()
        extra = {k: v for k, v in exc.extra.items() if isinstance(v, str | int | float | bool)}
        body_extra = {"proof_id": pid, "audit_event_id": event_id, **extra}
        outbox = (
            self.outbox_for(
                "proof.rejected",
                {
                    "code": exc.code,
                    "detail": exc.detail,
                    "proof_id": pid,
                    "sub": intent.sub if intent else None,
                    "audit_event_id": event_id,
                    "rejected_at": iso(now),
                },
            )
            if self.outbox_for
            else []
        )
        draft = self._draft(
            event_id,
            now,
            "proof.rejected",
            "rejected",
            client,
            sub=intent.sub if intent else None,
            kid=proof.kid if proof is not None else None,
            ctx=intent.ctx if intent else None,
            proof_id=pid,
            error_code=exc.code,
            detail=exc.detail,
        )
        result = await self._append(draft, outbox=outbox)
        log.info(
            "proof.rejected",
            code=exc.code,
            proof_id=pid,
            audit_event_id=event_id,
            api_key=client.api_key_id,
        )
        return Outcome(False, exc.status, body_extra, error=exc, record=result.record)

    def _draft(
        self,
        event_id: str,
        now: float,
        event_type: str,
        status: str,
        client: ClientInfo,
        *,
        sub: str | None = None,
        kid: str | None = None,
        ctx: Mapping[str, Any] | None = None,
        proof_id: str | None = None,
        error_code: str | None = None,
        detail: str | None = None,
    ) -> AuditDraft:
        tx_type = amount = currency = None
        key_id = blob = None
        if ctx is not None:
            tx_type = ctx.get("type") if isinstance(ctx.get("type"), str) else None
            raw_amount = ctx.get("amount_minor")
            amount = raw_amount if type(raw_amount) is int else None
            raw_currency = ctx.get("currency")
            currency = (
                raw_currency if isinstance(raw_currency, str) and len(raw_currency) <= 8 else None
            )
            key_id, blob = self.keyring.encrypt(_json.encode(ctx), event_id.encode("ascii"))
        return AuditDraft(
            event_id=event_id,
            time=now,
            event_type=event_type,
            status=status,  # type: ignore[arg-type]
            sub=sub,
            kid=kid,
            tx_type=tx_type,
            amount_minor=amount,
            currency=currency,
            error_code=error_code,
            proof_id=proof_id,
            client_ip=client.ip,
            user_agent=(client.user_agent or "")[:256] or None,
            detail=detail[:500] if detail else None,
            context_key_id=key_id,
            context_ct=blob,
        )

    async def record_event(
        self,
        event_type: str,
        client: ClientInfo,
        *,
        sub: str | None = None,
        kid: str | None = None,
        ctx: Mapping[str, Any] | None = None,
        detail: str | None = None,
        status: str = "info",
        error_code: str | None = None,
        proof_id: str | None = None,
        outbox_payload: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Audit a non-verification event (key registered/revoked, approval changes...)."""
        now = self.clock()
        event_id = new_event_id()
        draft = self._draft(
            event_id,
            now,
            event_type,
            status,
            client,
            sub=sub,
            kid=kid,
            ctx=ctx,
            proof_id=proof_id,
            error_code=error_code,
            detail=detail,
        )
        outbox = (
            self.outbox_for(event_type, {**outbox_payload, "audit_event_id": event_id})
            if self.outbox_for and outbox_payload is not None
            else []
        )
        result = await self._append(draft, outbox=outbox)
        assert result.record is not None
        return result.record

    async def record_transition(
        self,
        event_type: str,
        client: ClientInfo,
        transition: ApprovalTransition,
        *,
        sub: str | None = None,
        ctx: Mapping[str, Any] | None = None,
        detail: str | None = None,
        outbox_payload: dict[str, Any] | None = None,
    ) -> AuditRecord | None:
        """Audit an approval state change atomically with its compare-and-set.

        Returns None, writing nothing, when the request was no longer in the state the
        transition needs (decided, or not yet/already past its deadline).
        """
        now = self.clock()
        event_id = new_event_id()
        draft = self._draft(
            event_id, now, event_type, "info", client, sub=sub, ctx=ctx, detail=detail
        )
        outbox = (
            self.outbox_for(event_type, {**outbox_payload, "audit_event_id": event_id})
            if self.outbox_for and outbox_payload is not None
            else []
        )
        result = await self._append(draft, outbox=outbox, approval=transition)
        return None if result.transition_failed else result.record

    def decrypt_context(self, record: AuditRecord) -> Any:
        d = record.draft
        if d.context_ct is None or d.context_key_id is None:
            return None
        plaintext = self.keyring.decrypt(d.context_key_id, d.context_ct, d.event_id.encode("ascii"))
        return msgspec.json.decode(plaintext)


def resolved_key(record: KeyRecord) -> ResolvedKey | None:
    try:
        public_key = load_public_key_der(record.public_key)
    except KeyFormatError:
        return None
    return ResolvedKey(
        kid=record.kid,
        alg=record.alg,
        public_key=public_key,
        public_key_der=record.public_key,
        sub=record.sub,
        status=record.status,
        sign_count=record.sign_count,
    )
