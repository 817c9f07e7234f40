"""Webhook outbox fan-out, leases, retries, dead letters and replay on both backends."""

from __future__ import annotations

import asyncio

import pytest

from proof_messenger.store.base import OutboxEvent, Store, WebhookSubscription

from .conftest import T0, Target, make_draft, make_subscription

pytestmark = pytest.mark.asyncio


async def emit(store: Store, i: int, event_type: str = "proof.verified") -> str:
    draft = make_draft(i, event_type=event_type)
    await store.append(draft, outbox=[OutboxEvent(event_type, b'{"n": %d}' % i)])
    return draft.event_id


async def test_fan_out_matches_events_and_is_idempotent(store: Store) -> None:
    await store.insert_webhook_subscription(
        make_subscription("all", ("proof.verified", "key.revoked"))
    )
    await store.insert_webhook_subscription(make_subscription("keys", ("key.revoked",)))
    await store.insert_webhook_subscription(
        make_subscription("late", ("proof.verified",), created_at=T0 + 50)
    )
    await emit(store, 1)
    await emit(store, 2, "key.revoked")
    assert await store.fan_out_outbox(T0 + 10, 100) == 2
    assert await store.fan_out_outbox(T0 + 10, 100) == 0  # handed over once
    all_page = await store.list_deliveries("all", None, 10)
    keys_page = await store.list_deliveries("keys", None, 10)
    late_page = await store.list_deliveries("late", None, 10)
    assert sorted(d.event_type for d in all_page.deliveries) == ["key.revoked", "proof.verified"]
    assert [d.event_type for d in keys_page.deliveries] == ["key.revoked"]
    assert late_page.deliveries == []  # did not exist when the event happened
    ids = {d.id for d in all_page.deliveries} | {d.id for d in keys_page.deliveries}
    assert len(ids) == 3  # one id per (event, subscription)


async def test_leases_hand_each_delivery_to_one_worker(store: Store) -> None:
    await store.insert_webhook_subscription(make_subscription("s", ("proof.verified",)))
    for i in range(6):
        await emit(store, i)
    await store.fan_out_outbox(T0, 100)
    a, b = await asyncio.gather(
        store.claim_due_deliveries(T0 + 1, 4, 30, "worker-a"),
        store.claim_due_deliveries(T0 + 1, 4, 30, "worker-b"),
    )
    ids_a = {t.delivery.id for t in a}
    ids_b = {t.delivery.id for t in b}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 6
    task = (a or b)[0]
    assert task.payload.startswith(b'{"n": ')
    assert task.url.startswith("https://receiver.example/")
    # Nothing is due while leased; once the lease runs out the delivery comes back.
    assert await store.claim_due_deliveries(T0 + 2, 10, 30, "worker-c") == []
    again = await store.claim_due_deliveries(T0 + 40, 10, 30, "worker-c")
    assert {t.delivery.id for t in again} == ids_a | ids_b
    # The old lease holder can no longer record a result.
    assert not await store.mark_delivered(task.delivery.id, "worker-a", T0 + 41, 200)
    assert not await store.mark_delivered(task.delivery.id, "worker-b", T0 + 41, 200)
    assert await store.mark_delivered(task.delivery.id, "worker-c", T0 + 41, 200)


async def test_retry_dead_letter_and_replay(store: Store) -> None:
    await store.insert_webhook_subscription(make_subscription("s", ("proof.verified",)))
    await emit(store, 1)
    await store.fan_out_outbox(T0, 10)
    (task,) = await store.claim_due_deliveries(T0 + 1, 10, 30, "w")
    did = task.delivery.id
    assert await store.mark_failed(did, "w", T0 + 5, "HTTP 500", 500)
    assert await store.claim_due_deliveries(T0 + 2, 10, 30, "w") == []  # not due yet
    (task,) = await store.claim_due_deliveries(T0 + 5, 10, 30, "w")
    assert task.delivery.attempts == 1 and task.delivery.last_status == 500
    assert await store.mark_dead(did, "w", "ConnectError: refused", None)
    dead = await store.list_deliveries("s", "dead", 10)
    assert [d.id for d in dead.deliveries] == [did]
    assert dead.deliveries[0].attempts == 2
    assert dead.deliveries[0].last_error == "ConnectError: refused"
    assert await store.claim_due_deliveries(T0 + 100, 10, 30, "w") == []
    replayed = await store.replay_delivery(did, T0 + 200)
    assert replayed is not None and replayed.status == "pending"
    assert replayed.window_start == T0 + 200
    (task,) = await store.claim_due_deliveries(T0 + 200, 10, 30, "w")
    assert task.delivery.id == did  # same id: receivers deduplicate
    assert await store.mark_delivered(did, "w", T0 + 201, 204)
    got = await store.get_delivery(did)
    assert got is not None and got.status == "delivered" and got.attempts == 3
    assert await store.replay_delivery("no-such-id", T0) is None


async def test_delivery_pages_and_deleted_subscriptions(store: Store) -> None:
    await store.insert_webhook_subscription(make_subscription("s", ("proof.verified",)))
    for i in range(7):
        await emit(store, i)
    await store.fan_out_outbox(T0, 100)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_deliveries("s", "pending", 3, cursor)
        seen += [d.id for d in page.deliveries]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7
    with pytest.raises(ValueError):
        await store.list_deliveries("s", None, 3, "not-a-cursor")
    assert await store.delete_webhook_subscription("s", T0 + 1)
    assert await store.get_webhook_subscription("s") is None
    assert await store.claim_due_deliveries(T0 + 1, 10, 30, "w") == []


async def test_upsert_keeps_created_at_and_undeletes(store: Store, target: Target) -> None:
    first = make_subscription("cfg", ("proof.verified",), created_at=T0)
    await store.upsert_webhook_subscription(first)
    await store.delete_webhook_subscription("cfg", T0 + 1)
    changed = WebhookSubscription(
        id="cfg",
        url="https://new.example/",
        events=("key.revoked",),
        secret_key_id="mk-2",
        secret_ct=b"\x01" * 40,
        source="config",
        created_at=T0 + 5,
    )
    await store.upsert_webhook_subscription(changed)
    got = await store.get_webhook_subscription("cfg")
    assert got is not None
    assert (got.url, got.events, got.secret_key_id, got.source) == (
        "https://new.example/",
        ("key.revoked",),
        "mk-2",
        "config",
    )
    assert got.created_at == T0
    from proof_messenger.store.base import DuplicateKey

    with pytest.raises(DuplicateKey):
        await store.insert_webhook_subscription(first)
