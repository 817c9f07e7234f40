"""Webhooks end to end: real relay processes, a real receiver over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proof_messenger.webhooks import verify_signature

from .harness import PAYMENT, Device, Receiver, Relay, wait_until

pytestmark = pytest.mark.slow
SECRET = "whsec_test_secret_0123456789abcdef"
FAST = {
    "poll_interval_seconds": 0.05,
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.2,
    "lease_seconds": 8,
    "timeout_seconds": 4,  # generous: a slow CI machine must not turn a 200 into a retry
}


def webhook_config(url: str, events: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "webhooks": {
            **FAST,
            **overrides,
            "subscriptions": [{"id": "ledger", "url": url, "events": events, "secret": SECRET}],
        }
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for relay in started:
        relay.stop(kill=True)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def verify(relay: Relay, key: str, proof: dict[str, Any]) -> httpx.Response:
    return httpx.post(relay.url + "/verify", json=proof, headers=auth(key), timeout=30)


def deliveries(relay: Relay, key: str, sub_id: str, status: str | None = None) -> list[Any]:
    params = {"status": status} if status else {}
    r = httpx.get(
        f"{relay.url}/webhooks/{sub_id}/deliveries", params=params, headers=auth(key), timeout=30
    )
    assert r.status_code == 200, r.text
    return list(r.json()["deliveries"])


def test_failing_receiver_gets_each_event_exactly_once_signed(
    tmp_path: Path, receiver: Receiver, relays: list[Relay]
) -> None:
    relay = Relay(tmp_path, webhook_config(receiver.url, ["proof.verified", "proof.rejected"]))
    relays.append(relay)
    key = relay.api_key()
    relay.start()
    device = Device("alice")
    device.register(relay.url, key)

    first = verify(relay, key, device.proof(PAYMENT))
    assert first.status_code == 200, first.text
    wait_until(lambda: receiver.accepted(), what="first delivery accepted")
    # A second event afterwards: once it is through, the first one can no longer be in flight.
    replay = verify(relay, key, device.proof({**PAYMENT, "amount_minor": 1}))
    assert replay.status_code == 200
    rejected = httpx.post(
        relay.url + "/verify", json={"v": 1}, headers=auth(key), timeout=30
    )  # malformed_proof -> proof.rejected
    assert rejected.status_code == 400
    wait_until(lambda: len(receiver.accepted()) == 3, what="three events accepted")

    requests = receiver.snapshot()
    accepted = receiver.accepted()
    assert len({r.delivery_id for r in accepted}) == 3  # exactly once per delivery id
    for r in requests:
        verify_signature(SECRET, r.headers, r.body)
        body = r.json()
        assert body["id"] == r.delivery_id
        assert body["type"] == r.headers["x-proof-messenger-event"]
        assert r.headers["content-type"] == "application/json"
    by_id = {r.delivery_id: r for r in accepted}
    first_body = next(
        r.json() for r in accepted if r.json()["data"].get("proof_id") == first.json()["proof_id"]
    )
    assert first_body["type"] == "proof.verified"
    assert first_body["data"]["context"] == PAYMENT
    assert first_body["data"]["audit_event_id"] == first.json()["audit_event_id"]
    # Each delivery failed twice, then succeeded: three attempts under one id.
    for delivery_id in by_id:
        assert [r.status for r in requests if r.delivery_id == delivery_id] == [500, 500, 200]
    rejected_body = next(r.json() for r in accepted if r.json()["type"] == "proof.rejected")
    assert rejected_body["data"]["code"] == "malformed_proof"

    listed = deliveries(relay, key, "ledger", "delivered")
    assert {d["id"] for d in listed} == set(by_id)
    assert all(d["attempts"] == 3 and d["last_status"] == 200 for d in listed)
    assert deliveries(relay, key, "ledger", "pending") == []
    exposition = httpx.get(relay.url + "/metrics", timeout=30).text
    assert 'proof_messenger_webhook_attempts_total{result="delivered"} 3.0' in exposition
    assert 'proof_messenger_webhook_attempts_total{result="retry"} 6.0' in exposition


def test_api_subscription_secret_shown_once_and_event_filter(
    tmp_path: Path, relays: list[Relay]
) -> None:
    rx = Receiver(fail_first=0)
    try:
        relay = Relay(tmp_path, {"webhooks": FAST})
        relays.append(relay)
        key = relay.api_key()
        relay.start()
        created = httpx.post(
            relay.url + "/webhooks",
            json={"url": rx.url, "events": ["key.revoked"]},
            headers=auth(key),
            timeout=30,
        )
        assert created.status_code == 201, created.text
        sub = created.json()
        secret = sub["secret"]
        assert secret.startswith("whsec_")
        listed = httpx.get(relay.url + "/webhooks", headers=auth(key), timeout=30).json()
        assert [w["id"] for w in listed["webhooks"]] == [sub["id"]]
        assert "secret" not in listed["webhooks"][0]
        one = httpx.get(f"{relay.url}/webhooks/{sub['id']}", headers=auth(key), timeout=30)
        assert "secret" not in one.json()

        device = Device("bob")
        kid = device.register(relay.url, key)
        assert verify(relay, key, device.proof(PAYMENT)).status_code == 200  # not subscribed
        revoked = httpx.request(
            "DELETE",
            f"{relay.url}/keys/{kid}",
            json={"reason": "lost phone"},
            headers=auth(key),
            timeout=30,
        )
        assert revoked.status_code == 200
        (got,) = wait_until(lambda: rx.accepted(), what="key.revoked delivery")
        verify_signature(secret, got.headers, got.body)
        with pytest.raises(ValueError):
            verify_signature(SECRET, got.headers, got.body)
        body = got.json()
        assert body["type"] == "key.revoked"
        assert body["data"]["kid"] == kid and body["data"]["reason"] == "lost phone"
        assert all(r.json()["type"] == "key.revoked" for r in rx.snapshot())

        new_secret = "whsec_rotated_secret_0123456789"
        rotated = httpx.post(
            f"{relay.url}/webhooks/{sub['id']}/secret",
            json={"secret": new_secret},
            headers=auth(key),
            timeout=30,
        )
        assert rotated.status_code == 200 and rotated.json()["secret"] == new_secret
        other = Device("bob2")
        other_kid = other.register(relay.url, key)
        httpx.request(
            "DELETE",
            f"{relay.url}/keys/{other_kid}",
            json={"reason": "rotation test"},
            headers=auth(key),
            timeout=30,
        ).raise_for_status()
        wait_until(lambda: len(rx.accepted()) == 2, what="second key.revoked delivery")
        after = rx.accepted()[1]
        assert after.json()["data"]["kid"] == other_kid
        verify_signature(new_secret, after.headers, after.body)
        verify_signature([new_secret, secret], after.headers, after.body)
        with pytest.raises(ValueError):
            verify_signature(secret, after.headers, after.body)
        audit = httpx.get(
            relay.url + "/audit", params={"type": "webhook.created"}, headers=auth(key), timeout=30
        ).json()["events"]
        assert [e["detail"] for e in audit] == [
            f"webhook={sub['id']} to=http://127.0.0.1:{rx.port} events=key.revoked"
        ]
        spec = httpx.get(relay.url + "/openapi.json", timeout=30).json()
        assert {"/webhooks", "/webhooks/{id}/deliveries/{delivery_id}/replay"} <= set(spec["paths"])

        bad = httpx.post(
            relay.url + "/webhooks",
            json={"url": "ftp://x.example/", "events": ["key.revoked"]},
            headers=auth(key),
            timeout=30,
        )
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
        unknown_event = httpx.post(
            relay.url + "/webhooks",
            json={"url": rx.url, "events": ["proof.maybe"]},
            headers=auth(key),
            timeout=30,
        )
        assert unknown_event.status_code == 400
        no_scope = relay.api_key("verify", name="verifier")
        assert (
            httpx.get(relay.url + "/webhooks", headers=auth(no_scope), timeout=30).status_code
            == 403
        )
        deleted = httpx.delete(f"{relay.url}/webhooks/{sub['id']}", headers=auth(key), timeout=30)
        assert deleted.status_code == 204
        gone = httpx.get(f"{relay.url}/webhooks/{sub['id']}", headers=auth(key), timeout=30)
        assert gone.status_code == 404
    finally:
        rx.close()


def test_dead_letter_after_max_age_then_replay_delivers(
    tmp_path: Path, relays: list[Relay]
) -> None:
    rx = Receiver()
    rx.always_fail = True
    try:
        relay = Relay(tmp_path, webhook_config(rx.url, ["proof.verified"], max_age_seconds=0.5))
        relays.append(relay)
        key = relay.api_key()
        relay.start()
        device = Device("carol")
        device.register(relay.url, key)
        assert verify(relay, key, device.proof(PAYMENT)).status_code == 200

        (dead,) = wait_until(lambda: deliveries(relay, key, "ledger", "dead"), what="dead letter")
        assert dead["attempts"] >= 2  # retried with backoff before giving up
        assert dead["last_status"] == 500 and dead["last_error"] == "HTTP 500"
        attempts_before = len(rx.snapshot())
        assert attempts_before == dead["attempts"]
        assert all(r.delivery_id == dead["id"] for r in rx.snapshot())

        rx.always_fail = False
        r = httpx.post(
            f"{relay.url}/webhooks/ledger/deliveries/{dead['id']}/replay",
            headers=auth(key),
            timeout=30,
        )
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "pending"
        (ok,) = wait_until(lambda: rx.accepted(), what="replayed delivery")
        assert ok.delivery_id == dead["id"]  # same id: the receiver can deduplicate
        verify_signature(SECRET, ok.headers, ok.body)
        wait_until(lambda: deliveries(relay, key, "ledger", "delivered"), what="delivered state")
        missing = httpx.post(
            f"{relay.url}/webhooks/ledger/deliveries/00000000-0000-0000-0000-000000000000/replay",
            headers=auth(key),
            timeout=30,
        )
        assert missing.status_code == 404
    finally:
        rx.close()


def test_killed_relay_delivers_undelivered_events_after_restart(
    tmp_path: Path, relays: list[Relay]
) -> None:
    from .harness import free_port

    port = free_port()  # the receiver is down: nothing listens here yet
    url = f"http://127.0.0.1:{port}/hook"
    relay = Relay(tmp_path, webhook_config(url, ["proof.verified", "key.revoked"]))
    relays.append(relay)
    key = relay.api_key()
    relay.start()
    device = Device("dave")
    kid = device.register(relay.url, key)
    proof_ids = []
    for amount in (1, 2, 3):
        r = verify(relay, key, device.proof({**PAYMENT, "amount_minor": amount}))
        assert r.status_code == 200
        proof_ids.append(r.json()["proof_id"])
    revoke = httpx.request(
        "DELETE", f"{relay.url}/keys/{kid}", json={"reason": "test"}, headers=auth(key), timeout=30
    )
    assert revoke.status_code == 200
    wait_until(
        lambda: any(d["attempts"] > 0 for d in deliveries(relay, key, "ledger", "pending")),
        what="failed attempts against the down receiver",
    )
    relay.stop(kill=True)  # SIGKILL: no graceful shutdown, leases left behind

    rx = Receiver(port=port)
    try:
        relay.start()
        wait_until(lambda: len({r.delivery_id for r in rx.accepted()}) == 4, what="4 events")
        accepted = rx.accepted()
        got_proofs = sorted(
            r.json()["data"]["proof_id"] for r in accepted if r.json()["type"] == "proof.verified"
        )
        assert got_proofs == sorted(proof_ids)
        assert [r.json()["data"]["kid"] for r in accepted if r.json()["type"] == "key.revoked"] == [
            kid
        ]
        for received in accepted:
            verify_signature(SECRET, received.headers, received.body)
        wait_until(
            lambda: len(deliveries(relay, key, "ledger", "delivered")) == 4, what="4 delivered"
        )
    finally:
        rx.close()


def test_approval_events_flow_through_the_generic_outbox_hook(
    tmp_path: Path, relays: list[Relay]
) -> None:
    from proof_messenger.protocol import Intent, b64u_decode, sign_intent

    rx = Receiver()
    events = ["approval.created", "approval.approved", "approval.declined", "proof.verified"]
    try:
        relay = Relay(tmp_path, webhook_config(rx.url, events))
        relays.append(relay)
        key = relay.api_key()
        relay.start()
        device = Device("erin")
        device.register(relay.url, key)

        def request_approval() -> str:
            created = httpx.post(
                relay.url + "/approvals",
                json={"sub": "erin", "context": PAYMENT, "ttl_seconds": 120},
                headers=auth(key),
                timeout=30,
            )
            if created.status_code == 404:
                pytest.skip("this relay build has no approvals API yet")
            assert created.status_code == 201, created.text
            return str(created.json()["id"])

        declined_id = request_approval()
        declined = httpx.post(
            f"{relay.url}/approvals/{declined_id}/decline",
            json={"reason": "not me"},
            headers=auth(key),
            timeout=30,
        )
        assert declined.status_code == 200, declined.text

        approved_id = request_approval()
        approval = httpx.get(f"{relay.url}/approvals/{approved_id}", headers=auth(key), timeout=30)
        intent = Intent.from_bytes(b64u_decode(approval.json()["intent"]))
        proof = sign_intent(device.key, intent).to_json_dict()
        answer = verify(relay, key, proof)
        assert answer.status_code == 200, answer.text

        def by_type() -> dict[str, list[Any]]:
            seen: dict[str, list[Any]] = {}
            for r in rx.accepted():
                seen.setdefault(r.json()["type"], []).append(r)
            return seen

        wait_until(lambda: set(by_type()) == set(events), what="every approval event")
        got = by_type()
        for r in rx.accepted():
            verify_signature(SECRET, r.headers, r.body)
        assert sorted(r.json()["data"]["approval_id"] for r in got["approval.created"]) == sorted(
            [declined_id, approved_id]
        )
        assert [r.json()["data"]["approval_id"] for r in got["approval.declined"]] == [declined_id]
        (approved,) = got["approval.approved"]
        (verified,) = got["proof.verified"]
        assert approved.json()["data"]["approval_id"] == approved_id
        assert approved.json()["data"]["proof_id"] == answer.json()["proof_id"]
        # One audit row, two event types: two distinct delivery ids.
        assert (
            approved.json()["data"]["audit_event_id"] == verified.json()["data"]["audit_event_id"]
        )
        assert approved.delivery_id != verified.delivery_id
    finally:
        rx.close()
