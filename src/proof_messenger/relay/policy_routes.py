"""Relay extension: OIDC identities and the policy engine.

``install(state)`` validates the ``oidc:`` and ``policy:`` sections (a bad section stops
the relay at start), wires the policy hook into the verification service, the JWT
paths into ``RelayState`` (``features["oidc_caller"]``, ``features["user_identity"]``),
starts the policy file watcher and the SIGHUP handler, and returns the routes
``GET /policy`` and ``GET /authorizations/{tx_key}``. ``prepare(settings)`` runs the same
validation in ``serve`` before workers fork.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..store.base import ApiKeyRecord, StoreUnavailable
from .config import Settings
from .openapi import register_paths
from .problems import HTTPProblem, json_response
from .service import Identity
from .state import RelayState, relay_state

# The OIDC verifier (httpx, PyJWT) and the policy engine (PyYAML, prometheus counters)
# are imported only when their section is configured (or a route needs them): a relay
# without ``oidc:``/``policy:`` starts faster and each worker holds several MB less.
if TYPE_CHECKING:
    from .oidc import OidcSettings, TokenError, TokenVerifier
    from .policy_runtime import PolicyConfig, PolicyManager

__all__ = ["install", "prepare"]

_TX_KEY = re.compile(r"[A-Za-z0-9_-]{43}")


def _config_path() -> Path | None:
    value = os.environ.get("PROOF_MESSENGER_CONFIG")
    return Path(value) if value else None


def validate(
    settings: Settings, config_path: Path | None = None
) -> tuple[OidcSettings | None, PolicyConfig | None]:
    """Both sections, validated; raises ConfigError naming the setting."""
    oidc: OidcSettings | None = None
    policy: PolicyConfig | None = None
    if settings.extra.get("oidc") is not None:
        from .oidc import parse_oidc

        oidc = parse_oidc(settings.extra["oidc"])
    if settings.extra.get("policy") is not None:
        from .policy_runtime import load_policy_config

        policy = load_policy_config(settings.extra["policy"], config_path or _config_path())
    return oidc, policy


def prepare(settings: Settings) -> None:
    """Called by ``serve`` before forking: refuse to start on an invalid section."""
    validate(settings)


def _problem(description: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {"application/problem+json": {"schema": ref}}}


def _ok(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/policy": {
        "get": {
            "summary": "The policy in force: version, source, rules, reload failures",
            "operationId": "getPolicy",
            "tags": ["policy"],
            "security": [{"apiKey": []}],
            "responses": {"200": _ok("The active policy"), "401": _problem("Not authenticated")},
        }
    },
    "/authorizations/{tx_key}": {
        "get": {
            "summary": "N-of-M approval state of a transaction (pending/complete, still needed)",
            "operationId": "getAuthorization",
            "tags": ["policy"],
            "security": [{"apiKey": []}],
            "parameters": [
                {
                    "name": "tx_key",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
                }
            ],
            "responses": {
                "200": _ok("Approvals so far and what is still needed"),
                "400": _problem("Malformed transaction key"),
                "401": _problem("Not authenticated"),
                "404": _problem("unknown_transaction: no approvals recorded"),
            },
        }
    },
}


def install(state: RelayState) -> list[Route]:
    oidc, policy = validate(state.settings)
    register_paths(OPENAPI_PATHS)
    closers = state.features.setdefault("closers", [])
    if oidc is not None:
        from .oidc import JwksCache, TokenVerifier

        jwks = JwksCache(oidc)
        verifier = TokenVerifier(oidc, jwks)
        closers.append(jwks.close)
        state.features["oidc"] = verifier
        if oidc.callers is not None:
            state.features["oidc_caller"] = _caller_authenticator(verifier, oidc)
        if oidc.user_tokens is not None:
            state.features["user_identity"] = _user_identity(verifier, oidc)
    if policy is not None:
        from .policy_runtime import PolicyEnforcer, PolicyManager

        manager = PolicyManager(policy, clock=state.clock)
        state.features["policy"] = manager
        state.service.policy = PolicyEnforcer(manager, state.store, clock=state.clock)
        if manager.install_sighup():

            async def remove_handler() -> None:
                manager.remove_sighup()

            closers.append(remove_handler)
        state.background.append(
            asyncio.get_running_loop().create_task(manager.watch(), name="policy-watch")
        )
    return [
        Route("/policy", get_policy, methods=["GET"]),
        Route("/authorizations/{tx_key}", get_authorization, methods=["GET"]),
    ]


def _token_problem(exc: TokenError, code: str, title: str, realm_error: bool) -> HTTPProblem:
    from .oidc import IdpUnavailable

    if isinstance(exc, IdpUnavailable):
        return HTTPProblem(
            503,
            "idp_unavailable",
            "Identity provider unavailable",
            exc.detail,
            headers={"Retry-After": "5"},
        )
    headers = (
        {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.reason}"'}
        if realm_error
        else {}
    )
    return HTTPProblem(401, code, title, exc.detail, headers=headers, reason=exc.reason)


def _caller_authenticator(verifier: TokenVerifier, oidc: OidcSettings) -> Any:
    from .oidc import TokenError, scopes_from_claims

    assert oidc.callers is not None
    callers = oidc.callers

    async def authenticate(token: str) -> ApiKeyRecord:
        try:
            claims = await verifier.verify(token, callers.audience)
        except TokenError as exc:
            raise _token_problem(exc, "invalid_token", "Invalid bearer token", True) from exc
        iat = claims.get("iat")
        return ApiKeyRecord(
            id=f"oidc:{claims['sub'][:200]}",
            name=str(claims.get("azp") or claims.get("client_id") or claims["sub"])[:200],
            secret_hash=b"",
            scopes=scopes_from_claims(claims, callers),
            created_at=float(iat) if isinstance(iat, int | float) else 0.0,
        )

    return authenticate


def _user_identity(verifier: TokenVerifier, oidc: OidcSettings) -> Any:
    from .oidc import TokenError, roles_from_claims

    assert oidc.user_tokens is not None
    users = oidc.user_tokens

    async def identity(token: str) -> Identity:
        try:
            claims = await verifier.verify(token, users.audience)
            roles = roles_from_claims(claims, users.role_claims)
        except TokenError as exc:
            raise _token_problem(exc, "invalid_user_token", "Invalid user token", False) from exc
        kept: dict[str, Any] = {k: claims[k] for k in ("iss", "aud", "exp", "iat") if k in claims}
        return Identity(sub=claims["sub"], roles=roles, claims=kept)

    return identity


# --- routes ----------------------------------------------------------------------------------
async def get_policy(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "audit:read")
    manager: PolicyManager | None = state.features.get("policy")
    if manager is None:
        return json_response({"version": None, "source": None, "rules": []})
    return json_response(manager.describe())


async def get_authorization(request: Request) -> Response:
    state = relay_state(request)
    await state.authenticate(request, "verify", "audit:read")
    tx_key = request.path_params["tx_key"]
    if _TX_KEY.fullmatch(tx_key) is None:
        raise HTTPProblem(
            400, "invalid_request", "Invalid transaction key", "expected 43 base64url characters"
        )
    try:
        approvals = await state.store.list_policy_approvals(tx_key)
    except StoreUnavailable as exc:
        raise HTTPProblem(503, "store_unavailable", "Store unavailable", str(exc)) from exc
    if not approvals:
        raise HTTPProblem(
            404, "unknown_transaction", "Unknown transaction", "no approvals recorded for this key"
        )
    from .policy_runtime import authorization_body

    manager: PolicyManager | None = state.features.get("policy")
    rule_name = approvals[0].rule
    requirement = None
    if manager is not None:
        rule = next((r for r in manager.current.rules if r.name == rule_name), None)
        requirement = rule.approvals if rule is not None else None
    return json_response(authorization_body(tx_key, rule_name, requirement, approvals))
