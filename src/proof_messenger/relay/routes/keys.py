"""The key registry: register, list and revoke signing keys."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ...protocol import ALG_ES256, b64u_decode, kid_for
from ...protocol.keys import KeyFormatError, load_public_key_der
from ...store.base import DuplicateKey, KeyRecord
from ..http import decode_model, query_one, read_body, resource
from ..problems import HTTPProblem, json_response
from ..service import iso
from ..state import relay_state


class RegisterKey(msgspec.Struct, forbid_unknown_fields=True):
    sub: str
    public_key: str
    label: str | None = None


class RevokeKey(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


def key_view(record: KeyRecord) -> dict[str, object]:
    return {
        "kid": record.kid,
        "sub": record.sub,
        "alg": record.alg,
        "status": record.status,
        "label": record.label,
        "created_at": iso(record.created_at),
        "revoked_at": iso(record.revoked_at) if record.revoked_at else None,
        "revoke_reason": record.revoke_reason,
    }


def _check_sub(sub: str) -> None:
    if not 1 <= len(sub) <= 256 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in sub):
        raise HTTPProblem(
            400, "invalid_request", "Invalid subject", "sub must be 1-256 printable characters"
        )


async def register_key(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "keys:write")
    body = decode_model(
        await read_body(request, 16 * 1024, state.settings.limits.request_timeout_seconds),
        RegisterKey,
    )
    _check_sub(body.sub)
    if body.label is not None and len(body.label) > 200:
        raise HTTPProblem(
            400, "invalid_request", "Invalid label", "label is at most 200 characters"
        )
    try:
        der = b64u_decode(body.public_key)
        load_public_key_der(der)
    except (ValueError, KeyFormatError) as exc:
        raise HTTPProblem(
            400,
            "invalid_public_key",
            "Invalid public key",
            "public_key must be base64url (no padding) of a DER SubjectPublicKeyInfo holding a P-256 key",
        ) from exc
    record = KeyRecord(
        kid=kid_for(der),
        sub=body.sub,
        alg=ALG_ES256,
        public_key=der,
        created_at=state.clock(),
        label=body.label,
    )
    try:
        await state.store.insert_key(record)
    except DuplicateKey as exc:
        raise HTTPProblem(
            409, "key_exists", "Key already registered", f"kid {record.kid} is already registered"
        ) from exc
    await state.service.record_event(
        "key.registered",
        state.client(request),
        sub=record.sub,
        kid=record.kid,
        detail=f"label={record.label}" if record.label else None,
    )
    return json_response(key_view(record), 201, {"Location": f"/keys/{record.kid}"})


async def list_keys(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "keys:read")
    sub = query_one(request, "sub")
    if sub is not None:
        _check_sub(sub)
    records = await state.store.list_keys(sub)
    return json_response({"keys": [key_view(r) for r in records]})


async def get_key(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "keys:read")
    record = await state.store.get_key(request.path_params["kid"])
    if record is None:
        raise HTTPProblem(404, "not_found", "No such key")
    return json_response(key_view(record))


async def revoke_key(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "keys:write")
    raw = await read_body(request, 4096, state.settings.limits.request_timeout_seconds)
    reason = query_one(request, "reason")
    if raw.strip():
        reason = decode_model(raw, RevokeKey).reason
    if not reason or len(reason) > 500:
        raise HTTPProblem(
            400,
            "invalid_request",
            "A reason is required",
            'give the reason for revocation in the body {"reason": "..."} (1-500 characters)',
        )
    kid = request.path_params["kid"]
    existing = await state.store.get_key(kid)
    if existing is None:
        raise HTTPProblem(404, "not_found", "No such key")
    if existing.status == "revoked":
        return json_response(key_view(existing))
    record = await state.store.revoke_key(kid, reason, state.clock())
    if record is None:
        raise HTTPProblem(404, "not_found", "No such key")
    await state.service.record_event(
        "key.revoked",
        state.client(request),
        sub=record.sub,
        kid=kid,
        detail=reason,
        outbox_payload={
            "kid": kid,
            "sub": record.sub,
            "reason": reason,
            "revoked_at": iso(record.revoked_at or state.clock()),
        },
    )
    return json_response(key_view(record))


routes = [
    resource("/keys", GET=list_keys, POST=register_key),
    resource("/keys/{kid}", GET=get_key, DELETE=revoke_key),
]
