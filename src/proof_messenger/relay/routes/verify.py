"""POST /verify and /verify/batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import cbor2
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...protocol.errors import MalformedProof
from ...store.base import StoreUnavailable
from ..http import is_cbor, query_one, read_body, wants_cbor
from ..problems import HTTPProblem, json_response, problem_body
from ..service import Outcome
from ..state import RelayState, relay_state

_PROBLEM = "application/problem+json"


def _outcome_response(outcome: Outcome, request: Request) -> Response:
    if outcome.accepted:
        if wants_cbor(request):
            return Response(cbor2.dumps(outcome.body), 200, media_type="application/cbor")
        return json_response(outcome.body)
    exc = outcome.error
    assert exc is not None
    body = problem_body(exc.status, exc.code, exc.title, exc.detail, **outcome.body)
    return Response(msgspec.json.encode(body), exc.status, media_type=_PROBLEM)


def _observe(state: RelayState, outcome: Outcome, started: float) -> None:
    m = state.metrics
    code = outcome.error.code if outcome.error else "ok"
    m.count_verification(outcome.accepted, code)
    m.verify_latency.observe(time.perf_counter() - started)


def _flag(request: Request, name: str) -> bool:
    """``true`` or ``false`` exactly: a typo such as ``True`` or ``yes`` must not silently
    turn a security requirement off, so anything else is a 400."""
    raw = query_one(request, name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise HTTPProblem(400, "invalid_request", "Invalid query", f"{name} must be true or false")


async def verify(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "verify")
    identity = await state.user_identity(request)
    started = time.perf_counter()
    require_uv = _flag(request, "require_user_verification")
    cbor = is_cbor(request)
    body = await read_body(
        request, state.settings.limits.max_body_bytes, state.settings.limits.request_timeout_seconds
    )
    try:
        outcome = await state.service.verify(
            body,
            cbor=cbor,
            client=state.client(request),
            identity=identity,
            require_user_verification=require_uv,
        )
    except StoreUnavailable as exc:
        raise HTTPProblem(
            503,
            "store_unavailable",
            "Store unavailable",
            f"the audit store is unavailable: {exc}",
            headers={"Retry-After": "1"},
        ) from exc
    _observe(state, outcome, started)
    return _outcome_response(outcome, request)


async def verify_batch(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "verify")
    identity = await state.user_identity(request)
    limits = state.settings.limits
    cbor = is_cbor(request)
    raw = await read_body(request, limits.max_body_bytes * 4, limits.request_timeout_seconds)
    try:
        doc: Any = cbor2.loads(raw) if cbor else msgspec.json.decode(raw)
    except Exception as exc:
        raise HTTPProblem(
            400, "malformed_request", "Malformed batch", "the body is not a valid document"
        ) from exc
    proofs = doc.get("proofs") if isinstance(doc, dict) else None
    if not isinstance(proofs, list) or not proofs:
        raise HTTPProblem(
            400, "invalid_request", "Invalid batch", 'send {"proofs": [envelope, ...]}'
        )
    if len(proofs) > limits.max_batch:
        raise HTTPProblem(
            413,
            "batch_too_large",
            "Batch too large",
            f"at most {limits.max_batch} proofs per batch",
        )
    client = state.client(request)

    async def one(item: Any) -> dict[str, Any]:
        started = time.perf_counter()
        if not isinstance(item, dict):
            exc = MalformedProof("each batch entry must be a proof envelope object")
            outcome = await state.service.reject_unparsed(exc, client)
        else:
            outcome = await state.service.verify(item, cbor=cbor, client=client, identity=identity)
        _observe(state, outcome, started)
        if outcome.accepted:
            return outcome.body
        err = outcome.error
        assert err is not None
        return {
            "valid": False,
            "status": err.status,
            "code": err.code,
            "detail": err.detail,
            **outcome.body,
        }

    # Entries carrying the same intent run one after another, in batch order, so that
    # among duplicates the FIRST is the one accepted; all others run concurrently.
    previous: dict[Any, asyncio.Task[dict[str, Any]]] = {}

    async def in_order(item: Any, before: asyncio.Task[dict[str, Any]] | None) -> dict[str, Any]:
        if before is not None:
            await asyncio.wait([before])
        return await one(item)

    tasks: list[asyncio.Task[dict[str, Any]]] = []
    for item in proofs:
        intent = item.get("intent") if isinstance(item, dict) else None
        key = intent if isinstance(intent, str | bytes) else None
        task = asyncio.ensure_future(in_order(item, previous.get(key) if key else None))
        if key:
            previous[key] = task
        tasks.append(task)
    try:
        results = await asyncio.gather(*tasks)
    except StoreUnavailable as exc:
        raise HTTPProblem(
            503, "store_unavailable", "Store unavailable", str(exc), headers={"Retry-After": "1"}
        ) from exc
    summary = {
        "accepted": sum(1 for r in results if r.get("valid")),
        "rejected": sum(1 for r in results if not r.get("valid")),
    }
    return json_response({"results": results, **summary})


routes = [
    Route("/verify", verify, methods=["POST"]),
    Route("/verify/batch", verify_batch, methods=["POST"]),
]
