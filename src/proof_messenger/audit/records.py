"""The audit log's records: what one row holds, before and after it joins the chain.

They live here, with the chain and the Merkle tree that hash them, so that the audit
package depends on nothing but the standard library, cryptography and cbor2; the store
persists these records and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["AuditDraft", "AuditRecord", "AuditStatus", "ChainHead"]

AuditStatus = Literal["accepted", "rejected", "info"]


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An audit row before the store assigns its place in the chain."""

    event_id: str
    time: float
    event_type: str  # e.g. "proof.verified", "proof.rejected", "key.registered"
    status: AuditStatus
    sub: str | None = None
    kid: str | None = None
    tx_type: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    error_code: str | None = None
    proof_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    detail: str | None = None
    context_key_id: str | None = None  # master-key id that encrypted the context
    context_ct: bytes | None = None  # nonce || AES-256-GCM ciphertext of the context


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A committed audit row: the draft plus its position in the hash chain."""

    seq: int  # 1-based, gap-free; leaf index in the Merkle log is seq - 1
    draft: AuditDraft
    prev_hash: bytes
    entry_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The chain-head row: last committed seq and its entry_hash (seq 0 / zeros when empty).

    Comparing the rows with the head is what detects a truncated tail in ``verify_chain``.
    """

    seq: int
    entry_hash: bytes
