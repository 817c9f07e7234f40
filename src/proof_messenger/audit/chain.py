"""The audit hash chain: canonical entry bytes and verification.

Every committed audit row carries ``entry_hash = chain_hash(prev_hash, entry_bytes(seq, draft))``
and the ``prev_hash`` of the row before it (``GENESIS`` for seq 1). Altering, deleting or
inserting a row therefore breaks a hash or a link that :func:`verify_chain` names by seq.

``entry_bytes`` is also the content of the future Merkle leaf (``SHA-256(0x00 || entry)``),
so it covers only what is stored: the context *ciphertext*, never plaintext. It is
deterministic CBOR without floats: ``time`` is encoded as integer microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import cbor2

from .records import AuditDraft, AuditRecord, ChainHead

__all__ = [
    "CHAIN_DOMAIN",
    "GENESIS",
    "ChainHead",
    "ChainProblem",
    "ChainReport",
    "ChainVerifier",
    "chain_hash",
    "entry_bytes",
    "micros_to_time",
    "normalize_time",
    "seal",
    "seal_entry",
    "time_to_micros",
    "verify_chain",
    "verify_chain_async",
]

GENESIS = bytes(32)
CHAIN_DOMAIN = b"proof-messenger/v1 audit"

ProblemKind = Literal["altered", "missing", "broken_link", "head_mismatch"]


def time_to_micros(t: float) -> int:
    """Seconds (float) to integer microseconds, the only time unit that is hashed or stored."""
    return round(t * 1_000_000)


def micros_to_time(us: int) -> float:
    """Inverse of :func:`time_to_micros`; ``time_to_micros(micros_to_time(us)) == us``."""
    return us / 1_000_000


def normalize_time(draft: AuditDraft) -> AuditDraft:
    """The draft as it reads back from a database (time rounded to whole microseconds)."""
    t = micros_to_time(time_to_micros(draft.time))
    if t == draft.time:
        return draft
    return AuditDraft(**{**_draft_dict(draft), "time": t})


def _draft_dict(draft: AuditDraft) -> dict[str, Any]:
    return {name: getattr(draft, name) for name in AuditDraft.__slots__}


# Short, stable CBOR keys. Never rename or reuse one: they are part of every hash.
_KEYS: tuple[tuple[str, str], ...] = (
    ("event_id", "eid"),
    ("event_type", "type"),
    ("status", "st"),
    ("sub", "sub"),
    ("kid", "kid"),
    ("tx_type", "txt"),
    ("amount_minor", "amt"),
    ("currency", "cur"),
    ("error_code", "err"),
    ("proof_id", "pid"),
    ("client_ip", "ip"),
    ("user_agent", "ua"),
    ("detail", "det"),
    ("context_key_id", "ckid"),
    ("context_ct", "cct"),
)


def _deterministic_order(keys: Iterable[str]) -> tuple[str, ...]:
    """RFC 8949 core deterministic order of text keys: bytewise order of their encodings."""
    return tuple(sorted(keys, key=lambda k: cbor2.dumps(k)))


#: (attribute, CBOR key) of every hashed field, already in deterministic key order, so the
#: map can be built in that order and encoded without cbor2's per-call sort (canonical=True
#: would give the same bytes: every value is an int, text, bytes or null, which cbor2
#: always encodes in their shortest form; tests/audit check the two agree).
_ORDERED: tuple[tuple[str, str], ...] = tuple(
    (attr, key)
    for key in _deterministic_order([k for _, k in _KEYS] + ["seq", "t"])
    for attr in [dict((k, a) for a, k in _KEYS).get(key, key)]
)
_SCALARS = (str, int, bytes, type(None))
_ORDERED_KEYS = tuple(key for _, key in _ORDERED)
_FIELD_ATTRS = tuple(attr for attr, key in _ORDERED if key not in ("seq", "t"))
_fields = operator.attrgetter(*_FIELD_ATTRS)
_T_AT, _SEQ_AT = _ORDERED_KEYS.index("t"), _ORDERED_KEYS.index("seq")
assert _T_AT == 0 and _SEQ_AT > _T_AT  # "t" sorts first (shortest key); used below


def entry_bytes(seq: int, draft: AuditDraft) -> bytes:
    """Deterministic CBOR (RFC 8949 core deterministic order) of every draft field plus seq."""
    values = _fields(draft)
    for attr, value in zip(_FIELD_ATTRS, values, strict=True):
        if value.__class__ not in _SCALARS and not isinstance(value, _SCALARS):
            # floats are not canonical; maps would need their keys sorted
            raise TypeError(f"audit field {attr!r} must be text, bytes, an integer or null")
    cut = _SEQ_AT - 1  # values exclude "t" (index 0), so seq goes after cut of them
    ordered = (time_to_micros(draft.time), *values[:cut], seq, *values[cut:])
    return cbor2.dumps(dict(zip(_ORDERED_KEYS, ordered, strict=True)))


def chain_hash(prev_hash: bytes, entry: bytes) -> bytes:
    """SHA-256(domain || 0x00 || prev_hash || entry)."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    return hashlib.sha256(CHAIN_DOMAIN + b"\x00" + prev_hash + entry).digest()


def seal(seq: int, prev_hash: bytes, draft: AuditDraft) -> AuditRecord:
    """Place a draft in the chain after ``prev_hash`` (time normalised to microseconds)."""
    return seal_entry(seq, prev_hash, draft)[0]


def seal_entry(seq: int, prev_hash: bytes, draft: AuditDraft) -> tuple[AuditRecord, bytes]:
    """:func:`seal`, plus the entry bytes it hashed (the Merkle leaf hashes them too, so a
    store that appends encodes each row once)."""
    draft = normalize_time(draft)
    entry = entry_bytes(seq, draft)
    return (
        AuditRecord(
            seq=seq, draft=draft, prev_hash=prev_hash, entry_hash=chain_hash(prev_hash, entry)
        ),
        entry,
    )


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    kind: ProblemKind
    message: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    count: int  # rows checked
    last_seq: int
    head_hash: bytes  # entry_hash of the last row checked (GENESIS for an empty chain)
    problem: ChainProblem | None = None

    @property
    def first_bad_seq(self) -> int | None:
        return self.problem.seq if self.problem else None


class ChainVerifier:
    """Streaming verifier: :meth:`feed` rows in seq order, stop at the first problem.

    Usable from a sync loop or an async iterator, so the CLI can wrap it in a progress bar.
    """

    def __init__(self, from_seq: int = 1, prev_hash: bytes = GENESIS) -> None:
        self._expected_seq = from_seq
        self._prev_hash = prev_hash
        self._count = 0
        self._problem: ChainProblem | None = None

    @property
    def problem(self) -> ChainProblem | None:
        return self._problem

    def feed(self, record: AuditRecord) -> ChainProblem | None:
        """Check one row; return (and remember) the first problem found."""
        if self._problem is not None:
            return self._problem
        seq = record.seq
        if seq != self._expected_seq:
            if seq > self._expected_seq:
                msg = f"rows {self._expected_seq}..{seq - 1} are missing (deleted?)"
                return self._fail(self._expected_seq, "missing", msg)
            msg = f"row {seq} out of order or duplicated (expected {self._expected_seq})"
            return self._fail(seq, "broken_link", msg)
        if not hmac.compare_digest(record.prev_hash, self._prev_hash):
            msg = f"row {seq}: prev_hash does not match the entry_hash of row {seq - 1}"
            return self._fail(seq, "broken_link", msg)
        expected = chain_hash(record.prev_hash, entry_bytes(seq, record.draft))
        if not hmac.compare_digest(record.entry_hash, expected):
            msg = f"row {seq}: content does not match its entry_hash (altered)"
            return self._fail(seq, "altered", msg)
        self._count += 1
        self._expected_seq = seq + 1
        self._prev_hash = record.entry_hash
        return None

    def _fail(self, seq: int, kind: ProblemKind, message: str) -> ChainProblem:
        self._problem = ChainProblem(seq=seq, kind=kind, message=message)
        return self._problem

    def finish(self, head: ChainHead | None = None) -> ChainReport:
        """The report; with ``head`` also check that the rows end where the head says."""
        last_seq = self._expected_seq - 1
        if self._problem is None and head is not None:
            if head.seq != last_seq:
                kind: ProblemKind = "missing" if head.seq > last_seq else "head_mismatch"
                self._fail(
                    min(head.seq, last_seq) + 1,
                    kind,
                    f"chain head is at seq {head.seq} but the rows end at seq {last_seq}",
                )
            elif not hmac.compare_digest(head.entry_hash, self._prev_hash):
                self._fail(last_seq, "head_mismatch", f"row {last_seq} differs from the chain head")
        return ChainReport(
            ok=self._problem is None,
            count=self._count,
            last_seq=last_seq,
            head_hash=self._prev_hash,
            problem=self._problem,
        )


def verify_chain(records: Iterable[AuditRecord], head: ChainHead | None = None) -> ChainReport:
    """Walk rows in seq order from seq 1 and report the first altered/missing/inserted row."""
    verifier = ChainVerifier()
    for record in records:
        if verifier.feed(record) is not None:
            break
    return verifier.finish(head)


async def verify_chain_async(
    records: AsyncIterable[AuditRecord],
    head: ChainHead | None = None,
    progress: Callable[[int], None] | None = None,
) -> ChainReport:
    """Like :func:`verify_chain` over ``Store.iter_audit()``; ``progress(n)`` after each row."""
    verifier = ChainVerifier()
    async for record in records:
        if verifier.feed(record) is not None:
            break
        if progress is not None:
            progress(record.seq)
    return verifier.finish(head)
