"""Callers authenticating with IdP JWTs against a real relay; JWKS rotation mid-test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml

from tests.policy.harness import (
    Issuer,
    Relay,
    new_key,
    running_issuer,
    running_relay,
)

CALLER_AUD = "proof-messenger-relay"
APP_AUD = "banking-app"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def relay(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    work = tmp_path_factory.mktemp("oidc-e2e")
    (work / "policy.yaml").write_text(yaml.safe_dump({"rules": [{"name": "all", "default": True}]}))
    config = {
        "oidc": {
            "issuer": issuer.url,
            "algorithms": ["RS256", "ES256"],
            "leeway_seconds": 5,
            "jwks_min_refresh_seconds": 0,
            "callers": {
                "audience": [CALLER_AUD, "other-api"],
                "scope_map": {"payments:verify": "verify", "payments:keys": "keys:write"},
            },
            "user_tokens": {"audience": APP_AUD, "role_claims": ["realm_access.roles"]},
        },
        "policy": {"file": "policy.yaml"},
    }
    with running_relay(work, config) as r:
        yield r


def caller(issuer: Issuer, scope: str = "verify keys:write", **kw: object) -> str:
    return issuer.token("backend-1", CALLER_AUD, scope=scope, **kw)  # type: ignore[arg-type]


def problem(relay: Relay, token: str) -> tuple[int, str, str]:
    r = relay.client.get("/keys", headers={"authorization": f"Bearer {token}"})
    body = r.json()
    return r.status_code, body.get("code", ""), body.get("reason", "")


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_caller_jwt_registers_and_verifies(relay: Relay, issuer: Issuer, alg: str) -> None:
    from proof_messenger.protocol import create_proof, generate_private_key, public_key_der
    from proof_messenger.protocol.encoding import b64u_encode

    token = caller(issuer, alg=alg)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    sub = f"u-{uuid.uuid4().hex[:6]}"
    key = generate_private_key()
    r = relay.client.post(
        "/keys", headers=headers, json={"sub": sub, "public_key": b64u_encode(public_key_der(key))}
    )
    assert r.status_code in (200, 201), r.text
    proof = create_proof(key, {"type": "note"}, aud="payments.example.com", sub=sub)
    r = relay.client.post("/verify", headers=headers, content=proof.to_json())
    assert r.status_code == 200, r.text


def test_scp_list_and_scope_map(relay: Relay, issuer: Issuer) -> None:
    token = issuer.token("backend-2", "other-api", scp=["payments:keys"])
    r = relay.client.get("/keys", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text  # keys:write implies keys:read


def test_missing_scope_is_403(relay: Relay, issuer: Issuer) -> None:
    status, code, _ = problem(relay, caller(issuer, scope="verify"))
    assert (status, code) == (403, "insufficient_scope")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: caller(i, ttl=-3600), "token_expired"),
        (lambda i: caller(i, iss="https://evil.example.com"), "wrong_issuer"),
        (lambda i: i.token("backend-1", "someone-else", scope="verify"), "wrong_audience"),
        (lambda i: caller(i, key=new_key("RS256")), "unknown_signing_key"),
        (
            lambda i: jwt.encode(
                {"iss": i.url, "sub": "b", "aud": CALLER_AUD, "exp": int(time.time()) + 60},
                new_key("RS256").private,
                algorithm="RS256",
                headers={"kid": i.key("RS256").kid},
            ),
            "invalid_token_signature",
        ),
        (
            lambda i: jwt.encode(
                {"iss": i.url, "sub": "b", "aud": CALLER_AUD, "exp": int(time.time()) + 60},
                "s" * 32,
                algorithm="HS256",
                headers={"kid": i.key("RS256").kid},
            ),
            "disallowed_algorithm",
        ),
        (
            lambda i: jwt.encode(
                {"iss": i.url, "aud": CALLER_AUD, "exp": int(time.time()) + 60},
                i.key("ES256").private,
                algorithm="ES256",
                headers={"kid": i.key("ES256").kid},
            ),
            "missing_claim",
        ),
    ],
    ids=["expired", "issuer", "audience", "unknown-kid", "bad-signature", "hs256", "no-sub"],
)
def test_bad_caller_tokens_get_clear_401s(relay: Relay, issuer: Issuer, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    r = relay.client.get("/keys", headers={"authorization": f"Bearer {make(issuer)}"})
    assert r.status_code == 401, r.text
    body = r.json()
    assert (body["code"], body["reason"]) == ("invalid_token", reason)
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_key_rotation_mid_test(relay: Relay, issuer: Issuer) -> None:
    old = caller(issuer)
    assert problem(relay, old)[0] == 200
    fetches = issuer.jwks_requests
    issuer.rotate()
    new = caller(issuer)
    assert relay.client.get("/keys", headers={"authorization": f"Bearer {new}"}).status_code == 200
    assert issuer.jwks_requests > fetches  # the unknown kid made the relay refetch
    # The retired key is gone from the JWKS: its tokens no longer verify.
    assert problem(relay, old) == (401, "invalid_token", "unknown_signing_key")


def test_user_token_roles_from_nested_claim(relay: Relay, issuer: Issuer) -> None:
    from proof_messenger.protocol import create_proof, generate_private_key

    sub = f"u-{uuid.uuid4().hex[:6]}"
    key = relay.register(sub)
    assert isinstance(key, type(generate_private_key()))
    token = issuer.token(sub, APP_AUD, realm_access={"roles": ["treasury"]})
    proof = create_proof(key, {"type": "note"}, aud="payments.example.com", sub=sub)
    r = relay.client.post(
        "/verify", headers=relay.headers(user_token=token), content=proof.to_json()
    )
    assert r.status_code == 200, r.text
    other = issuer.token("someone-else", APP_AUD)
    proof = create_proof(key, {"type": "note", "n": 2}, aud="payments.example.com", sub=sub)
    r = relay.client.post(
        "/verify", headers=relay.headers(user_token=other), content=proof.to_json()
    )
    assert r.json()["code"] == "subject_mismatch"


def test_invalid_oidc_or_policy_section_stops_serve_with_exit_2(tmp_path: Path) -> None:
    from tests.policy.harness import cli

    cfg = tmp_path / "relay.yaml"
    cfg.write_text(
        yaml.safe_dump({"oidc": {"issuer": "http://idp.example.com", "callers": {"audience": "x"}}})
    )
    result = cli(tmp_path, cfg, "serve")
    assert result.returncode == 2
    assert "oidc.issuer: must be an https:// URL" in result.stderr
    cfg.write_text(
        yaml.safe_dump(
            {"policy": {"rules": [{"name": "a", "default": True, "approvals": {"required": 2}}]}}
        )
    )
    result = cli(tmp_path, cfg, "serve")
    assert result.returncode == 2
    assert "policy.rules[0].approvals.roles" in result.stderr
