"""The relay's ASGI application.

Middleware is plain ASGI (not Starlette's BaseHTTPMiddleware, which costs a task and
a queue per request on the hot path). Every error leaves as RFC 9457 problem+json.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit.crypto import Keyring
from ..protocol.errors import ProofMessengerError
from ..store.base import Store, StoreUnavailable
from . import retention
from .config import Settings
from .http import FastRequest
from .metrics import metrics
from .problems import HTTPProblem, problem_response
from .ratelimit import LocalRateLimiter, RateLimiter
from .routes import audit, docs, health, keys, verify
from .service import VerificationService
from .startup import load_or_create_keyring, store_from_settings
from .state import RelayState

__all__ = ["create_app", "load_or_create_keyring", "store_from_settings"]

log = structlog.get_logger("proof_messenger.http")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: Feature modules may append a function called at start-up with the state, returning
#: extra routes; this is how approvals, webauthn, webhooks and the Merkle log plug in
#: without the core importing them.
Extension = Callable[[RelayState], list[Any]]


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    keyring: Keyring | None = None,
    limiter: RateLimiter | None = None,
    clock: Callable[[], float] = time.time,
    extensions: list[Extension] | None = None,
) -> Starlette:
    state_holder: dict[str, RelayState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = store or store_from_settings(settings)
        await db.open()
        db.observe_commits(metrics().observe_commit)
        applied = await db.migrate()
        if applied:
            log.info("db.migrated", applied=applied)
        ring = keyring or load_or_create_keyring(settings.master_key_file)
        service = VerificationService(settings, db, ring, clock=clock)
        state = RelayState(
            settings=settings,
            store=db,
            keyring=ring,
            service=service,
            limiter=limiter or await _make_limiter(settings),
            metrics=metrics(),
            clock=clock,
        )
        app.state.relay = state
        state_holder["state"] = state
        for extension in extensions or default_extensions():
            for route in extension(state):
                app.router.routes.append(route)
        retention.start(state)  # core, not an extension: every relay prunes stale claims
        log.info(
            "relay.started", audience=settings.audience, database=_redact(settings.database.url)
        )
        if not await db.list_api_keys():
            log.warning(
                "relay.no_api_keys",
                hint="create one: proof-messenger apikey create --name backend-1 "
                "--scopes verify,keys:write,audit:read",
            )
        try:
            yield
        finally:
            for task in state.background:
                task.cancel()
            for task in state.background:
                with contextlib.suppress(BaseException):
                    await task
            for closer in state.features.get("closers", []):
                with contextlib.suppress(Exception):
                    await closer()
            await state.limiter.close()
            await db.close()
            db.observe_commits(None)
            log.info("relay.stopped")

    middleware = [Middleware(RequestContextMiddleware, access_log=settings.access_log)]
    if settings.cors.allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors.allow_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
                max_age=600,
            )
        )
    routes = [*health.routes, *verify.routes, *keys.routes, *audit.routes, *docs.routes]
    app = RelayApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            HTTPProblem: _problem_handler,
            ProofMessengerError: _problem_handler,
            StoreUnavailable: _store_unavailable_handler,
            HTTPException: _http_exception_handler,
            Exception: _internal_error_handler,
        },
    )
    app.enable_fast_path(
        verify.routes,
        access_log=settings.access_log,
        cors=bool(settings.cors.allow_origins),
    )
    return app


class RelayApp(Starlette):
    """Starlette, plus a direct dispatch of the hot routes (``POST /verify``, ``/verify/batch``).

    Those two requests skip Starlette's error and exception middleware, the router's
    linear match over every route and the endpoint wrapper: the same endpoint runs with
    the same request-context middleware (request id, access log, metrics) and the same
    exception handlers, so answers, headers and logs are identical. Its request is a
    ``FastRequest``, whose headers are indexed once (``IndexedHeaders``, same lookups as
    Starlette's). Anything else (other methods, other paths, a CORS request when CORS is
    configured) takes the normal stack.
    """

    _fast_routes: dict[str, Route]
    _fast_app: ASGIApp | None = None
    _fast_cors: bool = False

    def enable_fast_path(self, routes: list[Route], *, access_log: bool, cors: bool) -> None:
        self._fast_routes = {
            r.path: r for r in routes if r.methods is not None and "POST" in r.methods
        }
        self._fast_cors = cors
        self._fast_app = RequestContextMiddleware(self._dispatch_fast, access_log=access_log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._fast_app is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self._fast_routes
            and not (self._fast_cors and _has_origin(scope))
        ):
            scope["app"] = self
            await self._fast_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _dispatch_fast(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._fast_routes[scope["path"]]
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = FastRequest(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        for cls in type(exc).__mro__:
            handler: Callable[[Request, Exception], Any] | None = self.exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])


async def _make_limiter(settings: Settings) -> RateLimiter:
    rate, burst = settings.limits.rate_limit_per_second, settings.limits.rate_limit_burst
    if settings.redis_url:
        from .redis_ratelimit import RedisRateLimiter

        limiter: RateLimiter = await RedisRateLimiter.connect(settings.redis_url, rate, burst)
        return limiter
    return LocalRateLimiter(rate, burst)


def default_extensions() -> list[Extension]:
    """The feature modules, in installation order; each adds its routes, service hooks and
    background tasks at start-up (imported here, not at the top, because some of them
    import this module's helpers)."""
    from . import (
        approvals,
        log_routes,
        policy_routes,
        web_pages,
        webauthn_routes,
        webhooks_routes,
    )

    return [
        approvals.install,
        webauthn_routes.install,
        webhooks_routes.install,
        log_routes.install,
        web_pages.install,
        policy_routes.install,
    ]


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


async def _problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem | ProofMessengerError)
    return problem_response(exc, instance=request.url.path)


async def _store_unavailable_handler(request: Request, exc: Exception) -> Response:
    log.error("store.unavailable", error=str(exc)[:300])
    return problem_response(
        HTTPProblem(
            503,
            "store_unavailable",
            "Store unavailable",
            "the relay's database is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        ),
        instance=request.url.path,
    )


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: ("not_found", "Not found"), 405: ("method_not_allowed", "Method not allowed")}
    code, title = codes.get(exc.status_code, ("http_error", "HTTP error"))
    # Keep Starlette's headers: a 405 must say which methods are allowed (RFC 9110 §15.5.6).
    return problem_response(
        HTTPProblem(exc.status_code, code, title, str(exc.detail), headers=dict(exc.headers or {})),
        instance=request.url.path,
    )


async def _internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("internal_error", path=request.url.path)
    return problem_response(
        HTTPProblem(
            500,
            "internal_error",
            "Internal error",
            "an unexpected error occurred; it has been logged",
        ),
        instance=request.url.path,
    )


class RequestContextMiddleware:
    """Request id, structured access log and in-flight gauge, in plain ASGI."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
                break
        if not request_id:
            request_id = os.urandom(16).hex()  # as random as uuid4().hex, at a fraction of the cost
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        m = metrics()
        m.request_started()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.request_finished()
            route = _route_label(scope)
            m.count_request(route, status)
            if self.access_log:
                # log.bind().info is what log.info resolves to (the lazy proxy's
                # __getattr__ calls bind()), without the failed attribute lookup first.
                log.bind().info(
                    "http.request",
                    request_id=request_id,
                    method=scope["method"],
                    path=scope["path"][:200],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    api_key=scope.get("state", {}).get("api_key_id"),
                )


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
