"""Approval requests: the relay asks a user to approve one exact transaction.

A backend ``POST /approvals`` with the user's id and the transaction context; the relay
builds the intent itself (its audience, a server nonce, the lifetime) and answers with an
``approval_url`` for the user. The user's device signs exactly those intent bytes; the
proof comes back to ``POST /approvals/{id}/proof`` (or through ``/verify``: check 8 applies
to any proof whose nonce names a request). State changes stream as Server-Sent Events.

Who may do what:

* the backend: an API key with the ``approvals`` scope, for every route;
* the end user's browser: the page token from the ``approval_url`` (256 bits, stored
  only as its SHA-256), sent as ``X-Approval-Token`` or, for EventSource which cannot set
  headers, as the ``t`` query parameter. A wrong token and an unknown id both answer 404.

State machine: ``pending`` -> ``approved`` | ``declined`` | ``expired``, each transition
a compare-and-set committed in the same transaction as its audit row, so the log and the
request can never disagree and two instances can never both decide one request.
See docs/approvals.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..protocol import ContextLimits, Intent, ProofError, VerifiedProof, b64u_encode, new_nonce
from ..protocol.errors import (
    ApprovalExpired,
    ApprovalMismatch,
    SubjectMismatch,
    WebAuthnUserNotVerified,
)
from ..store.base import ApprovalRecord, ApprovalTransition, StoreError
from .http import decode_model, is_cbor, read_body
from .openapi import register_paths
from .problems import HTTPProblem, json_response, problem_response
from .routes.keys import _check_sub
from .routes.verify import _observe, _outcome_response
from .service import ClientInfo, Identity, iso
from .state import RelayState, relay_state

__all__ = ["ApprovalCheck", "ApprovalEvents", "install", "load_intent"]

log = structlog.get_logger("proof_messenger.approvals")

MIN_TTL_SECONDS = 1
#: How often an open event stream re-reads the request (changes made by other instances).
POLL_SECONDS = 0.5
#: Comment lines keep proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
#: Each stream ends after this long; EventSource (and any SSE client) reconnects and gets
#: the current state first, so shutdowns and deploys never wait on a stream.
STREAM_MAX_SECONDS = 60.0
SWEEP_SECONDS = 1.0
SWEEP_BATCH = 100
TERMINAL = frozenset({"approved", "declined", "expired"})


class CreateApproval(msgspec.Struct, forbid_unknown_fields=True):
    sub: str
    context: dict[str, Any]
    ttl_seconds: int = 300
    require_user_verification: bool = False


class Decline(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def load_intent(state: RelayState, record: ApprovalRecord) -> Intent:
    """Decrypt the request's intent (AAD = the approval id) and decode it."""
    raw = state.keyring.decrypt(record.intent_key_id, record.intent_ct, record.id.encode("ascii"))
    return Intent.from_bytes(raw, _limits(state))


def _limits(state: RelayState) -> ContextLimits:
    v = state.settings.verification
    return ContextLimits(max_depth=v.max_context_depth, max_bytes=v.max_context_bytes)


# --- live updates --------------------------------------------------------------------------------
@dataclass
class ApprovalEvents:
    """Wake this instance's streams at once on local changes; others see them by polling."""

    waiters: dict[str, set[asyncio.Event]] = field(default_factory=dict)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self, approval_id: str) -> None:
        for event in self.waiters.get(approval_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, approval_id: str) -> Any:
        event = asyncio.Event()
        self.waiters.setdefault(approval_id, set()).add(event)
        try:
            yield event
        finally:
            group = self.waiters.get(approval_id)
            if group is not None:
                group.discard(event)
                if not group:
                    del self.waiters[approval_id]


# --- check 8 ------------------------------------------------------------------------------------
class ApprovalCheck:
    """The service's ``approvals`` hook: bind a proof to the request its nonce names."""

    def __init__(self, state: RelayState) -> None:
        self.state = state

    async def find(self, verified: VerifiedProof) -> ApprovalRecord | None:
        """The approval request this proof's nonce names, if any (a pure read)."""
        return await self.state.store.get_approval_by_nonce(verified.intent.nonce)

    async def find_many(self, nonces: Sequence[bytes]) -> dict[bytes, ApprovalRecord]:
        """:meth:`find` for a whole ``/verify/batch`` call in one read, by intent nonce.

        A proof whose nonce is absent answers no approval request (``check`` would return
        None for it); the others take the single-proof path."""
        return await self.state.store.get_approvals_by_nonces(nonces)

    async def check(
        self, verified: VerifiedProof, found: ApprovalRecord | EllipsisType | None = ...
    ) -> ApprovalTransition | None:
        """``found``: the result of :meth:`find` when the caller already has it."""
        intent = verified.intent
        record = await self.find(verified) if isinstance(found, EllipsisType) else found
        if record is None:
            return None  # an ordinary proof, not the answer to an approval request
        if record.sub != intent.sub:
            raise ApprovalMismatch(
                "the proof is signed for another user than the approval request's",
                approval_id=record.id,
            )
        if not hmac.compare_digest(verified.digest, record.intent_digest):
            raise ApprovalMismatch(
                "the signed transaction differs from the approval request "
                "(context, amount, audience or times changed)",
                approval_id=record.id,
            )
        now = self.state.clock()
        status = record.effective_status(now)
        if status == "expired":
            raise ApprovalExpired(
                f"the approval request expired at {iso(record.expires_at)}", approval_id=record.id
            )
        if status != "pending":
            raise ApprovalExpired(
                f"the approval request was already {status}", approval_id=record.id
            )
        if record.require_uv and not verified.user_verified:
            raise WebAuthnUserNotVerified(
                "this approval request requires user verification (PIN or biometrics)"
            )
        return ApprovalTransition(record.id, "approved", now, proof_id=verified.proof_id)


# --- views ----------------------------------------------------------------------------------------
async def approval_view(
    state: RelayState, record: ApprovalRecord, *, for_page: bool = False
) -> dict[str, Any]:
    intent = load_intent(state, record)
    now = state.clock()
    requester = None
    if record.api_key_id:
        key = await state.store.get_api_key(record.api_key_id)
        requester = key.name if key is not None else None
    view: dict[str, Any] = {
        "id": record.id,
        "status": record.effective_status(now),
        "sub": record.sub,
        "context": intent.ctx,
        "intent": b64u_encode(intent.to_bytes()),
        "nonce": b64u_encode(record.nonce),
        "proof_id": b64u_encode(record.intent_digest),
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "expires_in_seconds": max(0, int(record.expires_at - now)),
        "decided_at": iso(record.decided_at) if record.decided_at else None,
        "require_user_verification": record.require_uv,
        "requested_by": requester,
        "audit_event_id": record.audit_event_id,
        "leaf_index": None,
    }
    if record.audit_event_id is not None:
        # Where the deciding row sits in the Merkle log, for an inclusion proof later.
        audit = await state.store.get_audit(record.audit_event_id)
        view["leaf_index"] = audit.seq - 1 if audit is not None else None
    if for_page:
        keys = await state.store.list_keys(record.sub)
        view["credential_ids"] = [
            k.kid for k in keys if k.alg == "webauthn.ES256" and k.status == "active"
        ]
        view["rp_id"] = state.settings.audience
    return view


def status_event(record: ApprovalRecord, now: float) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.effective_status(now),
        "expires_at": iso(record.expires_at),
        "decided_at": iso(record.decided_at) if record.decided_at else None,
        "proof_id": record.proof_id,
        "audit_event_id": record.audit_event_id,
    }


# --- access ---------------------------------------------------------------------------------------
def _not_found() -> HTTPProblem:
    return HTTPProblem(
        404, "not_found", "No such approval request", "the link is wrong or incomplete"
    )


async def authorize(
    request: Request, state: RelayState, *, allow_page: bool = True
) -> tuple[ApprovalRecord, str]:
    """The request named in the path, and who is asking: ``backend`` or ``page``."""
    approval_id = request.path_params["id"]
    if request.headers.get("authorization") or not allow_page:
        await state.authenticate(request, "approvals")
        record = await state.store.get_approval(approval_id)
        if record is None:
            raise _not_found()
        return record, "backend"
    token = request.headers.get("x-approval-token") or request.query_params.get("t") or ""
    ip = request.client.host if request.client else "unknown"
    await state.rate_limit(f"approval-page:{ip}", "this address")
    record = await state.store.get_approval(approval_id) if len(approval_id) <= 64 else None
    expected = record.page_token_hash if record is not None else b"\x00" * 32
    if not hmac.compare_digest(token_hash(token), expected) or record is None:
        raise _not_found()
    return record, "page"


# --- routes ---------------------------------------------------------------------------------------
async def create_approval(request: Request) -> Response:
    state = relay_state(request)
    api_key = await state.authenticate(request, "approvals")
    s = state.settings
    body = decode_model(
        await read_body(request, 64 * 1024, s.limits.request_timeout_seconds), CreateApproval
    )
    _check_sub(body.sub)
    # The end user's ID token, when the backend has one: its subject must be the
    # request's, and its roles are what the policy engine judges the answer with.
    identity = await state.user_identity(request)
    if identity is not None and identity.sub != body.sub:
        return problem_response(
            SubjectMismatch("the user token's subject is not the approval request's subject"),
            instance=request.url.path,
        )
    max_ttl = s.verification.max_lifetime_seconds
    if not MIN_TTL_SECONDS <= body.ttl_seconds <= max_ttl:
        raise HTTPProblem(
            400,
            "invalid_request",
            "Invalid lifetime",
            f"ttl_seconds must be {MIN_TTL_SECONDS}-{max_ttl} (the relay's maximum proof lifetime)",
        )
    now = state.clock()
    try:
        intent = Intent.create(
            body.context,
            aud=s.audience,
            sub=body.sub,
            ttl=body.ttl_seconds,
            nonce=new_nonce(32),
            now=now,
            limits=_limits(state),
        )
    except ProofError as exc:
        raise HTTPProblem(400, exc.code, "Invalid transaction context", exc.detail) from exc
    approval_id = secrets.token_urlsafe(16)  # 128 bits
    page_token = secrets.token_urlsafe(32)  # 256 bits, only in the approval_url
    intent_bytes = intent.to_bytes()
    key_id, blob = state.keyring.encrypt(intent_bytes, approval_id.encode("ascii"))
    record = ApprovalRecord(
        id=approval_id,
        sub=body.sub,
        aud=s.audience,
        nonce=intent.nonce,
        intent_digest=intent.digest(),
        intent_key_id=key_id,
        intent_ct=blob,
        page_token_hash=token_hash(page_token),
        created_at=now,
        expires_at=float(intent.exp),
        require_uv=body.require_user_verification or s.webauthn.require_user_verification,
        api_key_id=api_key.id,
        user_roles=tuple(sorted(identity.roles)) if identity is not None else None,
    )
    await state.store.insert_approval(record)
    audit = await state.service.record_event(
        "approval.created",
        state.client(request),
        sub=record.sub,
        ctx=intent.ctx,
        proof_id=b64u_encode(record.intent_digest),
        detail=f"approval {approval_id}",
        outbox_payload={
            "approval_id": approval_id,
            "sub": record.sub,
            "expires_at": iso(record.expires_at),
        },
    )
    log.info("approval.created", approval_id=approval_id, sub=record.sub, api_key=api_key.id)
    base = s.base_url
    return json_response(
        {
            "id": approval_id,
            "status": "pending",
            "sub": record.sub,
            "nonce": b64u_encode(record.nonce),
            "intent": b64u_encode(intent_bytes),
            "proof_id": b64u_encode(record.intent_digest),
            "expires_at": iso(record.expires_at),
            "approval_url": f"{base}/approve/{approval_id}?t={page_token}",
            "events_url": f"{base}/approvals/{approval_id}/events",
            "require_user_verification": record.require_uv,
            "audit_event_id": audit.draft.event_id,
        },
        201,
        {"Location": f"/approvals/{approval_id}"},
    )


async def get_approval(request: Request) -> Response:
    state = relay_state(request)
    record, who = await authorize(request, state)
    return json_response(await approval_view(state, record, for_page=who == "page"))


async def submit_proof(request: Request) -> Response:
    state = relay_state(request)
    record, _ = await authorize(request, state)
    started = time.perf_counter()
    cbor = is_cbor(request)
    body = await read_body(
        request, state.settings.limits.max_body_bytes, state.settings.limits.request_timeout_seconds
    )
    outcome = await state.service.verify(
        body,
        cbor=cbor,
        client=state.client(request),
        identity=await _answer_identity(request, state, record),
        require_user_verification=record.require_uv,
        expect_nonce=record.nonce,
    )
    _observe(state, outcome, started)
    events(state).notify(record.id)
    if outcome.accepted:
        outcome.body["approval_id"] = record.id
        outcome.body["status"] = "approved"
    return _outcome_response(outcome, request)


async def _answer_identity(
    request: Request, state: RelayState, record: ApprovalRecord
) -> Identity | None:
    """Who answers: a user token sent now (backend submissions), else the one verified when
    the request was created (the approval page's user has no token of their own)."""
    identity = await state.user_identity(request)
    if identity is None and record.user_roles is not None:
        identity = Identity(sub=record.sub, roles=frozenset(record.user_roles))
    return identity


async def decline_approval(request: Request) -> Response:
    state = relay_state(request)
    record, who = await authorize(request, state)
    raw = await read_body(request, 4096, state.settings.limits.request_timeout_seconds)
    reason = decode_model(raw, Decline).reason if raw.strip() else None
    if reason is not None and len(reason) > 500:
        raise HTTPProblem(400, "invalid_request", "Reason too long", "at most 500 characters")
    intent = load_intent(state, record)
    done = await state.service.record_transition(
        "approval.declined",
        state.client(request),
        ApprovalTransition(record.id, "declined", state.clock()),
        sub=record.sub,
        ctx=intent.ctx,
        detail=f"approval {record.id} declined by the {'user' if who == 'page' else 'backend'}"
        + (f": {reason}" if reason else ""),
        outbox_payload={"approval_id": record.id, "sub": record.sub},
    )
    events(state).notify(record.id)
    current = await state.store.get_approval(record.id) or record
    if done is None:
        status = current.effective_status(state.clock())
        raise ApprovalExpired(
            f"the approval request is already {status}",
            approval_id=record.id,
            approval_status=status,
        )
    return json_response(await approval_view(state, current, for_page=who == "page"))


async def approval_events(request: Request) -> Response:
    state = relay_state(request)
    record, _ = await authorize(request, state)
    return StreamingResponse(
        _stream(state, record.id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(state: RelayState, approval_id: str) -> AsyncIterator[bytes]:
    """Status events until a terminal status (or the stream's lifetime) is reached.

    A client that goes away is noticed when the next write fails (a keepalive at most
    ``KEEPALIVE_SECONDS`` later), which ends this generator.
    """
    hub = events(state)
    started = time.monotonic()
    last_sent = started
    previous: str | None = None
    yield b"retry: 2000\n\n"
    with hub.watch(approval_id) as wake:
        while True:
            record = await state.store.get_approval(approval_id)
            if record is None:  # pragma: no cover - approvals are never deleted
                return
            payload = status_event(record, state.clock())
            if payload["status"] != previous:
                previous = payload["status"]
                data = msgspec.json.encode(payload).decode()
                yield f"event: status\ndata: {data}\n\n".encode()
                last_sent = time.monotonic()
                if previous in TERMINAL:
                    return
            now = time.monotonic()
            if now - started > STREAM_MAX_SECONDS or hub.closing.is_set():
                return
            if now - last_sent > KEEPALIVE_SECONDS:
                yield b": keepalive\n\n"
                last_sent = now
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)


# --- expiry ---------------------------------------------------------------------------------------
async def sweep_once(state: RelayState) -> int:
    """Mark and audit every overdue pending request; safe on many instances at once."""
    expired = 0
    for record in await state.store.list_due_approvals(state.clock(), SWEEP_BATCH):
        try:
            ctx: Mapping[str, Any] | None = load_intent(state, record).ctx
        except Exception:  # an undecryptable intent must not block the sweep
            ctx = None
        done = await state.service.record_transition(
            "approval.expired",
            ClientInfo(),
            ApprovalTransition(record.id, "expired", state.clock()),
            sub=record.sub,
            ctx=ctx,
            detail=f"approval {record.id} expired unanswered",
            outbox_payload={"approval_id": record.id, "sub": record.sub},
        )
        if done is not None:  # None: another instance (or a decision) got there first
            expired += 1
            log.info("approval.expired", approval_id=record.id, sub=record.sub)
        events(state).notify(record.id)
    return expired


async def _sweeper(state: RelayState) -> None:
    while True:
        try:
            await sweep_once(state)
        except (StoreError, OSError) as exc:
            log.warning("approval.sweep_failed", error=str(exc)[:300])
        await asyncio.sleep(SWEEP_SECONDS)


def events(state: RelayState) -> ApprovalEvents:
    hub: ApprovalEvents = state.features["approval_events"]
    return hub


# --- wiring ---------------------------------------------------------------------------------------
def install(state: RelayState) -> list[Route]:
    hub = ApprovalEvents()
    state.features["approval_events"] = hub
    state.service.approvals = ApprovalCheck(state)

    async def close() -> None:
        hub.closing.set()

    state.features.setdefault("closers", []).append(close)
    state.background.append(
        asyncio.get_running_loop().create_task(_sweeper(state), name="approval-expiry")
    )
    register_paths(OPENAPI_PATHS, OPENAPI_SCHEMAS)
    return [
        Route("/approvals", create_approval, methods=["POST"]),
        Route("/approvals/{id}", get_approval, methods=["GET"]),
        Route("/approvals/{id}/proof", submit_proof, methods=["POST"]),
        Route("/approvals/{id}/decline", decline_approval, methods=["POST"]),
        Route("/approvals/{id}/events", approval_events, methods=["GET"]),
    ]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_PAGE_AUTH = (
    "API key with scope `approvals`, or the page token from `approval_url` "
    "(header `X-Approval-Token`, or query `t`)."
)
OPENAPI_SCHEMAS: dict[str, Any] = {
    "ApprovalCreate": {
        "type": "object",
        "required": ["sub", "context"],
        "additionalProperties": False,
        "properties": {
            "sub": {"type": "string", "minLength": 1, "maxLength": 256},
            "context": {"type": "object", "description": "Transaction context (protocol §1)"},
            "ttl_seconds": {"type": "integer", "minimum": 1, "default": 300},
            "require_user_verification": {"type": "boolean", "default": False},
        },
    },
    "ApprovalCreated": {
        "type": "object",
        "required": ["id", "status", "nonce", "intent", "expires_at", "approval_url"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "const": "pending"},
            "sub": {"type": "string"},
            "nonce": {"type": "string", "description": "base64url"},
            "intent": {"type": "string", "description": "base64url intent bytes to sign"},
            "proof_id": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "approval_url": {"type": "string", "description": "give this to the user only"},
            "events_url": {"type": "string"},
            "require_user_verification": {"type": "boolean"},
            "audit_event_id": {"type": "string"},
        },
    },
    "Approval": {
        "type": "object",
        "required": ["id", "status", "sub", "context", "intent", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "approved", "declined", "expired"]},
            "sub": {"type": "string"},
            "context": {"type": "object"},
            "intent": {"type": "string"},
            "nonce": {"type": "string"},
            "proof_id": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "expires_in_seconds": {"type": "integer"},
            "decided_at": {"type": ["string", "null"], "format": "date-time"},
            "require_user_verification": {"type": "boolean"},
            "requested_by": {"type": ["string", "null"]},
            "audit_event_id": {"type": ["string", "null"]},
            "leaf_index": {"type": ["integer", "null"], "minimum": 0},
            "credential_ids": {"type": "array", "items": {"type": "string"}},
            "rp_id": {"type": "string"},
        },
    },
}
OPENAPI_PATHS: dict[str, Any] = {
    "/approvals": {
        "post": {
            "summary": "Create an approval request (the relay builds the intent)",
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ApprovalCreate"}}
                },
            },
            "responses": {
                "201": {
                    "description": "Created; send approval_url to the user",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ApprovalCreated"}
                        }
                    },
                },
                "400": _problem("Invalid subject, context or lifetime"),
                "401": _problem("Missing or invalid API key"),
                "403": _problem("The API key lacks the `approvals` scope"),
            },
        }
    },
    "/approvals/{id}": {
        "get": {
            "summary": "Read an approval request. " + _PAGE_AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "The request; a pending one past its deadline reads expired",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Approval"}}
                    },
                },
                "404": _problem("Unknown id or wrong page token"),
            },
        }
    },
    "/approvals/{id}/proof": {
        "post": {
            "summary": "Answer the request with a proof over its intent. " + _PAGE_AUTH,
            "parameters": [_ID],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ProofEnvelope"}}
                },
            },
            "responses": {
                "200": {
                    "description": "Verified; the request is approved (same body as /verify)",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/VerifyResult"}
                        }
                    },
                },
                "404": _problem("Unknown id or wrong page token"),
                "409": _problem("replayed, or approval_expired (expired or already decided)"),
                "422": _problem("Any other check failed (approval_mismatch, webauthn_*, ...)"),
            },
        }
    },
    "/approvals/{id}/decline": {
        "post": {
            "summary": "Decline the request. " + _PAGE_AUTH,
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "Declined",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Approval"}}
                    },
                },
                "404": _problem("Unknown id or wrong page token"),
                "409": _problem("approval_expired: already approved, declined or expired"),
            },
        }
    },
    "/approvals/{id}/events": {
        "get": {
            "summary": "Server-Sent Events: `event: status` on every change. " + _PAGE_AUTH,
            "parameters": [_ID, {"name": "t", "in": "query", "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": (
                        "text/event-stream; each `data` is {id, status, expires_at, "
                        "decided_at, proof_id, audit_event_id}; the stream ends after a "
                        "terminal status or 60 s (reconnect)"
                    ),
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "404": _problem("Unknown id or wrong page token"),
            },
        }
    },
}
