"""Liveness, readiness and metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..metrics import CONTENT_TYPE_LATEST, render
from ..problems import json_response
from ..state import relay_state


async def health(request: Request) -> Response:
    """The process is alive and serving HTTP (no dependency checks: a liveness probe)."""
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    """The store is reachable and fully migrated: safe to route traffic here."""
    state = relay_state(request)
    try:
        ok = await state.store.is_ready()
    except Exception:
        ok = False
    if ok:
        return json_response({"status": "ready"})
    return json_response(
        {"status": "unavailable", "detail": "store not reachable or not migrated"}, 503
    )


async def metrics_endpoint(request: Request) -> Response:
    return Response(render(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
