"""The one storage interface the relay talks to.

Two backends implement it (``sqlite.py``, the embedded default, and ``postgres.py`` for
many relay instances on one database). Everything that must hold *across* relay instances
lives behind this interface and is enforced by the database, never by process memory:

* replay protection: a digest is claimed by a unique constraint in the same transaction
  that writes the accepted audit row, so two instances can never both accept it;
* the audit hash chain: each batch of rows is appended under the chain-head row lock,
  so the chain never forks, while many requests share one transaction (group commit);
* key revocation: read from the table on every verification, no cache of status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import msgspec

from proof_messenger.audit.merkle import CompactTree
from proof_messenger.audit.records import AuditDraft, AuditRecord, ChainHead

__all__ = [
    "ApiKeyRecord",
    "AppendEntry",
    "AppendResult",
    "ApprovalRecord",
    "ApprovalTransition",
    "AuditDraft",
    "AuditFilter",
    "AuditPage",
    "AuditRecord",
    "ChainHead",
    "CheckpointRecord",
    "CommitObserver",
    "DuplicateKey",
    "KeyRecord",
    "LogEntry",
    "LogKeyRecord",
    "OutboxEvent",
    "PolicyApproval",
    "RegistrationChallenge",
    "ReplayKey",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
__all__ += ["DeliveryPage", "DeliveryTask", "WebhookDelivery", "WebhookSubscription"]  # webhooks

KeyStatus = Literal["active", "revoked"]
ApprovalStatus = Literal["pending", "approved", "declined", "expired"]


class StoreError(Exception):
    """A storage problem that is not the caller's fault."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or refuses writes; the relay answers 503."""


class DuplicateKey(StoreError):
    """A key (or API key) with this id is already registered."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    kid: str
    sub: str
    alg: str  # "ES256" or "webauthn.ES256"
    public_key: bytes  # DER SubjectPublicKeyInfo
    created_at: float
    status: KeyStatus = "active"
    label: str | None = None
    revoked_at: float | None = None
    revoke_reason: str | None = None
    # WebAuthn credentials only
    sign_count: int = 0
    transports: tuple[str, ...] = ()
    attestation_format: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str  # public part of the key, shown in listings
    name: str
    secret_hash: bytes  # SHA-256 of the full key; compared in constant time
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None


_encode_json = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event written in the same transaction as its audit row.

    ``payload`` is the JSON body to deliver, or a map the store encodes to JSON only if
    a live subscription wants ``event_type`` (``body()``, called inside the commit): with
    no webhook configured, a proof's event costs no encoding at all. A map is encoded
    before ``append`` returns, so its owner must not change it until then (the relay's
    answer to a proof is that map; ``leaf_index`` is added after the commit).
    """

    event_type: str
    payload: bytes | Mapping[str, Any]

    def body(self) -> bytes:
        payload = self.payload
        return payload if isinstance(payload, bytes) else _encode_json(payload)


@dataclass(frozen=True, slots=True)
class AppendResult:
    record: AuditRecord | None  # None when the claim lost the race (replayed)
    replayed: bool = False
    #: The approval transition's compare-and-set failed (no longer pending, or the
    #: deadline condition did not hold); nothing was written for this item.
    transition_failed: bool = False


class ReplayKey(NamedTuple):
    """What a replay claim is keyed on: the intent digest, placed by the intent's ``exp``.

    Replay is keyed on the digest (protocol check 7). ``exp`` is a field of the same signed
    intent (the digest covers it), so two claims collide exactly when their digests do;
    it is part of the stored key only for locality: the digest is random, so keyed on it
    alone every claim landed on a random page of the replay index (one written page per
    claim once the table outgrew the cache), while exp-first keys of concurrent proofs
    sit together at the index's right edge, and expired claims form one key range.
    Build it from the intent the digest was computed from, never from anything else.
    """

    exp: int  # the intent's exp (seconds since the epoch)
    digest: bytes  # SHA-256 of the domain-separated intent


#: One row of :meth:`Store.append_many`: the draft, its replay claim (or None), its outbox.
AppendEntry = tuple[AuditDraft, ReplayKey | None, Sequence[OutboxEvent]]


# --- approval requests ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """An approval request: the server-built intent a user is asked to sign.

    The intent (which holds the context) is stored encrypted with the master keyring
    (AAD = the approval id); ``intent_digest`` is kept in clear so that check 8 can
    compare a proof with its request without decrypting anything.
    """

    id: str
    sub: str
    aud: str
    nonce: bytes
    intent_digest: bytes
    intent_key_id: str
    intent_ct: bytes
    page_token_hash: bytes  # SHA-256 of the approval page's token
    created_at: float
    expires_at: float
    status: ApprovalStatus = "pending"
    require_uv: bool = False
    api_key_id: str | None = None
    decided_at: float | None = None
    proof_id: str | None = None
    audit_event_id: str | None = None
    #: Roles from the end user's verified ID token given when the request was created
    #: (``X-User-Token``); the policy engine judges the answering proof with them.
    #: ``None`` when no user token was given.
    user_roles: tuple[str, ...] | None = None

    def effective_status(self, now: float) -> ApprovalStatus:
        """``expired`` for a pending request past its deadline, before the sweeper marks it."""
        if self.status == "pending" and now >= self.expires_at:
            return "expired"
        return self.status


@dataclass(frozen=True, slots=True)
class ApprovalTransition:
    """A compare-and-set on an approval, executed in the same transaction as an audit row.

    ``approved``/``declined`` need ``status = 'pending' AND expires_at > at``;
    ``expired`` needs ``status = 'pending' AND expires_at <= at``. The audit row's
    event id is recorded on the approval.
    """

    approval_id: str
    status: Literal["approved", "declined", "expired"]
    at: float
    proof_id: str | None = None


@dataclass(frozen=True, slots=True)
class RegistrationChallenge:
    """A one-use WebAuthn registration ceremony, found by the SHA-256 of its token."""

    token_hash: bytes
    sub: str
    challenge: bytes
    options_json: str
    created_at: float
    expires_at: float
    used: bool = False


@dataclass(frozen=True, slots=True)
class AuditFilter:
    start: float | None = None
    end: float | None = None
    sub: str | None = None
    event_type: str | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[AuditRecord] = field(default_factory=list)
    next_cursor: str | None = None


# --- webhooks -------------------------------------------------------
DeliveryStatus = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class WebhookSubscription:
    """A receiver URL and the events it wants; the secret is stored encrypted only."""

    id: str
    url: str
    events: tuple[str, ...]
    secret_key_id: str  # master key that encrypted the secret
    secret_ct: bytes  # nonce || AES-256-GCM(secret), associated data = the subscription id
    source: Literal["api", "config"]
    created_at: float
    deleted_at: float | None = None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One outbox event for one subscription; ``id`` is stable across retries."""

    id: str
    outbox_id: int
    subscription_id: str
    event_type: str
    event_id: str  # the audit event the outbox row belongs to
    status: DeliveryStatus
    attempts: int
    created_at: float
    window_start: float  # give-up clock starts here: creation, or the last replay
    next_attempt_at: float
    delivered_at: float | None = None
    last_status: int | None = None  # HTTP status of the last attempt (None: no response)
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryTask:
    """A leased delivery with everything needed to send it."""

    delivery: WebhookDelivery
    url: str
    secret_key_id: str
    secret_ct: bytes
    payload: bytes  # the outbox JSON payload ("data" of the body)
    event_created_at: float


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: list[WebhookDelivery] = field(default_factory=list)
    next_cursor: str | None = None


# --- end webhooks ----------------------------------------------------------------------------------
# --- policy engine -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PolicyApproval:
    """One subject's approval of a transaction that needs N-of-M approvals."""

    tx_key: str
    sub: str
    proof_id: str
    rule: str
    roles: tuple[str, ...]
    at: float


# --- end policy engine --------------------------------------------------------------------------


# --- Merkle log --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A signed tree head as stored: the C2SP note text and what it commits to."""

    size: int
    root: bytes
    note: str
    created_at: float
    key_id: str  # LogKeyRecord.key_id of the signing key


@dataclass(frozen=True, slots=True)
class LogKeyRecord:
    """One log signing key in the key history (raw Ed25519 public key)."""

    key_id: str  # hex SHA-256 of the raw public key, first 16 bytes
    public_key: bytes
    created_at: float
    rotated_from: str | None = None  # None only for the first key
    rotation_note: str | None = None  # signed note: old key vouches for the new one


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An audit row as a Merkle leaf: the row and the leaf hash stored with it."""

    record: AuditRecord
    leaf_hash: bytes | None


# --- end Merkle log ---------------------------------------------------------------------------


CommitObserver = Callable[[int, float, float], None]
"""``observer(rows, wait, duration)`` after every group commit that took rows (``rows``
appends; one whose replay claim lost writes nothing), times in seconds: ``wait`` from
the start of the commit until the backend took the batch, which it does once it holds
the chain's write turn (SQLite: the cross-process write lock; PostgreSQL: the chain
head's row lock; other workers' and instances' commits hold them), ``duration`` from
then until COMMIT returned. It runs on the event loop after the callers' results are
set, and must not block."""


@runtime_checkable
class Store(Protocol):
    """What the relay needs from a database. All methods are safe across instances."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        ...

    async def is_ready(self) -> bool:
        """Reachable and fully migrated."""
        ...

    # --- key registry --------------------------------------------------------------------------
    async def insert_key(self, record: KeyRecord) -> None: ...
    async def get_key(self, kid: str) -> KeyRecord | None: ...
    async def get_keys(self, kids: Sequence[str]) -> dict[str, KeyRecord]:
        """The registered keys among ``kids`` (absent ones are missing), in ONE read.

        ``/verify/batch`` reads each call's keys at once: no cache, so a revocation is
        seen by the next call as by ``get_key``."""
        ...

    async def list_keys(self, sub: str | None = None) -> list[KeyRecord]: ...
    async def revoke_key(self, kid: str, reason: str, at: float) -> KeyRecord | None: ...
    async def advance_sign_count(self, kid: str, seen: int, new: int) -> bool:
        """Compare-and-set of a WebAuthn sign count; False if another request moved it."""
        ...

    # --- API keys --------------------------------------------------------------------------------
    async def insert_api_key(self, record: ApiKeyRecord) -> None: ...
    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, key_id: str, at: float) -> bool: ...

    # --- replay + audit --------------------------------------------------------------------------
    async def is_claimed(self, key: ReplayKey) -> bool:
        """Fast pre-check for check 7; the binding decision is made in :meth:`append`.

        True also for a digest claimed before claims were keyed by ``exp`` (migration
        0006 keeps those claims in ``replay_v1``)."""
        ...

    async def append(
        self,
        draft: AuditDraft,
        *,
        claim: ReplayKey | None = None,
        outbox: Sequence[OutboxEvent] = (),
        approval: ApprovalTransition | None = None,
        policy_approval: PolicyApproval | None = None,  # policy engine
    ) -> AppendResult:
        """Durably append one audit row (group-committed with concurrent callers).

        With ``claim``, the claim is inserted into the replay table in the same
        transaction; if its digest is already claimed (also a claim from before migration
        0006), nothing is written and ``replayed`` is True.
        With ``approval``, the transition's compare-and-set runs in the same transaction;
        if it fails, nothing is written and ``transition_failed`` is True.

        With ``policy_approval``, the N-of-M approval row is inserted in the same
        transaction when the row is written (``ON CONFLICT (tx_key, sub) DO NOTHING``), so
        an accepted approval proof and its counted approval commit together or not at all.
        Returns only after the transaction has committed.
        """
        ...

    def observe_commits(self, observer: CommitObserver | None) -> None:
        """Report every group commit of this process to ``observer`` (None: stop)."""
        ...

    async def append_many(self, entries: Sequence[AppendEntry]) -> list[AppendResult]:
        """Append many rows in ONE transaction (one group-commit submission), in order.

        Each entry behaves like :meth:`append` with its ``claim`` and ``outbox``
        (no approval or policy row): a claim already taken, also by an earlier entry of
        the same call, writes nothing for that entry and reports ``replayed``. Returns
        the results in the entries' order, only after the transaction has committed.
        """
        ...

    async def prune_replay(self, before_exp: int, legacy_before: float, limit: int) -> int:
        """Delete at most ``limit`` replay claims that can no longer matter, in ONE short
        transaction per table, and return how many were deleted.

        First the claims with ``exp < before_exp``, in key order (one range at the left
        edge of the primary key); then, with what is left of ``limit``, the claims from
        before migration 0006 (``replay_v1``, digest only) accepted before
        ``legacy_before`` (seconds). Fewer than ``limit`` means nothing was left below the
        cutoffs (or another pruner holds the rest), so a caller deletes a backlog by
        calling again while it gets ``limit``: no call holds the write lock for long.
        The caller picks cutoffs below which check 4 refuses every proof as ``expired``
        before check 7 could look for its claim (``relay/retention.py``). ValueError if
        ``limit`` < 1.
        """
        ...

    async def get_audit(self, event_id: str) -> AuditRecord | None: ...
    async def list_audit(
        self, flt: AuditFilter, limit: int, cursor: str | None = None
    ) -> AuditPage: ...
    def iter_audit(self, from_seq: int = 1) -> AsyncIterator[AuditRecord]:
        """Every row in chain order (for `audit verify` and the Merkle log)."""
        ...

    async def audit_count(self) -> int: ...
    async def chain_head(self) -> ChainHead:
        """The committed chain head (added by the store work: ``audit verify`` needs it)."""
        ...

    # --- webhooks -----------------------------------------------------
    async def upsert_webhook_subscription(self, sub: WebhookSubscription) -> None:
        """Insert, or update url/events/secret of an existing id (keeps created_at; undeletes)."""
        ...

    async def insert_webhook_subscription(self, sub: WebhookSubscription) -> None:
        """Insert; :class:`DuplicateKey` if the id exists (even deleted)."""
        ...

    async def get_webhook_subscription(self, sub_id: str) -> WebhookSubscription | None:
        """The subscription unless unknown or deleted."""
        ...

    async def list_webhook_subscriptions(self) -> list[WebhookSubscription]: ...
    async def delete_webhook_subscription(self, sub_id: str, at: float) -> bool:
        """Soft delete (its deliveries stay for history but are no longer attempted)."""
        ...

    async def fan_out_outbox(self, now: float, limit: int) -> int:
        """Expand up to ``limit`` pending outbox rows into one delivery per matching live
        subscription created at or before the event, and mark the rows handed over
        (outbox status ``delivered``). Idempotent and safe across instances; returns the
        number of outbox rows expanded."""
        ...

    async def claim_due_deliveries(
        self, now: float, limit: int, lease_seconds: float, worker_id: str
    ) -> list[DeliveryTask]:
        """Lease due pending deliveries to ``worker_id`` until ``now + lease_seconds``;
        a lease that runs out (crashed worker) makes the delivery claimable again."""
        ...

    async def mark_delivered(
        self, delivery_id: str, worker_id: str, at: float, status_code: int
    ) -> bool:
        """Record a successful attempt; False if the lease was lost."""
        ...

    async def mark_failed(
        self,
        delivery_id: str,
        worker_id: str,
        next_attempt_at: float,
        error: str,
        status_code: int | None,
    ) -> bool:
        """Record a failed attempt and schedule the next one; False if the lease was lost."""
        ...

    async def mark_dead(
        self, delivery_id: str, worker_id: str, error: str, status_code: int | None
    ) -> bool:
        """Record a failed attempt and give up (dead letter); False if the lease was lost."""
        ...

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None: ...
    async def list_deliveries(
        self,
        subscription_id: str,
        status: str | None,
        limit: int,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """Newest first; ValueError for a bad cursor or limit."""
        ...

    async def replay_delivery(self, delivery_id: str, now: float) -> WebhookDelivery | None:
        """Make a dead (or delivered) delivery pending again, due now, with a fresh give-up
        window; a pending one is returned unchanged. None if unknown."""
        ...

    # --- end webhooks ----------------------------------------------------------------------------
    # --- approval requests and WebAuthn registration ceremonies ------------------------------
    async def insert_approval(self, record: ApprovalRecord) -> None: ...
    async def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...
    async def get_approval_by_nonce(self, nonce: bytes) -> ApprovalRecord | None: ...
    async def get_approvals_by_nonces(self, nonces: Sequence[bytes]) -> dict[bytes, ApprovalRecord]:
        """:meth:`get_approval_by_nonce` for many nonces in ONE read (``/verify/batch``)."""
        ...

    async def list_due_approvals(self, now: float, limit: int) -> list[ApprovalRecord]:
        """Pending requests whose deadline has passed (for the expiry sweeper)."""
        ...

    async def insert_registration(self, challenge: RegistrationChallenge) -> None: ...
    async def get_registration(self, token_hash: bytes, now: float) -> RegistrationChallenge | None:
        """The unused, unexpired ceremony for this token, without consuming it."""
        ...

    async def consume_registration(
        self, token_hash: bytes, now: float
    ) -> RegistrationChallenge | None:
        """Mark the ceremony used (compare-and-set); None if unknown, used or expired."""
        ...

    # --- policy engine -----------------------------------------------------------------
    async def add_policy_approval(self, approval: PolicyApproval) -> bool:
        """Record an approval; False (and nothing written) if this subject already approved."""
        ...

    async def list_policy_approvals(self, tx_key: str) -> list[PolicyApproval]:
        """The approvals of one transaction, oldest first (read from the primary)."""
        ...

    # --- end policy engine -----------------------------------------------------------------------

    # --- Merkle log --------------------------------------------------------------------
    async def merkle_tree(self) -> CompactTree:
        """The committed frontier (same transaction as the chain head: sizes always agree)."""
        ...

    async def perfect_roots(self, nodes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored hashes of complete perfect subtrees ``(level, idx)``; level 0 = leaf hash."""
        ...

    async def log_entries(self, start: int, end: int) -> list[LogEntry]:
        """Leaves ``[start, end)`` (leaf index = seq - 1) in order, at most 1000."""
        ...

    async def save_checkpoint(self, checkpoint: CheckpointRecord) -> CheckpointRecord:
        """Store a checkpoint unless one of that size exists; return the stored one."""
        ...

    async def latest_checkpoint(self) -> CheckpointRecord | None: ...
    async def get_checkpoint(self, size: int) -> CheckpointRecord | None: ...
    async def log_key_history(self) -> list[LogKeyRecord]:
        """Every log key, oldest first."""
        ...

    async def add_log_key(self, record: LogKeyRecord) -> bool:
        """Record a key; False if that key id is already recorded."""
        ...

    # --- end Merkle log --------------------------------------------------------------------------
