"""Offline-verifiable audit receipts and the client side of the Merkle log.

A *receipt* is everything needed to prove, with no network and no trust in the relay,
that one audit entry is in the log: the canonical entry bytes (the Merkle leaf data; the
transaction context in it is ciphertext), its leaf index, the RFC 6962 inclusion proof and
a checkpoint (C2SP signed note) signed by the log key. :func:`verify_receipt` checks the
signature, recomputes the leaf hash from the entry bytes and replays the inclusion proof
against the signed root.

Log keys: a verifier is pinned as a PEM public key or a note verifier key string
(``<name>+<hash>+<base64>``). A new key is trusted only through a *rotation note*: a
signed note, signed by the old key (and the new one), naming both keys.

Pure apart from :func:`fetch_receipt` (httpx, imported lazily).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proof_messenger.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    key_id_of,
    open_note,
    parse_verifier_key,
)
from proof_messenger.audit.errors import AuditError, MerkleProofError
from proof_messenger.audit.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "ROTATION_HEADER",
    "Receipt",
    "ReceiptError",
    "VerifiedReceipt",
    "fetch_receipt",
    "key_id_of",
    "load_verifier",
    "rotation_text",
    "verify_consistency_step",
    "verify_receipt",
    "verify_rotation",
]

RECEIPT_VERSION = 1
ROTATION_HEADER = "proof-messenger/log-key-rotation/v1"
MAX_RECEIPT_BYTES = 1 << 20
_MAX_PROOF = 64


class ReceiptError(AuditError):
    """A receipt is malformed or does not verify; the message says which check failed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ReceiptError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ReceiptError(f"{what} is not valid base64") from None


def load_verifier(text: str, name: str | None = None) -> NoteVerifier:
    """A pinned log key from a PEM public key (needs ``name``, the origin) or a verifier key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        if name is None:
            raise ReceiptError("a PEM log key needs the log origin to build a note verifier")
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ReceiptError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ReceiptError("the log key must be Ed25519")
        try:
            return NoteVerifier.from_public_key(name, key)
        except ValueError as exc:
            raise ReceiptError(str(exc)) from None
    try:
        verifier = parse_verifier_key(text)
    except ValueError as exc:
        raise ReceiptError(f"not a PEM key or note verifier key: {exc}") from None
    if name is not None and verifier.name != name:
        raise ReceiptError(f"verifier key is for {verifier.name!r}, not the log {name!r}")
    return verifier


# --------------------------------------------------------------------------- key rotation


def rotation_text(origin: str, old: NoteVerifier, new: NoteVerifier) -> str:
    """Body of a rotation note: the old key hands the log over to the new one."""
    return (
        f"{ROTATION_HEADER}\n{origin}\n"
        f"old {old.verifier_key}\nnew {new.verifier_key}\n"
        f"old-id {key_id_of(old.public_key)}\nnew-id {key_id_of(new.public_key)}\n"
    )


def verify_rotation(note: str, old: NoteVerifier) -> NoteVerifier:
    """Check a rotation note signed by ``old``; return the verifier of the new key."""
    try:
        opened = open_note(note, [old])
    except CheckpointError as exc:
        raise ReceiptError(f"rotation note is not signed by the old key: {exc}") from None
    lines = opened.text.rstrip("\n").split("\n")
    if len(lines) != 6 or lines[0] != ROTATION_HEADER:
        raise ReceiptError("malformed rotation note")
    origin = lines[1]
    if lines[2] != f"old {old.verifier_key}":
        raise ReceiptError("rotation note does not start from the trusted key")
    if not lines[3].startswith("new "):
        raise ReceiptError("malformed rotation note: no new key")
    try:
        new = parse_verifier_key(lines[3][4:])
    except ValueError as exc:
        raise ReceiptError(f"rotation note names an invalid new key: {exc}") from None
    if new.name != origin:
        raise ReceiptError("rotation note: new key name is not the log origin")
    try:  # the new key must also have signed (proves possession, prevents mis-handover)
        open_note(note, [new])
    except CheckpointError:
        raise ReceiptError("rotation note is not signed by the new key") from None
    return new


# --------------------------------------------------------------------------- receipts


@dataclass(frozen=True)
class Receipt:
    """An audit entry with its inclusion proof and a signed checkpoint (JSON on disk)."""

    event_id: str
    leaf_index: int
    entry: bytes  # canonical entry bytes (Merkle leaf data)
    inclusion_proof: tuple[bytes, ...]
    checkpoint: str  # signed note
    version: int = RECEIPT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "event_id": self.event_id,
                "leaf_index": self.leaf_index,
                "entry": _b64(self.entry),
                "inclusion_proof": [_b64(h) for h in self.inclusion_proof],
                "checkpoint": self.checkpoint,
            },
            indent=2,
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Receipt:
        if len(text) > MAX_RECEIPT_BYTES:
            raise ReceiptError("receipt is too large")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReceiptError(f"receipt is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != RECEIPT_VERSION:
            raise ReceiptError(f"not a version-{RECEIPT_VERSION} receipt")
        proof = doc.get("inclusion_proof")
        if not isinstance(proof, list) or len(proof) > _MAX_PROOF:
            raise ReceiptError("inclusion_proof must be a list of base64 hashes")
        index, event_id, note = doc.get("leaf_index"), doc.get("event_id"), doc.get("checkpoint")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ReceiptError("leaf_index must be a non-negative integer")
        if not isinstance(event_id, str) or not isinstance(note, str):
            raise ReceiptError("event_id and checkpoint must be strings")
        return cls(
            event_id=event_id,
            leaf_index=index,
            entry=_unb64(doc.get("entry"), "entry"),
            inclusion_proof=tuple(_unb64(h, f"proof element {i}") for i, h in enumerate(proof)),
            checkpoint=note,
        )


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a verified receipt proves: this entry is leaf ``leaf_index`` of the signed tree."""

    checkpoint: Checkpoint
    leaf_index: int
    leaf_hash: bytes
    event_id: str
    fields: dict[str, Any] = field(repr=False)  # decoded entry (context stays ciphertext)
    signed_by: str = ""


def _trusted(verifier: NoteVerifier | Iterable[NoteVerifier]) -> list[NoteVerifier]:
    return [verifier] if isinstance(verifier, NoteVerifier) else list(verifier)


def decode_entry(entry: bytes) -> dict[str, Any]:
    """The entry's CBOR map (keys as in ``audit.chain``); raises ``ReceiptError``."""
    try:
        fields = cbor2.loads(entry)
    except Exception as exc:  # cbor2 raises several types for garbage
        raise ReceiptError(f"entry is not valid CBOR: {exc}") from None
    if not isinstance(fields, dict):
        raise ReceiptError("entry is not a CBOR map")
    return fields


def verify_receipt(
    receipt: Receipt, verifier: NoteVerifier | Iterable[NoteVerifier]
) -> VerifiedReceipt:
    """Signature, leaf hash, inclusion; and the entry names the receipt's seq and event id."""
    trusted = _trusted(verifier)
    try:
        opened = open_note(receipt.checkpoint, trusted)
        checkpoint = Checkpoint.from_body(opened.text)
    except CheckpointError as exc:
        raise ReceiptError(f"checkpoint signature: {exc}") from None
    fields = decode_entry(receipt.entry)
    if fields.get("seq") != receipt.leaf_index + 1:
        raise ReceiptError(
            f"entry is for seq {fields.get('seq')!r}, not leaf {receipt.leaf_index} "
            f"(seq {receipt.leaf_index + 1})"
        )
    if fields.get("eid") != receipt.event_id:
        raise ReceiptError("entry's event id does not match the receipt's event_id")
    leaf = leaf_hash(receipt.entry)
    try:
        verify_inclusion(
            leaf, receipt.leaf_index, checkpoint.size, receipt.inclusion_proof, checkpoint.root_hash
        )
    except MerkleProofError as exc:
        raise ReceiptError(f"inclusion proof: {exc}") from None
    sig = opened.verified[0]
    return VerifiedReceipt(
        checkpoint=checkpoint,
        leaf_index=receipt.leaf_index,
        leaf_hash=leaf,
        event_id=receipt.event_id,
        fields=fields,
        signed_by=f"{sig.name}+{sig.key_hash:08x}",
    )


def verify_consistency_step(
    old_checkpoint: str,
    new_checkpoint: str,
    proof: Sequence[bytes],
    verifier: NoteVerifier | Iterable[NoteVerifier],
) -> tuple[Checkpoint, Checkpoint]:
    """Both notes signed, same origin, and the old tree is a prefix of the new one."""
    trusted = _trusted(verifier)
    try:
        old = Checkpoint.parse(old_checkpoint, trusted)
        new = Checkpoint.parse(new_checkpoint, trusted)
    except CheckpointError as exc:
        raise ReceiptError(f"checkpoint signature: {exc}") from None
    check_consistency(old, new, proof)
    return old, new


def check_consistency(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """The consistency part of :func:`verify_consistency_step` for already-opened checkpoints."""
    if old.origin != new.origin:
        raise ReceiptError(f"origin changed from {old.origin!r} to {new.origin!r}")
    if new.size < old.size:
        raise ReceiptError(
            f"the log shrank from {old.size} to {new.size} entries: history was truncated"
        )
    if old.size == 0:
        return  # the empty tree is a prefix of every tree
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ReceiptError(f"consistency proof element {i} is not {HASH_SIZE} bytes")
    try:
        verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)
    except MerkleProofError as exc:
        raise ReceiptError(
            f"the tree of size {new.size} is not an extension of the checkpoint of size "
            f"{old.size} ({exc}): history was rewritten"
        ) from None


# --------------------------------------------------------------------------- network


def fetch_receipt(
    base_url: str, event_id: str, api_key: str | None, *, timeout: float = 10.0
) -> Receipt:
    """Fetch the inclusion proof (with a covering checkpoint) and the entry; not verified.

    Reading entries needs an API key with ``audit:read``; proofs and checkpoints are public.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = base_url.rstrip("/")
    with httpx.Client(timeout=timeout, headers=headers) as http:
        r = http.get(f"{base}/log/proof/inclusion", params={"event_id": event_id})
        if r.status_code != 200:
            raise ReceiptError(f"inclusion proof: HTTP {r.status_code}: {r.text[:300]}")
        proof = r.json()
        index = receipt_leaf_index(proof)
        e = http.get(f"{base}/log/entries", params={"start": index, "end": index + 1})
        if e.status_code != 200:
            raise ReceiptError(f"entries: HTTP {e.status_code}: {e.text[:300]}")
        return receipt_from_answers(event_id, proof, e.json())


def receipt_leaf_index(proof: Any) -> int:
    """The leaf index from a ``GET /log/proof/inclusion`` answer."""
    try:
        return int(proof["leaf_index"])
    except (TypeError, KeyError, ValueError):
        raise ReceiptError("inclusion proof answer has no leaf_index") from None


def receipt_from_answers(event_id: str, proof: Any, entries_doc: Any) -> Receipt:
    """A receipt from the relay's inclusion-proof and entries answers (not yet verified)."""
    index = receipt_leaf_index(proof)
    note = proof.get("checkpoint")
    if not isinstance(note, str):
        raise ReceiptError("relay returned no checkpoint covering the entry")
    entries = entries_doc.get("entries") if isinstance(entries_doc, dict) else None
    if not isinstance(entries, list) or len(entries) != 1:
        raise ReceiptError(f"relay returned no entry at leaf {index}")
    return Receipt(
        event_id=event_id,
        leaf_index=index,
        entry=_unb64(entries[0]["entry"], "entry"),
        inclusion_proof=tuple(_unb64(h, "proof") for h in proof["hashes"]),
        checkpoint=note,
    )
