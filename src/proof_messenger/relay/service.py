"""The verification pipeline: protocol checks 1-9 against the store, then the audit row.

Checks 1-6 are the pure protocol verifier; this module adds what needs state: the key
registry (5), the sign count of passkeys (6), replay (7), approval requests (8) and
business policy (9). Every outcome, accepted or rejected, becomes exactly one audit
row, and the answer is built only after that row has committed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgspec
import structlog

from ..audit.crypto import Keyring
from ..protocol import (
    ALG_ES256,
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
    MalformedProof,
    Replayed,
    SubjectMismatch,
    WebAuthnSignCount,
)
from ..protocol.intent import Intent
from ..protocol.intent import digest as intent_digest
from ..protocol.intent import proof_id as make_proof_id
from ..protocol.keys import KeyFormatError, load_public_key_der
from ..store.base import (
    AppendEntry,
    AppendResult,
    ApprovalTransition,
    AuditDraft,
    AuditRecord,
    KeyRecord,
    OutboxEvent,
    PolicyApproval,
    ReplayKey,
    Store,
)
from .config import Settings
from .metrics import metrics
from .timefmt import utc_parts

__all__ = ["ClientInfo", "Outcome", "VerificationService", "new_event_id", "new_event_ids"]

log = structlog.get_logger("proof_messenger.verify")
_RESOLVED_MAX = 4096
_json = msgspec.json.Encoder()


def replay_key(parsed: ParsedProof) -> ReplayKey:
    """The replay claim of a proof: its intent digest, placed by the same intent's exp."""
    return ReplayKey(parsed.intent.exp, parsed.digest)


#: The 80 bits after the timestamp: 74 random bits around the version (7) and variant (10).
_V7_RANDOM = ((1 << 80) - 1) & ~(0xF << 76) & ~(0b11 << 62)
_V7_MARKS = 0x7 << 76 | 0b10 << 62
_MS48 = (1 << 48) - 1


def _format_v7(ms: int, rand: int) -> str:
    """The canonical text form (8-4-4-4-12 lowercase hex) of a UUIDv7, as ``str(UUID)``."""
    h = "%032x" % ((ms & _MS48) << 80 | (rand & _V7_RANDOM) | _V7_MARKS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so event ids sort like the log.

    Built straight from ``time_ns`` and ``os.urandom`` as text: ``uuid.UUID`` validation
    and formatting cost several µs per audit row."""
    return _format_v7(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10)))


def new_event_ids(count: int) -> list[str]:
    """``count`` UUIDv7s for one ``/verify/batch`` call: one clock read, one urandom call."""
    ms = time.time_ns() // 1_000_000
    raw = os.urandom(10 * count)
    return [_format_v7(ms, int.from_bytes(raw[i : i + 10])) for i in range(0, 10 * count, 10)]


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds (``2026-11-25T21:43:00.123Z``), exactly what
    ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` gives with
    ``Z`` for ``+00:00``."""
    prefix, us = utc_parts(ts)
    return f"{prefix}.{us // 1000:03d}Z"


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
        #: KeyRecord -> its ResolvedKey, keyed by the record's value (every field). A
        #: ResolvedKey is a pure function of its record, so an equal record gets the same
        #: one; any change (revocation, sign count) is an unequal record, resolved afresh:
        #: this is no cache of key status. Keyed by value, not by ``id(record)``: the SQLite
        #: store hands back one object per cached row, but the PostgreSQL store reads a new
        #: object per request, and an identity key then kept one dead entry per request
        #: (up to _RESOLVED_MAX, about 4 MB per worker) without ever hitting. The lookup
        #: costs about 0.2 us more than by identity (dataclass hash of the same object).
        self._resolved: dict[KeyRecord, ResolvedKey | None] = {}

    # --- the pipeline --------------------------------------------------------------------------
    async def verify(
        self,
        body: bytes | Mapping[str, Any] | Proof,
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
                if await self.store.is_claimed(replay_key(parsed)):
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
            ) and await self.store.is_claimed(replay_key(parsed)):
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

    # --- /verify/batch ---------------------------------------------------------------------------
    async def verify_batch(
        self,
        items: Sequence[Any],
        *,
        cbor: bool,
        client: ClientInfo,
        identity: Identity | None = None,
    ) -> list[Outcome]:
        """Checks 1-9 for every entry of a batch; one outcome per entry, in order.

        Each entry gets the checks, the error code and the audit row it would get from
        :meth:`verify` alone; what is shared is the work around them. The clock is read
        once, the keys of the whole call are read in ONE store query (no cache: a
        revocation is seen by the next call), approval requests likewise, and every audit
        row goes to the group committer as ONE submission (one transaction, rows in batch
        order). Among entries with the same intent the first in batch order wins: a later
        copy that passes checks 1-6 is ``replayed`` (the claim in the commit decides, as
        for concurrent single proofs, for a copy accepted before this call).

        Entries that need per-proof async work take :meth:`verify` instead, concurrently
        with the rest and in batch order among copies of one intent: WebAuthn proofs (the
        sign-count compare-and-set), proofs answering an approval request (its
        compare-and-set), and all entries when a policy hook is installed or the approval
        hook cannot look nonces up in bulk.
        """
        if self.policy is not None or (
            self.approvals is not None and getattr(self.approvals, "find_many", None) is None
        ):
            return await self._verify_each(items, cbor=cbor, client=client, identity=identity)
        now = self.clock()
        verifier = self.verifier
        n = len(items)
        errors: list[ProofError | None] = [None] * n
        proofs: list[Proof | None] = [None] * n
        intents: list[Intent | None] = [None] * n
        parsed: list[ParsedProof | None] = [None] * n
        verified: list[VerifiedProof | None] = [None] * n
        # Digests (intents) whose entries take the single-proof path, in batch order.
        single: set[bytes] = set()
        # --- checks 1-4: pure -------------------------------------------------------------
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                errors[i] = MalformedProof("each batch entry must be a proof envelope object")
                continue
            try:
                proof = proofs[i] = verifier.parse(item, cbor=cbor)
                intent = intents[i] = verifier.decode_intent(proof)
                claims = parsed[i] = verifier.check_claims(proof, intent, now=now)
            except ProofError as exc:
                errors[i] = exc
                continue
            if proof.alg != ALG_ES256:
                single.add(claims.digest)
        # --- checks 5-6: the call's keys in one read, then signatures ----------------------
        kids = [c.proof.kid for c in parsed if c is not None and c.digest not in single]
        keys = await self._resolve_many(kids) if kids else {}
        for i, c in enumerate(parsed):
            if c is None or c.digest in single:
                continue
            try:
                key = verifier.check_key(c, keys.get(c.proof.kid))
                checked = verifier.check_signature(c, key)
                if identity is not None and identity.sub != c.intent.sub:
                    raise SubjectMismatch("the user token's subject is not the proof's subject")
            except ProofError as exc:
                errors[i] = exc
                continue
            verified[i] = checked
        # --- check 8: which proofs answer an approval request (one read) -------------------
        if self.approvals is not None:
            nonces = [vp.intent.nonce for vp in verified if vp is not None]
            if nonces:
                found = await self.approvals.find_many(nonces)  # type: ignore[attr-defined]
                if found:
                    for vp in verified:
                        if vp is not None and vp.intent.nonce in found:
                            single.add(vp.digest)
        # --- the single-proof path for the entries that need it, in the background -------
        tasks: dict[int, asyncio.Task[Outcome]] = {}
        if single:
            # In batch order: the copies of one intent (the first wins), and the assertions
            # of one passkey (each sign-count compare-and-set follows the one before, as
            # for proofs sent one by one; concurrent ones would fail as false clones).
            previous: dict[bytes | str, asyncio.Task[Outcome]] = {}
            for i, c in enumerate(parsed):
                if c is None or errors[i] is not None or c.digest not in single:
                    continue
                chain = (c.digest,) if c.proof.alg == ALG_ES256 else (c.digest, c.proof.kid)
                before = [previous[k] for k in chain if k in previous]
                task = asyncio.ensure_future(self._after(before, c.proof, cbor, client, identity))
                tasks[i] = task
                for k in chain:
                    previous[k] = task
        # --- the audit rows of all other entries: ONE submission -------------------------
        at = iso(now)
        ids = new_event_ids(n - len(tasks))
        entries: list[AppendEntry] = []
        #: per submitted row: the entry, its accepted proof (None: a rejection), its body
        planned: list[tuple[int, VerifiedProof | None, dict[str, Any]]] = []
        seen: set[bytes] = set()
        outbox_for = self.outbox_for
        for i in range(n):
            if i in tasks:
                continue
            event_id = ids[len(entries)]
            vp = verified[i]
            if vp is not None:
                if vp.digest not in seen:
                    seen.add(vp.digest)
                    payload = self._accepted_body(vp, event_id, at)
                    draft = self._draft(
                        event_id,
                        now,
                        "proof.verified",
                        "accepted",
                        client,
                        sub=vp.intent.sub,
                        kid=vp.key.kid,
                        ctx=vp.intent.ctx,
                        proof_id=vp.proof_id,
                    )
                    outbox = outbox_for("proof.verified", payload) if outbox_for else ()
                    entries.append((draft, replay_key(vp.parsed), outbox))
                    planned.append((i, vp, payload))
                    continue
                # A later copy of an intent accepted earlier in this call.
                errors[i] = Replayed("this proof was already accepted")
            error = errors[i]
            assert error is not None
            draft, outbox, body = self._rejection(
                error, proofs[i], intents[i], parsed[i], client, now, event_id, at
            )
            entries.append((draft, None, outbox))
            planned.append((i, None, body))
        try:
            results = await self._append_many(entries) if entries else []
        finally:
            # The single-path entries finish (and are audited) whatever happens here.
            if tasks:
                await asyncio.wait(tasks.values())
                for task in tasks.values():
                    if not task.cancelled():
                        task.exception()  # retrieved; raised below by task.result()
        outcomes: list[Outcome | None] = [None] * n
        for i, task in tasks.items():
            outcomes[i] = task.result()  # raises e.g. StoreUnavailable, as verify() would
        lost: list[int] = []  # accepted entries whose claim an earlier call had taken
        accepted = 0
        for (i, vp, body), result, row in zip(planned, results, entries, strict=True):
            if vp is None:
                outcomes[i] = self._rejected(errors[i], row[0], body, result, client)
            elif result.replayed or result.record is None:
                errors[i] = Replayed("this proof was already accepted")
                lost.append(i)
            else:
                record = result.record
                body["leaf_index"] = record.seq - 1
                if self.on_accepted is not None:
                    await self.on_accepted(vp, record, None)
                outcomes[i] = Outcome(True, 200, body, record=record)
                accepted += 1
        if lost:
            rejections = []
            for i, event_id in zip(lost, new_event_ids(len(lost)), strict=True):
                error = errors[i]
                assert error is not None
                rejections.append(
                    self._rejection(
                        error, proofs[i], intents[i], parsed[i], client, now, event_id, at
                    )
                )
            results = await self._append_many([(d, None, o) for d, o, _ in rejections])
            for i, (draft, _, body), result in zip(lost, rejections, results, strict=True):
                outcomes[i] = self._rejected(errors[i], draft, body, result, client)
        log.info(
            "proof.batch",
            proofs=n,
            accepted=accepted,
            rejected=len(planned) - accepted,
            single_path=len(tasks),
            api_key=client.api_key_id,
        )
        return outcomes  # type: ignore[return-value]  # every slot is filled above

    def _rejected(
        self,
        error: ProofError | None,
        draft: AuditDraft,
        body: dict[str, Any],
        result: AppendResult,
        client: ClientInfo,
    ) -> Outcome:
        """A batch rejection whose row has committed: its log line and its outcome."""
        assert error is not None
        self._log_rejected(error, draft, client)
        return Outcome(False, error.status, body, error=error, record=result.record)

    async def _after(
        self,
        before: list[asyncio.Task[Outcome]],
        proof: Proof,
        cbor: bool,
        client: ClientInfo,
        identity: Identity | None,
    ) -> Outcome:
        """:meth:`verify` once the entries it follows (same intent, same passkey) have
        finished."""
        if before:
            await asyncio.wait(before)
        return await self.verify(proof, cbor=cbor, client=client, identity=identity)

    async def _verify_each(
        self,
        items: Sequence[Any],
        *,
        cbor: bool,
        client: ClientInfo,
        identity: Identity | None,
    ) -> list[Outcome]:
        """Every entry through :meth:`verify`, concurrently except copies of one intent and
        assertions of one passkey, which run in batch order (used when a policy hook
        applies to every proof)."""

        async def one(item: Any, before: list[asyncio.Task[Outcome]]) -> Outcome:
            if before:
                await asyncio.wait(before)
            if not isinstance(item, dict):
                exc = MalformedProof("each batch entry must be a proof envelope object")
                return await self.reject_unparsed(exc, client)
            return await self.verify(item, cbor=cbor, client=client, identity=identity)

        previous: dict[Any, asyncio.Task[Outcome]] = {}
        tasks: list[asyncio.Task[Outcome]] = []
        for item in items:
            chain: list[Any] = []
            if isinstance(item, dict):
                intent, kid = item.get("intent"), item.get("kid")
                if isinstance(intent, str | bytes):
                    chain.append(intent)
                if item.get("alg") != ALG_ES256 and isinstance(kid, str):
                    chain.append(("kid", kid))
            task = asyncio.ensure_future(one(item, [previous[k] for k in chain if k in previous]))
            for k in chain:
                previous[k] = task
            tasks.append(task)
        return list(await asyncio.gather(*tasks))

    async def _resolve_many(self, kids: Sequence[str]) -> dict[str, ResolvedKey]:
        """The call's keys, each distinct kid read once, all in one store query."""
        records = await self.store.get_keys(kids)
        resolved: dict[str, ResolvedKey] = {}
        for kid, record in records.items():
            key = self._resolved_key(record)
            if key is not None:
                resolved[kid] = key
        return resolved

    async def _append_many(self, entries: Sequence[AppendEntry]) -> list[AppendResult]:
        """One submission for a batch's rows, timed once for the write latency histogram."""
        started = time.perf_counter()
        try:
            return await self.store.append_many(entries)
        finally:
            metrics().observe_audit_write(time.perf_counter() - started)

    def _check_signature(
        self, parsed: ParsedProof, key: ResolvedKey, require_uv: bool
    ) -> VerifiedProof:
        verifier = self._verifier_uv if require_uv else self.verifier
        return verifier.check_signature(parsed, key)

    async def _resolve(self, kid: str) -> ResolvedKey | None:
        record = await self.store.get_key(kid)
        if record is None:
            return None
        return self._resolved_key(record)

    def _resolved_key(self, record: KeyRecord) -> ResolvedKey | None:
        try:
            return self._resolved[record]
        except KeyError:
            pass
        key = resolved_key(record)
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()
        self._resolved[record] = key
        return key

    # --- outcomes ------------------------------------------------------------------------------
    async def _append(
        self,
        draft: AuditDraft,
        *,
        claim: ReplayKey | None = None,
        outbox: list[OutboxEvent] | None = None,
        approval: ApprovalTransition | None = None,
        policy_approval: PolicyApproval | None = None,
    ) -> AppendResult:
        """Append one audit row, timing it for the audit write latency histogram."""
        started = time.perf_counter()
        try:
            return await self.store.append(
                draft,
                claim=claim,
                outbox=outbox or (),
                approval=approval,
                policy_approval=policy_approval,
            )
        finally:
            metrics().observe_audit_write(time.perf_counter() - started)

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
        payload = self._accepted_body(verified, event_id, iso(now))
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
            claim=replay_key(verified.parsed),
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
        log.bind().info(  # = log.info, resolved without the proxy's __getattr__ (hot path)
            "proof.verified",
            proof_id=verified.proof_id,
            sub=intent.sub,
            kid=verified.key.kid,
            tx_type=draft.tx_type,
            audit_event_id=event_id,
            api_key=client.api_key_id,
        )
        return Outcome(True, 200, payload, record=record)

    def _accepted_body(self, verified: VerifiedProof, event_id: str, at: str) -> dict[str, Any]:
        """The answer (and ``proof.verified`` webhook payload); ``at`` is ``iso(now)``."""
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
            "verified_at": at,
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
        event_id = new_event_id()
        draft, outbox, body_extra = self._rejection(
            exc, proof, intent, parsed, client, now, event_id, iso(now)
        )
        result = await self._append(draft, outbox=outbox)
        self._log_rejected(exc, draft, client)
        return Outcome(False, exc.status, body_extra, error=exc, record=result.record)

    def _rejection(
        self,
        exc: ProofError,
        proof: Proof | None,
        intent: Intent | None,
        parsed: ParsedProof | None,
        client: ClientInfo,
        now: float,
        event_id: str,
        at: str,
    ) -> tuple[AuditDraft, list[OutboxEvent], dict[str, Any]]:
        """A rejection's audit draft, webhook outbox and answer fields (``at`` = iso(now))."""
        pid: str | None = None
        if parsed is not None:
            pid = parsed.proof_id
        elif proof is not None:
            pid = make_proof_id(intent_digest(proof.intent))
        sub = intent.sub if intent else None
        extra = {k: v for k, v in exc.extra.items() if isinstance(v, str | int | float | bool)}
        body_extra = {"proof_id": pid, "audit_event_id": event_id, **extra}
        outbox = (
            self.outbox_for(
                "proof.rejected",
                {
                    "code": exc.code,
                    "detail": exc.detail,
                    "proof_id": pid,
                    "sub": sub,
                    "audit_event_id": event_id,
                    "rejected_at": at,
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
            sub=sub,
            kid=proof.kid if proof is not None else None,
            ctx=intent.ctx if intent else None,
            proof_id=pid,
            error_code=exc.code,
            detail=exc.detail,
        )
        return draft, outbox, body_extra

    @staticmethod
    def _log_rejected(exc: ProofError, draft: AuditDraft, client: ClientInfo) -> None:
        log.info(
            "proof.rejected",
            code=exc.code,
            proof_id=draft.proof_id,
            audit_event_id=draft.event_id,
            api_key=client.api_key_id,
        )

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
            # whole microseconds, as stored: the writer need not rebuild the draft to round
            time=round(now * 1_000_000) / 1_000_000,
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
