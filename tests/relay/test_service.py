"""The relay app in-process (``create_app`` over ``httpx.ASGITransport``), with an injected clock.

The lifespan is driven by hand (``app.router.lifespan_context``), so the real SQLite
store, keyring and routes are used exactly as under uvicorn.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from proof_messenger.protocol import b64u_encode, create_proof, generate_private_key, public_key_der
from proof_messenger.relay.app import create_app
from proof_messenger.relay.config import Settings
from proof_messenger.relay.state import RelayState

from .conftest import Clock, insert_api_key

AUD = "payments.example.com"


@dataclass
class App:
    client: httpx.AsyncClient
    state: RelayState
    clock: Clock
    api_key: str


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = replace(
        Settings(audience=AUD, master_key_file=str(tmp_path / "master.key")),
        database=replace(Settings().database, url=f"sqlite:///{tmp_path / 'relay.db'}"),
    )
    clock = Clock(time.time())
    application = create_app(settings, clock=clock, extensions=[])
    async with application.router.lifespan_context(application):
        state: RelayState = application.state.relay
        full = await insert_api_key(state, ("verify", "keys:write", "audit:read"), clock())
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://relay.test",
            headers={"authorization": f"Bearer {full}"},
        ) as client:
            yield App(client, state, clock, full)


async def test_injected_clock_decides_expiry(app: App) -> None:
    key = generate_private_key()
    r = await app.client.post(
        "/keys", json={"sub": "alice", "public_key": b64u_encode(public_key_der(key))}
    )
    assert r.status_code == 201
    proof = create_proof(key, {"type": "t"}, aud=AUD, sub="alice", ttl=60, now=app.clock.now)
    headers = {"content-type": "application/json"}
    app.clock.now += 60 + 61  # past exp + skew
    r = await app.client.post("/verify", content=proof.to_json(), headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "expired"
    app.clock.now -= 61  # back inside the window: the rejection did not burn the proof
    r = await app.client.post("/verify", content=proof.to_json(), headers=headers)
    assert r.status_code == 200, r.text
    ok = r.json()
    r = await app.client.post("/verify", content=proof.to_json(), headers=headers)
    assert r.status_code == 409

    event = (await app.client.get(f"/audit/{ok['audit_event_id']}")).json()
    assert event["context"] == {"type": "t"}
    # the audit time is the injected clock's
    assert event["time"] == ok["verified_at"]


async def test_expired_rejection_row_is_findable_by_subject(app: App) -> None:
    key = generate_private_key()
    await app.client.post(
        "/keys", json={"sub": "bob", "public_key": b64u_encode(public_key_der(key))}
    )
    old = create_proof(key, {"type": "t"}, aud=AUD, sub="bob", now=app.clock.now - 3600)
    r = await app.client.post(
        "/verify", content=old.to_json(), headers={"content-type": "application/json"}
    )
    assert r.json()["code"] == "expired"
    events = (await app.client.get("/audit", params={"sub": "bob"})).json()["events"]
    assert [e["error_code"] for e in events] == ["expired", None]
    shown = (await app.client.get(f"/audit/{r.json()['audit_event_id']}")).json()
    assert shown["context"] == {"type": "t"} and shown["kid"] == old.kid


async def test_register_key_validation(app: App) -> None:
    r = await app.client.post("/keys", json={"sub": "x", "public_key": "not-a-key"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_public_key"
    r = await app.client.post("/keys", json={"sub": "x"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    key = b64u_encode(public_key_der(generate_private_key()))
    assert (await app.client.post("/keys", json={"sub": "x", "public_key": key})).status_code == 201
    r = await app.client.post("/keys", json={"sub": "x", "public_key": key})
    assert r.status_code == 409 and r.json()["code"] == "key_exists"
    r = await app.client.request("DELETE", "/keys/nope", json={"reason": "x"})
    assert r.status_code == 404
    kid = (await app.client.get("/keys", params={"sub": "x"})).json()["keys"][0]["kid"]
    r = await app.client.request("DELETE", f"/keys/{kid}")
    assert r.status_code == 400  # a reason is required
    r = await app.client.delete(f"/keys/{kid}", params={"reason": "rotated"})
    assert r.status_code == 200 and r.json()["status"] == "revoked"


async def test_resolved_keys_are_shared_by_equal_records_and_follow_changes(app: App) -> None:
    """A store that reads a fresh KeyRecord per request (PostgreSQL) gets one resolved-key
    entry per distinct record, not one per request, and a revoked record (unequal to the
    active one) is resolved afresh, so its status is never taken from the cache."""
    key = generate_private_key()
    r = await app.client.post(
        "/keys", json={"sub": "carol", "public_key": b64u_encode(public_key_der(key))}
    )
    assert r.status_code == 201
    service = app.state.service
    record = await app.state.store.get_key(r.json()["kid"])
    assert record is not None
    first = service._resolved_key(replace(record))
    for _ in range(50):
        assert service._resolved_key(replace(record)) is first  # an equal, new object
    assert len(service._resolved) == 1
    revoked = replace(record, status="revoked", revoked_at=app.clock.now, revoke_reason="x")
    again = service._resolved_key(revoked)
    assert again is not None and again.status == "revoked" and first is not None
    assert first.status == "active"
    assert len(service._resolved) == 2
