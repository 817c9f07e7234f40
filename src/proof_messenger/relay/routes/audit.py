"""GET /audit (filtered, newest first, cursor pagination) and GET /audit/{event_id}."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...audit.errors import DecryptionError
from ...store.base import AuditFilter, AuditRecord
from ..http import query_int, query_one
from ..problems import HTTPProblem, json_response
from ..service import iso
from ..state import relay_state

_STATUSES = frozenset({"accepted", "rejected", "info"})


def event_view(record: AuditRecord) -> dict[str, object]:
    d = record.draft
    return {
        "event_id": d.event_id,
        "seq": record.seq,
        "leaf_index": record.seq - 1,
        "time": iso(d.time),
        "type": d.event_type,
        "status": d.status,
        "sub": d.sub,
        "kid": d.kid,
        "tx_type": d.tx_type,
        "amount_minor": d.amount_minor,
        "currency": d.currency,
        "error_code": d.error_code,
        "proof_id": d.proof_id,
        "client_ip": d.client_ip,
        "user_agent": d.user_agent,
        "detail": d.detail,
        "entry_hash": record.entry_hash.hex(),
        "prev_hash": record.prev_hash.hex(),
    }


def _time_param(request: Request, name: str) -> float | None:
    raw = query_one(request, name)
    if raw is None or raw == "":
        return None
    try:
        return float(int(raw))
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise HTTPProblem(
            400,
            "invalid_request",
            "Invalid query",
            f"{name} must be Unix seconds or an ISO 8601 time",
        ) from exc


def _text_param(request: Request, name: str, max_len: int = 256) -> str | None:
    raw = query_one(request, name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len:
        raise HTTPProblem(400, "invalid_request", "Invalid query", f"{name} is too long")
    return raw


async def list_audit(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "audit:read")
    status = query_one(request, "status")  # an enum: empty is not "any", it is invalid
    if status is not None and status not in _STATUSES:
        raise HTTPProblem(
            400, "invalid_request", "Invalid query", "status must be accepted, rejected or info"
        )
    flt = AuditFilter(
        start=_time_param(request, "start"),
        end=_time_param(request, "end"),
        sub=_text_param(request, "sub"),
        event_type=_text_param(request, "type", 64),
        status=status,
    )
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = _text_param(request, "cursor", 128)
    try:
        page = await state.store.list_audit(flt, limit, cursor)
    except ValueError as exc:
        raise HTTPProblem(400, "invalid_request", "Invalid cursor", str(exc)) from exc
    return json_response(
        {"events": [event_view(r) for r in page.records], "next_cursor": page.next_cursor}
    )


async def get_audit(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "audit:read")
    event_id = request.path_params["event_id"]
    if len(event_id) > 64:
        raise HTTPProblem(404, "not_found", "No such audit event")
    record = await state.store.get_audit(event_id)
    if record is None:
        raise HTTPProblem(404, "not_found", "No such audit event")
    view = event_view(record)
    try:
        view["context"] = state.service.decrypt_context(record)
    except DecryptionError:
        view["context"] = None
        view["context_error"] = "the context cannot be decrypted with the configured master keys"
    return json_response(view)


routes = [
    Route("/audit", list_audit, methods=["GET"]),
    Route("/audit/{event_id}", get_audit, methods=["GET"]),
]
