"""Backend-neutral pieces: migrations on disk, audit row mapping, filters and cursors."""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.resources
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from proof_messenger.audit.chain import micros_to_time, time_to_micros

from .base import (
    ApprovalRecord,
    ApprovalTransition,
    AuditDraft,
    AuditFilter,
    AuditRecord,
    AuditStatus,
    RegistrationChallenge,
)

MAX_PAGE = 1000
ITER_CHUNK = 500

# Column order shared by both backends' SELECT/INSERT of audit rows.
AUDIT_DRAFT_FIELDS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "status",
    "sub",
    "kid",
    "tx_type",
    "amount_minor",
    "currency",
    "error_code",
    "proof_id",
    "client_ip",
    "user_agent",
    "detail",
    "context_key_id",
    "context_ct",
)
AUDIT_COLUMNS: tuple[str, ...] = (
    "seq",
    "time_us",
    *AUDIT_DRAFT_FIELDS,
    "prev_hash",
    "entry_hash",
)
# Literal SQL (no string building), checked against AUDIT_COLUMNS at import.
AUDIT_SELECT = (
    "SELECT seq, time_us, event_id, event_type, status, sub, kid, tx_type, amount_minor, "
    "currency, error_code, proof_id, client_ip, user_agent, detail, context_key_id, "
    "context_ct, prev_hash, entry_hash FROM audit"
)
assert AUDIT_SELECT.split(" FROM ")[0].removeprefix("SELECT ").split(", ") == list(AUDIT_COLUMNS)


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # e.g. "0001_initial"
    sql: str


@functools.cache
def load_migrations(dialect: str) -> tuple[Migration, ...]:
    """The versioned .sql files shipped inside the package, in name order."""
    folder = importlib.resources.files("proof_messenger.store") / "migrations" / dialect
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    if not found:
        raise RuntimeError(f"no migrations found for {dialect!r} (package data missing?)")
    return tuple(sorted(found, key=lambda m: m.name))


def audit_row_values(record: AuditRecord) -> tuple[Any, ...]:
    d = record.draft
    return (
        record.seq,
        time_to_micros(d.time),
        *(getattr(d, name) for name in AUDIT_DRAFT_FIELDS),
        record.prev_hash,
        record.entry_hash,
    )


def audit_record_from_row(row: Sequence[Any]) -> AuditRecord:
    seq, time_us, *rest = row
    fields = dict(zip(AUDIT_DRAFT_FIELDS, rest[: len(AUDIT_DRAFT_FIELDS)], strict=True))
    prev_hash, entry_hash = rest[len(AUDIT_DRAFT_FIELDS) :]
    for blob in ("context_ct",):
        if fields[blob] is not None:
            fields[blob] = bytes(fields[blob])
    fields["status"] = cast(AuditStatus, fields["status"])
    draft = AuditDraft(time=micros_to_time(int(time_us)), **fields)
    return AuditRecord(
        seq=int(seq), draft=draft, prev_hash=bytes(prev_hash), entry_hash=bytes(entry_hash)
    )


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The seq below which the next page starts; ValueError for anything we did not issue."""
    if len(cursor) > 32:
        raise ValueError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("invalid cursor") from None
    if not raw.startswith("s") or not raw[1:].isdigit():
        raise ValueError("invalid cursor")
    return int(raw[1:])


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")


def audit_where(
    flt: AuditFilter, before_seq: int | None, placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """A parameterised WHERE clause; ``placeholder(n)`` renders the n-th (1-based) parameter.

    Time range is half-open: ``start <= time < end``.
    """
    clauses: list[str] = []
    params: list[Any] = []

    def add(sql: str, value: Any) -> None:
        params.append(value)
        clauses.append(sql.format(placeholder(len(params))))

    if before_seq is not None:
        add("seq < {}", before_seq)
    if flt.start is not None:
        add("time_us >= {}", time_to_micros(flt.start))
    if flt.end is not None:
        add("time_us < {}", time_to_micros(flt.end))
    if flt.sub is not None:
        add("sub = {}", flt.sub)
    if flt.event_type is not None:
        add("event_type = {}", flt.event_type)
    if flt.status is not None:
        add("status = {}", flt.status)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return where, params


# --- approvals (issue 5) ---------------------------------------------------------------------
APPROVAL_COLUMNS: tuple[str, ...] = (
    "id",
    "sub",
    "aud",
    "nonce",
    "intent_digest",
    "intent_key_id",
    "intent_ct",
    "page_token_hash",
    "created_at",
    "expires_at",
    "status",
    "require_uv",
    "api_key_id",
    "decided_at",
    "proof_id",
    "audit_event_id",
)
APPROVAL_SELECT = (
    "SELECT id, sub, aud, nonce, intent_digest, intent_key_id, intent_ct, page_token_hash, "
    "created_at, expires_at, status, require_uv, api_key_id, decided_at, proof_id, "
    "audit_event_id FROM approvals"
)
assert APPROVAL_SELECT.split(" FROM ")[0].removeprefix("SELECT ").split(", ") == list(
    APPROVAL_COLUMNS
)
REGISTRATION_SELECT = (
    "SELECT token_hash, sub, challenge, options_json, created_at, expires_at, used "
    "FROM webauthn_challenges"
)


def approval_values(record: ApprovalRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in APPROVAL_COLUMNS)


def approval_from_row(row: Sequence[Any]) -> ApprovalRecord:
    f = dict(zip(APPROVAL_COLUMNS, row, strict=True))
    for blob in ("nonce", "intent_digest", "intent_ct", "page_token_hash"):
        f[blob] = bytes(f[blob])
    f["require_uv"] = bool(f["require_uv"])
    return ApprovalRecord(**f)


def registration_from_row(row: Sequence[Any]) -> RegistrationChallenge:
    return RegistrationChallenge(
        token_hash=bytes(row[0]),
        sub=row[1],
        challenge=bytes(row[2]),
        options_json=row[3],
        created_at=row[4],
        expires_at=row[5],
        used=bool(row[6]),
    )


# Compare-and-set UPDATEs for approval transitions (literal SQL; parameters: transition_args).
# Deciding (approved/declined) needs the request still open; expiring needs it overdue.
# Exactly one row changes, or none and the caller writes nothing for that item.
_TRANSITION_DECIDE = (
    "UPDATE approvals SET status = {1}, decided_at = {2}, proof_id = {3}, audit_event_id = {4} "
    "WHERE id = {5} AND status = 'pending' AND expires_at > {6}"
)
_TRANSITION_EXPIRE = (
    "UPDATE approvals SET status = {1}, decided_at = {2}, proof_id = {3}, audit_event_id = {4} "
    "WHERE id = {5} AND status = 'pending' AND expires_at <= {6}"
)
TRANSITION_SQL: dict[tuple[str, bool], str] = {
    ("sqlite", False): _TRANSITION_DECIDE.format(*["?"] * 7),
    ("sqlite", True): _TRANSITION_EXPIRE.format(*["?"] * 7),
    ("postgres", False): _TRANSITION_DECIDE.format(*[f"${i}" for i in range(7)]),
    ("postgres", True): _TRANSITION_EXPIRE.format(*[f"${i}" for i in range(7)]),
}


def transition_sql(t: ApprovalTransition, dialect: str) -> str:
    return TRANSITION_SQL[(dialect, t.status == "expired")]


def transition_args(t: ApprovalTransition, event_id: str) -> tuple[Any, ...]:
    return (t.status, t.at, t.proof_id, event_id, t.approval_id, t.at)
