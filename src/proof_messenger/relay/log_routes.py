"""The verifiable audit log over HTTP: checkpoints, proofs, entries, the log's public key.

One log for all relay instances: the Merkle tree is the audit chain itself (leaf index =
seq - 1), extended inside each group-commit batch under the chain-head lock, so every
instance sees the same tree and signs checkpoints of it with the same log key.

Access: checkpoints, proofs and the public key are public (they reveal hashes only); the
entries carry subjects, amounts and client addresses in clear, so ``/log/entries`` needs
the ``audit:read`` scope, as does ``POST /log/checkpoint``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..audit.chain import entry_bytes
from ..audit.checkpoint import Checkpoint, LogSigner, key_id_of
from ..audit.checkpoint import public_key_pem as pem_of
from ..audit.merkle import EMPTY_ROOT, consistency_proof_from, inclusion_proof_from
from ..store import _merkle
from ..store.base import CheckpointRecord, Store
from .http import query_int, query_one, resource
from .log_keys import LogConfig, check_log_key, load_or_create_log_key, log_config
from .openapi import register_paths
from .problems import HTTPProblem, json_response
from .state import RelayState, relay_state

__all__ = [
    "WARNING_HEADER",
    "LogConfig",
    "LogService",
    "check_log_key",
    "install",
    "load_or_create_log_key",
    "log_config",
]

log = structlog.get_logger("proof_messenger.log")
WARNING_HEADER = "Proof-Messenger-Log-Warning"
MAX_ENTRIES = 1000
_MAX_INDEX = (1 << 63) - 1
_NOTE = "text/plain; charset=utf-8"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LogIntegrityError(Exception):
    """The stored tree no longer matches a checkpoint this log signed earlier."""


class LogService:
    """Signs checkpoints and serves proofs from stored subtree hashes (O(log n) each)."""

    def __init__(
        self,
        store: Store,
        key: Ed25519PrivateKey,
        config: LogConfig,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.key = key
        self.config = config
        self.signer = LogSigner(config.origin, key)
        self.key_id = key_id_of(key.public_key())
        self.clock = clock
        self.key_warning: str | None = None
        self._ready = False
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                self.key_warning = await check_log_key(self.store, self.key, self.clock())
                if self.key_warning:
                    log.error("log_key.unrecorded_change", detail=self.key_warning)
                self._ready = True

    async def root_at(self, size: int) -> bytes:
        if size == 0:
            return EMPTY_ROOT
        found = await self.store.perfect_roots(_merkle.plan_root(size))
        return _merkle.root_from_nodes(size, found)

    async def sign_checkpoint(self) -> CheckpointRecord:
        """A checkpoint of the current tree (the stored one if the tree has not grown).

        Before signing, the current tree must reproduce the root of the latest stored
        checkpoint: a log whose stored history was rewritten refuses to sign over it.
        """
        await self.ready()
        async with self._lock:
            tree = await self.store.merkle_tree()
            latest = await self.store.latest_checkpoint()
            if latest is not None:
                if latest.size > tree.size:
                    raise LogIntegrityError(
                        f"the tree has {tree.size} leaves but a checkpoint of size "
                        f"{latest.size} was signed: entries were deleted"
                    )
                if await self.root_at(latest.size) != latest.root:
                    raise LogIntegrityError(
                        f"the stored tree does not reproduce the signed checkpoint of size "
                        f"{latest.size}: the log was rewritten"
                    )
                if latest.size == tree.size:
                    return latest
            root = tree.root()
            note = self.signer.sign_checkpoint(Checkpoint(self.config.origin, tree.size, root))
            record = CheckpointRecord(tree.size, root, note, self.clock(), self.key_id)
            saved = await self.store.save_checkpoint(record)
            log.info("log.checkpoint", size=saved.size, root=_b64(saved.root))
            return saved

    async def covering_checkpoint(self, index: int) -> CheckpointRecord:
        latest = await self.store.latest_checkpoint()
        if latest is None or latest.size <= index:
            latest = await self.sign_checkpoint()
        return latest

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        found = await self.store.perfect_roots(_merkle.plan_inclusion(index, size))
        return inclusion_proof_from(index, size, _merkle.lookup(found))

    async def consistency(self, size1: int, size2: int) -> list[bytes]:
        found = await self.store.perfect_roots(_merkle.plan_consistency(size1, size2))
        return consistency_proof_from(size1, size2, _merkle.lookup(found))

    async def run_periodic(self) -> None:
        """Sign a checkpoint every interval when the tree grew (errors are logged, not fatal)."""
        while True:
            try:
                await self.sign_checkpoint()
            except asyncio.CancelledError:
                raise
            except LogIntegrityError as exc:
                log.error("log.integrity", detail=str(exc))
            except Exception as exc:
                log.warning("log.checkpoint_failed", error=str(exc)[:300])
            await asyncio.sleep(self.config.checkpoint_interval_seconds)


# --------------------------------------------------------------------------- handlers


def _service(request: Request) -> tuple[RelayState, LogService]:
    state = relay_state(request)
    svc: LogService = state.features["log"]
    return state, svc


def _headers(svc: LogService) -> dict[str, str]:
    return {WARNING_HEADER: svc.key_warning} if svc.key_warning else {}


async def _guard(svc: LogService, fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await fn()
    except LogIntegrityError as exc:
        raise HTTPProblem(500, "log_integrity", "Log integrity failure", str(exc)) from exc


async def get_checkpoint(request: Request) -> Response:
    _, svc = _service(request)
    await svc.ready()
    cp = await svc.store.latest_checkpoint()
    stale = cp is None or svc.clock() - cp.created_at >= svc.config.checkpoint_interval_seconds
    if stale and (cp is None or (await svc.store.merkle_tree()).size > cp.size):
        cp = await _guard(svc, svc.sign_checkpoint)  # lazily keep to the interval
    assert cp is not None
    return Response(cp.note, 200, _headers(svc), media_type=_NOTE)


async def post_checkpoint(request: Request) -> Response:
    state, svc = _service(request)
    await state.authenticate(request, "audit:read")
    cp = await _guard(svc, svc.sign_checkpoint)
    return Response(cp.note, 200, _headers(svc), media_type=_NOTE)


async def public_key(request: Request) -> Response:
    _, svc = _service(request)
    await svc.ready()
    fmt = query_one(request, "format") or "json"
    if fmt == "pem":
        return Response(pem_of(svc.key), 200, _headers(svc), media_type="application/x-pem-file")
    if fmt == "vkey":
        return Response(svc.signer.verifier_key + "\n", 200, _headers(svc), media_type=_NOTE)
    if fmt != "json":
        raise HTTPProblem(
            400, "invalid_request", "Invalid query", "format must be json, pem or vkey"
        )
    history = await svc.store.log_key_history()
    return json_response(
        {
            "origin": svc.config.origin,
            "key_id": svc.key_id,
            "verifier_key": svc.signer.verifier_key,
            "public_key_pem": pem_of(svc.key),
            "key_status": "unrecorded_change" if svc.key_warning else "ok",
            "warning": svc.key_warning,
            "history": [
                {
                    "key_id": h.key_id,
                    "public_key": _b64(h.public_key),
                    "created_at": h.created_at,
                    "rotated_from": h.rotated_from,
                    "rotation_note": h.rotation_note,
                }
                for h in history
            ],
        },
        headers=_headers(svc),
    )


async def inclusion_proof(request: Request) -> Response:
    _, svc = _service(request)
    await svc.ready()
    event_id = query_one(request, "event_id")
    if event_id is not None and query_one(request, "leaf_index") is not None:
        raise HTTPProblem(
            400, "invalid_request", "Invalid query", "give event_id or leaf_index, not both"
        )
    if event_id is not None:
        if len(event_id) > 64:
            raise HTTPProblem(404, "not_found", "No such audit event")
        record = await svc.store.get_audit(event_id)
        if record is None:
            raise HTTPProblem(404, "not_found", "No such audit event")
        index = record.seq - 1
    else:
        index = query_int(request, "leaf_index", -1, 0, _MAX_INDEX)
        if index < 0:
            raise HTTPProblem(
                400, "invalid_request", "Invalid query", "give event_id or leaf_index"
            )
    checkpoint: CheckpointRecord | None
    if query_one(request, "tree_size") is None:
        checkpoint = await _guard(svc, lambda: svc.covering_checkpoint(index))
        size = checkpoint.size
    else:
        size = query_int(request, "tree_size", 0, 1, _MAX_INDEX)
        checkpoint = await svc.store.get_checkpoint(size)
    current = (await svc.store.merkle_tree()).size
    if not index < size <= current:
        raise HTTPProblem(
            400,
            "invalid_request",
            "Invalid tree size",
            f"need leaf_index < tree_size <= {current} (the current tree size)",
        )
    hashes = await svc.inclusion(index, size)
    leaf = await svc.store.perfect_roots([(0, index)])
    return json_response(
        {
            "leaf_index": index,
            "tree_size": size,
            "leaf_hash": _b64(leaf[(0, index)]) if (0, index) in leaf else None,
            "hashes": [_b64(h) for h in hashes],
            "checkpoint": checkpoint.note if checkpoint else None,
        },
        headers=_headers(svc),
    )


async def consistency_proof(request: Request) -> Response:
    _, svc = _service(request)
    await svc.ready()
    size1 = query_int(request, "from", 0, 1, _MAX_INDEX)
    size2 = query_int(request, "to", 0, 1, _MAX_INDEX)
    current = (await svc.store.merkle_tree()).size
    if not 0 < size1 <= size2 <= current:
        raise HTTPProblem(
            400, "invalid_request", "Invalid sizes", f"need 0 < from <= to <= {current}"
        )
    hashes = await svc.consistency(size1, size2)
    return json_response(
        {"from": size1, "to": size2, "hashes": [_b64(h) for h in hashes]}, headers=_headers(svc)
    )


async def entries(request: Request) -> Response:
    state, svc = _service(request)
    await state.authenticate(request, "audit:read")
    start = query_int(request, "start", 0, 0, _MAX_INDEX)
    end = query_int(request, "end", start + 100, 0, _MAX_INDEX)
    if end < start:
        raise HTTPProblem(400, "invalid_request", "Invalid range", "need start <= end")
    current = (await svc.store.merkle_tree()).size
    end = min(end, start + MAX_ENTRIES, current)
    rows = await svc.store.log_entries(start, max(start, end))
    return json_response(
        {
            "tree_size": current,
            "entries": [
                {
                    "leaf_index": e.record.seq - 1,
                    "event_id": e.record.draft.event_id,
                    "entry": _b64(entry_bytes(e.record.seq, e.record.draft)),
                    "leaf_hash": _b64(e.leaf_hash) if e.leaf_hash else None,
                }
                for e in rows
            ],
        },
        headers=_headers(svc),
    )


routes = [
    resource("/log/checkpoint", GET=get_checkpoint, POST=post_checkpoint),
    Route("/log/public-key", public_key, methods=["GET"]),
    Route("/log/proof/inclusion", inclusion_proof, methods=["GET"]),
    Route("/log/proof/consistency", consistency_proof, methods=["GET"]),
    Route("/log/entries", entries, methods=["GET"]),
]


# --------------------------------------------------------------------------- wiring


def install(state: RelayState) -> list[Route]:
    """Load (or create) the log key, start the periodic signer, return the routes."""
    config = log_config(state.settings)
    key = load_or_create_log_key(state.settings.log_key_file)
    svc = LogService(state.store, key, config, state.clock)
    state.features["log"] = svc
    state.background.append(
        asyncio.get_running_loop().create_task(svc.run_periodic(), name="log-checkpoints")
    )
    return list(routes)


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_NOTE: {"schema": {"type": "string"}}}}


def _json(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


#: Every status these routes can answer besides 200, so the document is complete.
_UNAVAILABLE = {"503": _problem("The store is unavailable; retry shortly")}
_BAD_QUERY = {"400": _problem("Invalid or repeated query parameter")}
_AUTH = {
    "401": _problem("Missing, malformed, unknown or revoked API key"),
    "403": _problem("The API key lacks the scope audit:read"),
    "429": _problem("Rate limit exceeded; see Retry-After"),
}


def _q(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string" if name == "event_id" else "integer"},
    }


register_paths(
    {
        "/log/checkpoint": {
            "get": {
                "tags": ["log"],
                "summary": "Latest signed checkpoint (C2SP signed note); public",
                "responses": {
                    "200": _text("origin, tree size, base64 root, signature"),
                    **_UNAVAILABLE,
                },
            },
            "post": {
                "tags": ["log"],
                "summary": "Sign a checkpoint of the current tree now (scope audit:read)",
                "security": [{"apiKey": []}],
                "responses": {"200": _text("the checkpoint"), **_AUTH, **_UNAVAILABLE},
            },
        },
        "/log/public-key": {
            "get": {
                "tags": ["log"],
                "summary": "The log key (JSON with history, or ?format=pem|vkey); public",
                "responses": {
                    "200": _json("key, verifier key string, rotation history"),
                    **_BAD_QUERY,
                    **_UNAVAILABLE,
                },
            }
        },
        "/log/proof/inclusion": {
            "get": {
                "tags": ["log"],
                "summary": "RFC 9162 inclusion proof of an audit event; public",
                "parameters": [
                    _q("event_id", "audit event id"),
                    _q("leaf_index", "or the leaf index (seq - 1)"),
                    _q("tree_size", "default: a signed checkpoint covering the leaf"),
                ],
                "responses": {
                    "200": _json("leaf_index, tree_size, hashes[], checkpoint"),
                    **_BAD_QUERY,
                    "404": _problem("No such audit event"),
                    **_UNAVAILABLE,
                },
            }
        },
        "/log/proof/consistency": {
            "get": {
                "tags": ["log"],
                "summary": "RFC 9162 consistency proof between two tree sizes; public",
                "parameters": [_q("from", "older size", True), _q("to", "newer size", True)],
                "responses": {"200": _json("from, to, hashes[]"), **_BAD_QUERY, **_UNAVAILABLE},
            }
        },
        "/log/entries": {
            "get": {
                "tags": ["log"],
                "summary": "Leaf data [start, end), at most 1000 (scope audit:read)",
                "security": [{"apiKey": []}],
                "parameters": [_q("start", "first leaf index"), _q("end", "end (exclusive)")],
                "responses": {
                    "200": _json("entries[] with base64 canonical entry bytes"),
                    **_BAD_QUERY,
                    **_AUTH,
                    **_UNAVAILABLE,
                },
            }
        },
    }
)
