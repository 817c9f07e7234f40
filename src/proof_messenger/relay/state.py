"""What every request handler can reach: settings, store, services, auth helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..audit.crypto import Keyring
from ..store.base import ApiKeyRecord, Store, StoreUnavailable
from . import apikeys
from .config import Settings
from .metrics import Metrics
from .problems import HTTPProblem
from .ratelimit import RateLimiter
from .service import ClientInfo, Identity, VerificationService

__all__ = ["RelayState", "relay_state"]


@dataclass
class RelayState:
    settings: Settings
    store: Store
    keyring: Keyring
    service: VerificationService
    limiter: RateLimiter
    metrics: Metrics
    clock: Callable[[], float] = time.time
    #: Feature modules (approvals, webhooks, log, policy...) hang their objects here.
    features: dict[str, Any] = field(default_factory=dict)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def authenticate(self, request: Request, *scopes: str) -> ApiKeyRecord:
        """Bearer API key with one of ``scopes``; then the key's rate limit."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPProblem(
                401,
                "unauthorized",
                "Authentication required",
                "send 'Authorization: Bearer <api key>'",
                headers={"WWW-Authenticate": 'Bearer realm="proof-messenger"'},
            )
        token = token.strip()
        # --- OIDC callers: a bearer JWT from the configured IdP -------------------
        oidc_caller = self.features.get("oidc_caller")
        if oidc_caller is not None and token.startswith("eyJ"):
            jwt_record: ApiKeyRecord = await oidc_caller(token)
            return await self._authorize(request, jwt_record, scopes)
        # --- end OIDC callers --------------------------------------------------------------
        parsed = apikeys.parse_api_key(token)
        record: ApiKeyRecord | None = None
        if parsed is not None:
            try:
                record = await self.store.get_api_key(parsed.key_id)
            except StoreUnavailable as exc:
                raise HTTPProblem(
                    503,
                    "store_unavailable",
                    "Store unavailable",
                    str(exc),
                    headers={"Retry-After": "1"},  # like every other 503: clients back off
                ) from exc
        # Compare even when the id is unknown, so timing does not reveal which ids exist.
        stored_hash = record.secret_hash if record is not None else b"\x00" * 32
        ok = apikeys.matches(token, stored_hash) and record is not None
        if not ok or record is None or record.revoked_at is not None:
            raise HTTPProblem(
                401,
                "invalid_api_key",
                "Invalid API key",
                "the API key is unknown, malformed or revoked",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return await self._authorize(request, record, scopes)

    async def _authorize(
        self, request: Request, record: ApiKeyRecord, scopes: tuple[str, ...]
    ) -> ApiKeyRecord:
        """Scope check and rate limit of an authenticated caller (API key or JWT)."""
        granted = apikeys.expand(record.scopes)
        if scopes and not granted.intersection(scopes):
            raise HTTPProblem(
                403,
                "insufficient_scope",
                "Insufficient scope",
                f"this route needs the scope {' or '.join(scopes)}",
                required_scope=scopes[0],
            )
        await self.rate_limit(record.id, "this API key")
        # What ``request.state.api_key_id = ...`` stores, without building a State.
        request.scope.setdefault("state", {})["api_key_id"] = record.id
        return record

    async def user_identity(self, request: Request) -> Identity | None:
        """The end user's verified ID token (``X-User-Token``), if the request carries one.

        Without an ``oidc.user_tokens`` config a user token is refused
        (400) rather than ignored, so a caller never believes roles were checked.
        """
        token = request.headers.get("x-user-token")
        if token is None:
            return None
        verify_user = self.features.get("user_identity")
        if verify_user is None:
            raise HTTPProblem(
                400,
                "user_token_not_supported",
                "User tokens not configured",
                "this relay has no oidc.user_tokens configuration; remove X-User-Token",
            )
        identity: Identity = await verify_user(token.strip())
        return identity

    async def rate_limit(self, bucket: str, who: str) -> None:
        """Take a token from ``bucket``; a 429 with Retry-After when it is empty."""
        retry_after = await self.limiter.acquire(bucket)
        if retry_after is not None:
            seconds = max(1, int(retry_after + 0.999))
            raise HTTPProblem(
                429,
                "rate_limited",
                "Too many requests",
                f"rate limit for {who} exceeded; retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )

    def client(self, request: Request) -> ClientInfo:
        # Straight from the scope: ``request.client`` builds an Address and
        # ``request.state`` a State each time (what they read is the same).
        scope = request.scope
        host_port = scope.get("client")
        state = scope.get("state")
        return ClientInfo(
            ip=host_port[0] if host_port is not None else None,
            user_agent=request.headers.get("user-agent"),
            api_key_id=state.get("api_key_id") if state is not None else None,
        )


def relay_state(request: Request) -> RelayState:
    state: RelayState = request.app.state.relay
    return state
