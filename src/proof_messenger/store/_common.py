"""Backend-neutral pieces: migrations on disk, audit row mapping, filters and cursors."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import operator
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from proof_messenger.audit.chain import micros_to_time, time_to_micros
from proof_messenger.audit.records import AuditStatus

from .base import (
    ApiKeyRecord,
    ApprovalRecord,
    ApprovalTransition,
    AuditDraft,
    AuditFilter,
    AuditRecord,
    CheckpointRecord,
    DeliveryTask,
    KeyRecord,
    LogKeyRecord,
    RegistrationChallenge,
    WebhookDelivery,
    WebhookSubscription,
)

MAX_PAGE = 1000
#: Most log entries one read returns (``GET /log/entries``).
MAX_LOG_ENTRIES = 1000
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
    """The versioned .sql files shipped inside the package, in name order.

    Read from the package directory (the relay is installed as files, never zipped):
    ``importlib.resources`` would import zipfile and eight importlib modules into the
    ``serve`` parent and every worker for it, about 7 ms of CPU each."""
    folder = Path(__file__).with_name("migrations") / dialect
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    if not found:
        raise RuntimeError(f"no migrations found for {dialect!r} (package data missing?)")
    return tuple(sorted(found, key=lambda m: m.name))


_draft_fields = operator.attrgetter(*AUDIT_DRAFT_FIELDS)


def audit_row_values(record: AuditRecord) -> tuple[Any, ...]:
    d = record.draft
    return (
        record.seq,
        time_to_micros(d.time),
        *_draft_fields(d),
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


# --- webhooks -----------------------------------------------------------
#: Namespace of delivery ids (uuid5): the same (event, type, subscription) always gets the
#: same id, on every instance and after every restart, so receivers can deduplicate by it.
WEBHOOK_DELIVERY_NAMESPACE = uuid.UUID("8d1f4e8a-5b0c-4f57-9a43-3c2f6b1d7e21")
DELIVERY_COLUMNS = (
    "d.id, d.outbox_id, d.subscription_id, d.event_type, o.event_id, d.status, d.attempts, "
    "d.created_at, d.window_start, d.next_attempt_at, d.delivered_at, d.last_status, "
    "d.last_error"
)
DELIVERY_FROM = " FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id"
TASK_COLUMNS = DELIVERY_COLUMNS + ", s.url, s.secret_key_id, s.secret_ct, o.payload, o.created_at"
TASK_FROM = DELIVERY_FROM + " JOIN webhook_subscriptions s ON s.id = d.subscription_id"
SUBSCRIPTION_COLUMNS = "id, url, events, secret_key_id, secret_ct, source, created_at, deleted_at"
SUBSCRIPTION_SELECT = (
    "SELECT id, url, events, secret_key_id, secret_ct, source, created_at, deleted_at "
    "FROM webhook_subscriptions"
)
MAX_WEBHOOK_ERROR = 500


def webhook_delivery_id(event_id: str, event_type: str, subscription_id: str) -> str:
    return str(
        uuid.uuid5(WEBHOOK_DELIVERY_NAMESPACE, f"{event_id}\n{event_type}\n{subscription_id}")
    )


#: The ``events`` lists of live subscriptions. The audit transaction writes an outbox row
#: only for an event type one of them wants: fan-out would expand any other row into no
#: delivery at all, and a subscription only receives events that happen after it exists.
LIVE_SUBSCRIPTION_EVENTS = "SELECT events FROM webhook_subscriptions WHERE deleted_at IS NULL"


def subscription_from_row(row: Sequence[Any]) -> WebhookSubscription:
    return WebhookSubscription(
        id=row[0],
        url=row[1],
        events=tuple(json.loads(row[2])),
        secret_key_id=row[3],
        secret_ct=bytes(row[4]),
        source=row[5],
        created_at=float(row[6]),
        deleted_at=None if row[7] is None else float(row[7]),
    )


def subscription_values(sub: WebhookSubscription) -> tuple[Any, ...]:
    """Parameters in SUBSCRIPTION_COLUMNS order."""
    return (
        sub.id,
        sub.url,
        json.dumps(list(sub.events)),
        sub.secret_key_id,
        sub.secret_ct,
        sub.source,
        sub.created_at,
        sub.deleted_at,
    )


def delivery_from_row(row: Sequence[Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row[0],
        outbox_id=int(row[1]),
        subscription_id=row[2],
        event_type=row[3],
        event_id=row[4],
        status=row[5],
        attempts=int(row[6]),
        created_at=float(row[7]),
        window_start=float(row[8]),
        next_attempt_at=float(row[9]),
        delivered_at=None if row[10] is None else float(row[10]),
        last_status=row[11],
        last_error=row[12],
    )


def task_from_row(row: Sequence[Any]) -> DeliveryTask:
    return DeliveryTask(
        delivery=delivery_from_row(row[:13]),
        url=row[13],
        secret_key_id=row[14],
        secret_ct=bytes(row[15]),
        payload=bytes(row[16]),
        event_created_at=float(row[17]),
    )


def matching_subscriptions(
    subs: Sequence[WebhookSubscription], event_type: str, created_at: float
) -> list[WebhookSubscription]:
    """Live subscriptions that want the event and existed when it happened."""
    return [
        s
        for s in subs
        if s.deleted_at is None and event_type in s.events and s.created_at <= created_at
    ]


def encode_delivery_cursor(created_at: float, delivery_id: str) -> str:
    raw = json.dumps([created_at, delivery_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_delivery_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, id) of the last row of the previous page; ValueError if not ours."""
    if len(cursor) > 200:
        raise ValueError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, delivery_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("invalid cursor") from None
    if not isinstance(created_at, int | float) or not isinstance(delivery_id, str):
        raise ValueError("invalid cursor")
    return float(created_at), delivery_id


# --- end webhooks ----------------------------------------------------------------------------------
# --- approvals ---------------------------------------------------------------------
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
    "user_roles",
)
APPROVAL_SELECT = (
    "SELECT id, sub, aud, nonce, intent_digest, intent_key_id, intent_ct, page_token_hash, "
    "created_at, expires_at, status, require_uv, api_key_id, decided_at, proof_id, "
    "audit_event_id, user_roles FROM approvals"
)
assert APPROVAL_SELECT.split(" FROM ")[0].removeprefix("SELECT ").split(", ") == list(
    APPROVAL_COLUMNS
)
REGISTRATION_SELECT = (
    "SELECT token_hash, sub, challenge, options_json, created_at, expires_at, used "
    "FROM webauthn_challenges"
)


def approval_values(record: ApprovalRecord) -> tuple[Any, ...]:
    values = {name: getattr(record, name) for name in APPROVAL_COLUMNS}
    roles = record.user_roles
    values["user_roles"] = None if roles is None else json.dumps(sorted(roles))
    return tuple(values.values())


def approval_from_row(row: Sequence[Any]) -> ApprovalRecord:
    f = dict(zip(APPROVAL_COLUMNS, row, strict=True))
    for blob in ("nonce", "intent_digest", "intent_ct", "page_token_hash"):
        f[blob] = bytes(f[blob])
    f["require_uv"] = bool(f["require_uv"])
    if f["user_roles"] is not None:
        f["user_roles"] = tuple(json.loads(f["user_roles"]))
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


# --- key registry, API keys and the log's checkpoints and keys: one row mapping for both
# backends; they differ only in how a list of strings is stored (a native array in
# PostgreSQL, JSON text in SQLite), which the caller passes as ``strings``.
SELECT_KEY = (
    "SELECT kid, sub, alg, public_key, label, status, created_at, revoked_at, revoke_reason, "
    "sign_count, transports, attestation_format FROM keys"
)
SELECT_API_KEY = "SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_keys"
SELECT_CHECKPOINT = "SELECT size, root, note, created_at, key_id FROM checkpoints"
SELECT_LOG_KEY = "SELECT key_id, public_key, created_at, rotated_from, rotation_note FROM log_keys"

Strings = Callable[[Any], tuple[str, ...]]


def key_from_row(row: Sequence[Any], strings: Strings) -> KeyRecord:
    return KeyRecord(
        kid=row[0],
        sub=row[1],
        alg=row[2],
        public_key=bytes(row[3]),
        label=row[4],
        status=row[5],
        created_at=row[6],
        revoked_at=row[7],
        revoke_reason=row[8],
        sign_count=row[9],
        transports=strings(row[10]),
        attestation_format=row[11],
    )


def api_key_from_row(row: Sequence[Any], strings: Strings) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[0],
        name=row[1],
        secret_hash=bytes(row[2]),
        scopes=strings(row[3]),
        created_at=row[4],
        revoked_at=row[5],
    )


def checkpoint_from_row(row: Sequence[Any]) -> CheckpointRecord:
    return CheckpointRecord(
        size=int(row[0]), root=bytes(row[1]), note=row[2], created_at=row[3], key_id=row[4]
    )


def log_key_from_row(row: Sequence[Any]) -> LogKeyRecord:
    return LogKeyRecord(
        key_id=row[0],
        public_key=bytes(row[1]),
        created_at=row[2],
        rotated_from=row[3],
        rotation_note=row[4],
    )
