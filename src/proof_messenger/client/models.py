"""Typed results of the SDK (plain dataclasses; ``raw`` keeps the full JSON answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ProofMessengerAPIError, api_error

__all__ = [
    "Approval",
    "AuditEvent",
    "Authorization",
    "BatchEntry",
    "BatchResult",
    "KeyInfo",
    "VerifyResult",
]

FINAL_APPROVAL_STATUSES = frozenset({"approved", "declined", "expired"})


@dataclass(frozen=True)
class Authorization:
    """N-of-M state of the transaction a proof approved (policy rules with ``approvals``).

    ``status`` is ``complete`` once enough distinct qualifying subjects approved; until then
    ``pending``, with ``still_needed`` saying how many more and of which roles.
    """

    status: str
    transaction_key: str
    rule: str
    required: int | None
    approvals: list[dict[str, Any]]
    still_needed: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Authorization:
        return cls(
            status=doc["status"],
            transaction_key=doc["transaction_key"],
            rule=doc["rule"],
            required=doc.get("required"),
            approvals=list(doc.get("approvals") or []),
            still_needed=doc.get("still_needed"),
        )


@dataclass(frozen=True)
class VerifyResult:
    """An accepted proof. ``context`` is what the user signed: compare it with what you
    are about to execute before executing it."""

    proof_id: str
    sub: str
    kid: str
    alg: str
    context: dict[str, Any]
    iat: int
    exp: int
    user_verified: bool | None
    verified_at: str
    audit_event_id: str
    leaf_index: int | None = None
    #: Present when a policy rule needs several approvers (see :class:`Authorization`).
    authorization: Authorization | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VerifyResult:
        return cls(
            proof_id=doc["proof_id"],
            sub=doc["sub"],
            kid=doc["kid"],
            alg=doc["alg"],
            context=doc["context"],
            iat=doc["iat"],
            exp=doc["exp"],
            user_verified=doc.get("user_verified"),
            verified_at=doc["verified_at"],
            audit_event_id=doc["audit_event_id"],
            leaf_index=doc.get("leaf_index"),
            authorization=(
                Authorization.from_json(doc["authorization"]) if doc.get("authorization") else None
            ),
            raw=doc,
        )


@dataclass(frozen=True)
class BatchEntry:
    """One proof of a batch: ``result`` if accepted, else ``error`` (never raised)."""

    result: VerifyResult | None = None
    error: ProofMessengerAPIError | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass(frozen=True)
class BatchResult:
    entries: list[BatchEntry]
    accepted: int
    rejected: int

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BatchResult:
        entries: list[BatchEntry] = []
        for item in doc["results"]:
            if item.get("valid"):
                entries.append(BatchEntry(result=VerifyResult.from_json(item)))
            else:
                entries.append(BatchEntry(error=api_error(int(item.get("status", 422)), item)))
        return cls(entries=entries, accepted=doc["accepted"], rejected=doc["rejected"])


@dataclass(frozen=True)
class Approval:
    id: str
    status: str  # pending | approved | declined | expired
    expires_at: str | None = None
    nonce: str | None = None
    intent: str | None = None  # base64url of the intent the user is asked to sign
    approval_url: str | None = None
    sub: str | None = None
    context: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_APPROVAL_STATUSES

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Approval:
        return cls(
            id=doc["id"],
            status=doc["status"],
            expires_at=doc.get("expires_at"),
            nonce=doc.get("nonce"),
            intent=doc.get("intent"),
            approval_url=doc.get("approval_url"),
            sub=doc.get("sub"),
            context=doc.get("context"),
            raw=doc,
        )


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    sub: str
    alg: str
    status: str
    created_at: str
    label: str | None = None
    revoked_at: str | None = None
    revoke_reason: str | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> KeyInfo:
        return cls(
            kid=doc["kid"],
            sub=doc["sub"],
            alg=doc["alg"],
            status=doc["status"],
            created_at=doc["created_at"],
            label=doc.get("label"),
            revoked_at=doc.get("revoked_at"),
            revoke_reason=doc.get("revoke_reason"),
        )


@dataclass(frozen=True)
class AuditEvent:
    event_id: str
    seq: int
    time: str
    type: str
    status: str
    sub: str | None = None
    kid: str | None = None
    proof_id: str | None = None
    error_code: str | None = None
    tx_type: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    detail: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AuditEvent:
        return cls(
            event_id=doc["event_id"],
            seq=doc["seq"],
            time=doc["time"],
            type=doc["type"],
            status=doc["status"],
            sub=doc.get("sub"),
            kid=doc.get("kid"),
            proof_id=doc.get("proof_id"),
            error_code=doc.get("error_code"),
            tx_type=doc.get("tx_type"),
            amount_minor=doc.get("amount_minor"),
            currency=doc.get("currency"),
            detail=doc.get("detail"),
            raw=doc,
        )
