"""OIDC settings, claim mapping and the JWKS cache (against a real local issuer)."""

from __future__ import annotations

from typing import Any

import pytest

from proof_messenger.relay.config import ConfigError
from proof_messenger.relay.oidc import (
    CallerSettings,
    JwksCache,
    TokenError,
    TokenVerifier,
    parse_oidc,
    roles_from_claims,
    scopes_from_claims,
)
from tests.policy.harness import new_key, running_issuer


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"callers": {"audience": "a"}}, "oidc.issuer: required"),
        (
            {"issuer": "http://idp.example.com", "callers": {"audience": "a"}},
            "oidc.issuer: must be an https://",
        ),
        ({"issuer": "https://idp.example.com"}, "oidc: configure callers, user_tokens or both"),
        (
            {"issuer": "https://i", "algorithms": ["HS256"], "callers": {"audience": "a"}},
            "oidc.algorithms",
        ),
        (
            {"issuer": "https://i", "algorithms": ["none"], "callers": {"audience": "a"}},
            "oidc.algorithms",
        ),
        ({"issuer": "https://i", "callers": {}}, "oidc.callers.audience: required"),
        (
            {"issuer": "https://i", "callers": {"audience": "a", "scope_map": {"x": "root"}}},
            "oidc.callers.scope_map.x",
        ),
        (
            {"issuer": "https://i", "user_tokens": {"audience": "a", "role_claims": "roles"}},
            "oidc.user_tokens.role_claims",
        ),
        (
            {"issuer": "https://i", "leeway_seconds": -1, "callers": {"audience": "a"}},
            "oidc.leeway_seconds",
        ),
        (
            {"issuer": "https://i", "callers": {"audience": "a"}, "jwks": "x"},
            "oidc.jwks: unknown setting",
        ),
    ],
)
def test_invalid_oidc_sections_name_the_setting(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_oidc(raw)
    assert message in str(info.value)


def test_loopback_http_issuer_is_allowed() -> None:
    s = parse_oidc(
        {"issuer": "http://127.0.0.1:9000/realm", "user_tokens": {"audience": ["a", "b"]}}
    )
    assert s is not None and s.user_tokens is not None
    assert s.user_tokens.audience == ("a", "b")
    assert s.algorithms == ("RS256", "ES256")
    assert parse_oidc(None) is None


def test_scopes_from_scope_string_and_scp_list() -> None:
    callers = CallerSettings(("a",), {"payments:verify": "verify"})
    assert scopes_from_claims({"scope": "openid payments:verify audit:read"}, callers) == (
        "audit:read",
        "verify",
    )
    assert scopes_from_claims({"scp": ["keys:write", "admin"]}, callers) == ("keys:write",)
    assert scopes_from_claims({}, callers) == ()


def test_roles_from_claims() -> None:
    claims = {"roles": ["clerk"], "groups": "treasury", "realm_access": {"roles": ["x"]}, "n": 5}
    assert roles_from_claims(claims, ("roles", "groups", "realm_access.roles", "n", "missing")) == {
        "clerk",
        "treasury",
        "x",
    }
    with pytest.raises(TokenError) as info:
        roles_from_claims({"roles": [f"r{i}" for i in range(300)]}, ("roles",))
    assert info.value.reason == "too_many_roles"


async def test_unknown_kid_refetch_is_rate_limited() -> None:
    now = [1000.0]
    with running_issuer() as issuer:
        settings = parse_oidc(
            {
                "issuer": issuer.url,
                "jwks_min_refresh_seconds": 30,
                "jwks_cache_seconds": 600,
                "callers": {"audience": "api"},
            }
        )
        assert settings is not None
        jwks = JwksCache(settings, clock=lambda: now[0])
        verifier = TokenVerifier(settings, jwks)
        try:
            claims = await verifier.verify(issuer.token("s", "api", alg="ES256"), ("api",))
            assert claims["sub"] == "s"
            assert jwks.fetches == 1
            # A made-up kid right after a fetch: no refetch (the IdP is not hammered).
            with pytest.raises(TokenError) as info:
                await verifier.verify(issuer.token("s", "api", key=new_key("RS256")), ("api",))
            assert info.value.reason == "unknown_signing_key"
            assert jwks.fetches == 1
            # After a rotation and the interval, the new kid triggers one refetch.
            issuer.rotate()
            now[0] += 31
            await verifier.verify(issuer.token("s", "api"), ("api",))
            assert jwks.fetches == 2
            # The cache expires by age too.
            now[0] += 601
            await verifier.verify(issuer.token("s", "api"), ("api",))
            assert jwks.fetches == 3
        finally:
            await jwks.close()


async def test_key_type_must_fit_the_algorithm() -> None:
    with running_issuer() as issuer:
        settings = parse_oidc({"issuer": issuer.url, "callers": {"audience": "api"}})
        assert settings is not None
        jwks = JwksCache(settings)
        try:
            with pytest.raises(TokenError) as info:
                await jwks.key_for(issuer.key("RS256").kid, "ES256")
            assert info.value.reason == "key_algorithm_mismatch"
        finally:
            await jwks.close()


async def test_unreachable_idp_is_idp_unavailable() -> None:
    from tests.policy.harness import free_port

    settings = parse_oidc(
        {
            "issuer": f"http://127.0.0.1:{free_port()}",
            "http_timeout_seconds": 2,
            "callers": {"audience": "a"},
        }
    )
    assert settings is not None
    now = [0.0]
    jwks = JwksCache(settings, clock=lambda: now[0])
    try:
        with pytest.raises(TokenError) as info:
            await jwks.key_for("k", "RS256")
        assert info.value.reason == "idp_unavailable"
        # Right after a failure the relay answers at once instead of queueing fetches.
        with pytest.raises(TokenError) as info:
            await jwks.key_for("k", "RS256")
        assert info.value.reason == "idp_unavailable"
        assert (jwks.attempts, jwks.fetches) == (1, 0)
        now[0] += 10  # after the back-off (jwks_min_refresh_seconds) it tries again
        with pytest.raises(TokenError):
            await jwks.key_for("k", "RS256")
        assert jwks.attempts == 2
    finally:
        await jwks.close()
