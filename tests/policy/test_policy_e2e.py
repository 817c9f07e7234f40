"""The policy engine against a real relay over HTTP, with a local OIDC issuer for roles."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from proof_messenger.protocol import Intent, b64u_decode, sign_intent

from .harness import Issuer, Relay, running_issuer, running_relay, wait_until

CALLER_AUD = "proof-messenger-relay"
APP_AUD = "banking-app"
M = 100  # minor units per EUR


def _hhmm(dt: datetime) -> str:
    return f"{dt:%H:%M}"


def policy_doc(clerk_limit: int = 1_000_000 * M) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "rules": [
            {
                "name": "wire-over-limit",
                "match": {"type": "wire_transfer"},
                "roles_allowed": ["clerk", "treasury"],
                "max_amount": {
                    "currency": "EUR",
                    "by_role": {"clerk": clerk_limit, "treasury": 5_000_000 * M},
                },
                "approvals": {
                    "required": 2,
                    "roles": ["treasury"],
                    "above": {"amount_minor": 1_000_000 * M, "currency": "EUR"},
                },
            },
            {
                "name": "card-uv",
                "match": {"type": "card_payment"},
                "require_user_verification_above": {"amount_minor": 500 * M, "currency": "EUR"},
            },
            {"name": "fresh-only", "match": {"type": "stale_check"}, "max_proof_age_seconds": 30},
            {
                "name": "desk-open",
                "match": {"type": "fx_open"},
                "allowed_hours": {
                    "from": _hhmm(now - timedelta(hours=1)),
                    "to": _hhmm(now + timedelta(hours=1)),
                    "timezone": "UTC",
                },
            },
            {
                "name": "desk-closed",
                "match": {"type": "fx_closed"},
                "allowed_hours": {
                    "from": _hhmm(now + timedelta(hours=2)),
                    "to": _hhmm(now + timedelta(hours=3)),
                    "timezone": "Europe/Berlin",
                },
            },
            {"name": "default", "default": True},
        ]
    }


def relay_config(issuer: Issuer, policy_file: Path, interval: float = 0.3) -> dict[str, Any]:
    return {
        "oidc": {
            "issuer": issuer.url,
            "algorithms": ["RS256", "ES256"],
            "jwks_min_refresh_seconds": 0,
            "callers": {"audience": CALLER_AUD},
            "user_tokens": {"audience": APP_AUD, "role_claims": ["roles", "groups"]},
        },
        "policy": {"file": str(policy_file), "reload_interval_seconds": interval},
    }


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def relay(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    work = tmp_path_factory.mktemp("policy-e2e")
    policy_file = work / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc()))
    with running_relay(work, relay_config(issuer, policy_file)) as r:
        yield r


def user(issuer: Issuer, sub: str, *roles: str) -> str:
    return issuer.token(sub, APP_AUD, roles=list(roles))


def wire(amount_eur: int, **extra: Any) -> dict[str, Any]:
    return {"type": "wire_transfer", "amount_minor": amount_eur * M, "currency": "EUR", **extra}


def sub() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


# --- single rules --------------------------------------------------------------------------
def test_clerk_wire_within_limit_is_accepted(relay: Relay, issuer: Issuer) -> None:
    s = sub()
    key = relay.register(s)
    r = relay.verify(key, s, wire(12_500), user(issuer, s, "clerk"))
    assert r.status_code == 200, r.text
    assert r.json()["valid"] is True
    assert "authorization" not in r.json()


def test_clerk_wire_over_limit_names_rule_and_amounts(relay: Relay, issuer: Issuer) -> None:
    s = sub()
    key = relay.register(s)
    r = relay.verify(key, s, wire(2_500_000), user(issuer, s, "clerk"))
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["code"] == "policy_denied"
    assert body["rule"] == "wire-over-limit"
    assert body["detail"] == "amount 2,500,000.00 EUR exceeds 1,000,000.00 EUR for role clerk"
    assert body["audit_event_id"]


def test_role_gated_rule_without_user_token_denies(relay: Relay) -> None:
    s = sub()
    key = relay.register(s)
    r = relay.verify(key, s, wire(10))
    assert r.status_code == 403
    assert r.json()["rule"] == "wire-over-limit"
    assert r.json()["detail"].startswith("no verified roles")


def test_roles_from_groups_claim_and_wrong_role(relay: Relay, issuer: Issuer) -> None:
    s = sub()
    key = relay.register(s)
    ok = relay.verify(key, s, wire(10), issuer.token(s, APP_AUD, groups=["clerk"]))
    assert ok.status_code == 200, ok.text
    r = relay.verify(key, s, wire(10), user(issuer, s, "intern"))
    assert r.status_code == 403
    assert "holds role intern" in r.json()["detail"]


def test_user_token_of_another_subject_is_subject_mismatch(relay: Relay, issuer: Issuer) -> None:
    s = sub()
    key = relay.register(s)
    r = relay.verify(key, s, wire(10), user(issuer, "mallory", "treasury"))
    assert r.json()["code"] == "subject_mismatch"
    assert r.status_code >= 400


def test_invalid_user_token_is_401_with_reason(relay: Relay, issuer: Issuer) -> None:
    s = sub()
    key = relay.register(s)
    expired = issuer.token(s, APP_AUD, ttl=-3600, roles=["clerk"])
    r = relay.verify(key, s, wire(10), expired)
    assert r.status_code == 401
    assert (r.json()["code"], r.json()["reason"]) == ("invalid_user_token", "token_expired")
    wrong_aud = issuer.token(s, CALLER_AUD, roles=["clerk"])
    r = relay.verify(key, s, wire(10), wrong_aud)
    assert (r.status_code, r.json()["reason"]) == (401, "wrong_audience")


def test_user_verification_threshold(relay: Relay) -> None:
    s = sub()
    key = relay.register(s)
    card = {"type": "card_payment", "currency": "EUR"}
    assert relay.verify(key, s, {**card, "amount_minor": 500 * M}).status_code == 200
    r = relay.verify(key, s, {**card, "amount_minor": 500 * M + 1})
    assert r.status_code == 403
    assert r.json()["rule"] == "card-uv"
    assert "user verification required" in r.json()["detail"]


def _passkey_proof(relay: Relay, sub: str, ctx: dict[str, Any], uv: bool) -> str:
    """A webauthn.ES256 proof from a software authenticator whose credential is stored
    in the relay's database through the Store API (the relay has no passkey
    registration route on this branch)."""
    import asyncio
    import hashlib
    import json
    import os
    import time

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from proof_messenger.protocol import Intent, Proof, generate_private_key, public_key_der
    from proof_messenger.protocol.encoding import b64u_encode
    from proof_messenger.store import KeyRecord, open_store

    key = generate_private_key()
    cred_id = os.urandom(16)

    async def store_credential() -> None:
        store = open_store(f"sqlite:///{relay.workdir / 'audit.db'}")
        await store.open()
        try:
            await store.insert_key(
                KeyRecord(
                    kid=b64u_encode(cred_id),
                    sub=sub,
                    alg="webauthn.ES256",
                    public_key=public_key_der(key),
                    created_at=time.time(),
                )
            )
        finally:
            await store.close()

    asyncio.run(store_credential())
    intent = Intent.create(ctx, aud="payments.example.com", sub=sub, ttl=300)
    challenge = b64u_encode(intent.digest())
    client_data = json.dumps(
        {"type": "webauthn.get", "challenge": challenge, "origin": "https://payments.example.com"}
    ).encode()
    flags = 0x01 | (0x04 if uv else 0)
    auth_data = hashlib.sha256(b"payments.example.com").digest() + bytes([flags]) + b"\0\0\0\1"
    sig = key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
    proof = Proof(
        alg="webauthn.ES256",
        kid=b64u_encode(cred_id),
        intent=intent.to_bytes(),
        sig=sig,
        authenticator_data=auth_data,
        client_data_json=client_data,
    )
    return proof.to_json()


@pytest.mark.parametrize("uv", [True, False])
def test_passkey_user_verification_above_threshold(relay: Relay, uv: bool) -> None:
    s = sub()
    ctx = {"type": "card_payment", "amount_minor": 900 * M, "currency": "EUR"}
    body = _passkey_proof(relay, s, ctx, uv)
    r = relay.client.post("/verify", headers=relay.headers(), content=body)
    if uv:
        assert r.status_code == 200, r.text
        assert r.json()["user_verified"] is True
    else:
        assert r.status_code == 403, r.text
        assert r.json()["rule"] == "card-uv"
        assert "did not set the UV flag" in r.json()["detail"]


def test_max_proof_age(relay: Relay) -> None:
    s = sub()
    key = relay.register(s)
    import time

    assert relay.verify(key, s, {"type": "stale_check"}).status_code == 200
    old = relay.verify(key, s, {"type": "stale_check", "n": 2}, now=time.time() - 120)
    assert old.status_code == 403, old.text
    assert old.json()["rule"] == "fresh-only"
    assert "exceeds the maximum of 30 s" in old.json()["detail"]


def test_allowed_hours(relay: Relay) -> None:
    s = sub()
    key = relay.register(s)
    assert relay.verify(key, s, {"type": "fx_open"}).status_code == 200
    r = relay.verify(key, s, {"type": "fx_closed"})
    assert r.status_code == 403
    assert r.json()["rule"] == "desk-closed"
    assert "outside the allowed hours" in r.json()["detail"]


def test_default_rule_allows_other_types(relay: Relay) -> None:
    s = sub()
    key = relay.register(s)
    assert relay.verify(key, s, {"type": "note"}).status_code == 200


# --- N-of-M ------------------------------------------------------------------------------------
def test_two_treasury_approvers_for_wires_over_one_million(relay: Relay, issuer: Issuer) -> None:
    ctx = wire(2_500_000, transaction_id=uuid.uuid4().hex, creditor="ACME")
    t1, t2, clerk = sub(), sub(), sub()
    k1, k2, kc = relay.register(t1), relay.register(t2), relay.register(clerk)

    first = relay.verify(k1, t1, ctx, user(issuer, t1, "treasury"))
    assert first.status_code == 200, first.text
    auth = first.json()["authorization"]
    assert auth["status"] == "pending"
    assert auth["required"] == 2
    assert auth["still_needed"] == {"count": 1, "roles": ["treasury"]}
    assert [a["sub"] for a in auth["approvals"]] == [t1]
    tx_key = auth["transaction_key"]

    # The same proof again is a replay; a new proof by the same approver does not count twice.
    from proof_messenger.protocol import create_proof

    proof = create_proof(k1, ctx, aud="payments.example.com", sub=t1)
    headers = relay.headers(user_token=user(issuer, t1, "treasury"))
    again = relay.client.post("/verify", headers=headers, content=proof.to_json())
    assert again.status_code == 200
    assert again.json()["authorization"]["still_needed"]["count"] == 1
    replay = relay.client.post("/verify", headers=headers, content=proof.to_json())
    assert (replay.status_code, replay.json()["code"]) == (409, "replayed")

    # A clerk cannot approve (the rule's limit for clerks is below the amount).
    denied = relay.verify(kc, clerk, ctx, user(issuer, clerk, "clerk"))
    assert denied.status_code == 403
    assert denied.json()["code"] == "policy_denied"
    assert denied.json()["rule"] == "wire-over-limit"

    second = relay.verify(k2, t2, ctx, user(issuer, t2, "treasury"))
    assert second.status_code == 200, second.text
    auth = second.json()["authorization"]
    assert auth["status"] == "complete"
    assert auth["transaction_key"] == tx_key
    assert sorted(a["sub"] for a in auth["approvals"]) == sorted([t1, t2])
    assert auth["still_needed"]["count"] == 0

    state = relay.client.get(f"/authorizations/{tx_key}", headers=relay.headers())
    assert state.status_code == 200
    assert state.json()["status"] == "complete"
    assert len(state.json()["approvals"]) == 2
    missing = relay.client.get("/authorizations/" + "A" * 43, headers=relay.headers())
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_transaction")


def test_get_policy_shows_version(relay: Relay) -> None:
    r = relay.client.get("/policy", headers=relay.headers())
    assert r.status_code == 200
    body = r.json()
    assert len(body["version"]) == 16
    assert body["rules"][0]["name"] == "wire-over-limit"
    spec = relay.client.get("/openapi.json").json()
    assert {"/policy", "/authorizations/{tx_key}"} <= set(spec["paths"])


# --- reload ------------------------------------------------------------------------------------
def test_policy_file_change_is_enforced_and_invalid_file_is_refused(
    issuer: Issuer, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc()))
    with running_relay(tmp_path / "relay", relay_config(issuer, policy_file)) as relay:
        s = sub()
        key = relay.register(s)
        token = user(issuer, s, "clerk")
        assert relay.verify(key, s, wire(500), token).status_code == 200
        before = relay.client.get("/policy", headers=relay.headers()).json()["version"]

        policy_file.write_text(yaml.safe_dump(policy_doc(clerk_limit=100 * M)))
        wait_until(
            lambda: relay.client.get("/policy", headers=relay.headers()).json()["version"] != before
        )
        r = relay.verify(key, s, wire(500, n=2), token)
        assert r.status_code == 403
        assert r.json()["detail"] == "amount 500.00 EUR exceeds 100.00 EUR for role clerk"
        current = relay.client.get("/policy", headers=relay.headers()).json()["version"]

        policy_file.write_text("rules:\n  - name: broken\n    max_amount: lots\n")
        info = wait_until(
            lambda: (
                (b := relay.client.get("/policy", headers=relay.headers()).json())["reload"][
                    "failures"
                ]
                and b
            )
        )
        assert info["version"] == current
        assert "rules[0]" in info["reload"]["last_error"]
        r = relay.verify(key, s, wire(500, n=3), token)
        assert r.status_code == 403  # the previous (valid) policy is still in force
        metrics = relay.client.get("/metrics").text
        assert "proof_messenger_policy_reload_failures_total 1.0" in metrics
        assert "policy.reload_refused" in relay.log_text()


def test_without_oidc_roles_come_from_nowhere_and_sighup_reloads(tmp_path: Path) -> None:
    import os
    import signal

    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc()))
    config = {"policy": {"file": str(policy_file), "reload_interval_seconds": 0}}
    with running_relay(tmp_path / "relay", config) as relay:
        s = sub()
        key = relay.register(s)
        r = relay.verify(key, s, wire(10))
        assert r.status_code == 403
        assert r.json()["detail"].startswith("no verified roles")
        r = relay.verify(key, s, wire(10, n=1), user_token="eyJx.eyJ.x")
        assert (r.status_code, r.json()["code"]) == (400, "user_token_not_supported")

        # Polling is off: only SIGHUP makes the relay re-read the file.
        before = relay.client.get("/policy", headers=relay.headers()).json()["version"]
        policy_file.write_text(yaml.safe_dump({"rules": [{"name": "open", "default": True}]}))
        os.kill(relay.process.pid, signal.SIGHUP)
        wait_until(
            lambda: relay.client.get("/policy", headers=relay.headers()).json()["version"] != before
        )
        assert relay.verify(key, s, wire(10, n=2)).status_code == 200
        assert relay.process.poll() is None  # SIGHUP reloaded; it did not stop the relay


# --- approval requests carry the end user's roles ------------------------------------------
def _approve_with_device_key(relay: Relay, key: Any, approval: dict[str, Any]) -> Any:
    intent = Intent.from_bytes(b64u_decode(approval["intent"]))
    proof = sign_intent(key, intent)
    return relay.client.post(
        f"/approvals/{approval['id']}/proof", headers=relay.headers(), content=proof.to_json()
    )


def test_approval_request_judged_with_roles_of_the_user_token(relay: Relay, issuer: Issuer) -> None:
    s = sub()
    key = relay.register(s)
    created = relay.client.post(
        "/approvals",
        headers=relay.headers(user_token=user(issuer, s, "clerk")),
        json={"sub": s, "context": wire(12_500)},
    )
    assert created.status_code == 201, created.text
    # The page's user has no token: the roles verified at creation are the ones judged.
    r = _approve_with_device_key(relay, key, created.json())
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"


def test_approval_request_without_user_token_has_no_roles(relay: Relay) -> None:
    s = sub()
    key = relay.register(s)
    created = relay.client.post(
        "/approvals", headers=relay.headers(), json={"sub": s, "context": wire(10)}
    )
    assert created.status_code == 201, created.text
    r = _approve_with_device_key(relay, key, created.json())
    assert r.status_code == 403
    assert r.json()["code"] == "policy_denied"
    assert r.json()["detail"].startswith("no verified roles")


def test_approval_request_with_another_subjects_token_is_refused(
    relay: Relay, issuer: Issuer
) -> None:
    s = sub()
    r = relay.client.post(
        "/approvals",
        headers=relay.headers(user_token=user(issuer, "mallory", "treasury")),
        json={"sub": s, "context": wire(10)},
    )
    assert r.status_code == 422
    assert r.json()["code"] == "subject_mismatch"
