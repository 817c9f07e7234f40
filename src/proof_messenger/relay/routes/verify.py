"""POST /verify and /verify/batch."""

from __future__ import annotations

import json
import time
from typing import Any

import cbor2
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...protocol import cbor as cbor_codec
from ...protocol.errors import MalformedProof
from ...store.base import StoreUnavailable
from ..http import is_cbor, query_one, read_body, wants_cbor
from ..metrics import observe_many
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
    m.observe_verify(time.perf_counter() - started)


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


class _DuplicateKeys:
    """Stands in for a JSON object that repeats a key: ``/verify`` refuses such an
    envelope as malformed, so a batch entry must not be silently collapsed to one value
    (msgspec and cbor2 keep the last); the service rejects this entry alone."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _DuplicateKeys:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _DuplicateKeys()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_BATCH_JSON = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant)


async def verify_batch(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "verify")
    identity = await state.user_identity(request)
    limits = state.settings.limits
    cbor = is_cbor(request)
    raw = await read_body(request, limits.max_body_bytes * 4, limits.request_timeout_seconds)
    try:
        # Both decoders refuse repeated keys (see _DuplicateKeys); the CBOR one refuses the
        # whole batch, with the same rules as a single CBOR envelope.
        doc: Any = (
            cbor_codec.decode(raw, strict=False, error=MalformedProof, root="batch")
            if cbor
            else _BATCH_JSON.decode(raw.decode("utf-8"))
        )
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
    started = time.perf_counter()
    try:
        outcomes = await state.service.verify_batch(
            proofs, cbor=cbor, client=client, identity=identity
        )
    except StoreUnavailable as exc:
        raise HTTPProblem(
            503, "store_unavailable", "Store unavailable", str(exc), headers={"Retry-After": "1"}
        ) from exc
    results = [_batch_result(outcome) for outcome in outcomes]
    _observe_batch(state, outcomes, time.perf_counter() - started)
    accepted = sum(1 for o in outcomes if o.accepted)
    return json_response(
        {"results": results, "accepted": accepted, "rejected": len(outcomes) - accepted}
    )


def _batch_result(outcome: Outcome) -> dict[str, Any]:
    """One entry of a batch answer: the /verify body, or the problem's fields."""
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


def _observe_batch(state: RelayState, outcomes: list[Outcome], elapsed: float) -> None:
    """The metrics of a batch call, aggregated: one counter update per (outcome, code) and
    one histogram update for all proofs, each of which took the call's time (a proof of
    a batch is verified and durably audited when the call answers)."""
    m = state.metrics
    counts: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        label = ("accepted", "ok") if outcome.accepted else ("rejected", outcome.error.code)  # type: ignore[union-attr]
        counts[label] = counts.get(label, 0) + 1
    for (result, code), count in counts.items():
        m.verifications.labels(result, code).inc(count)
    observe_many(m.verify_latency, elapsed, len(outcomes))


routes = [
    Route("/verify", verify, methods=["POST"]),
    Route("/verify/batch", verify_batch, methods=["POST"]),
]
