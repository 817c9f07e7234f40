"""The store's batch calls (/verify/batch) on both backends: append_many, get_keys and
get_approvals_by_nonces behave like their one-row counterparts, in one round trip."""

from __future__ import annotations

import dataclasses
import os

from proof_messenger.audit.chain import verify_chain_async
from proof_messenger.store import KeyRecord, OutboxEvent

from .conftest import T0, Target, make_approval, make_draft, make_subscription, rk


async def test_append_many_one_transaction_in_order_with_claims(target: Target) -> None:
    store = await target.store()
    await store.insert_webhook_subscription(
        make_subscription("s1", ("proof.verified",), created_at=T0 - 10)
    )
    taken = os.urandom(32)
    assert not (await store.append(make_draft(0), claim=rk(taken))).replayed
    fresh = os.urandom(32)
    drafts = [make_draft(i) for i in range(1, 6)]
    event = [OutboxEvent("proof.verified", b"{}")]
    results = await store.append_many(
        [
            (drafts[0], rk(fresh), event),
            (drafts[1], None, event),
            (drafts[2], rk(fresh), event),  # claimed by an earlier entry of the same call
            (drafts[3], rk(taken), event),  # claimed by an earlier append
            (drafts[4], None, ()),
        ]
    )
    assert [r.replayed for r in results] == [False, False, True, True, False]
    written = [r.record for r in results if r.record is not None]
    assert [r.draft.event_id for r in written] == [drafts[i].event_id for i in (0, 1, 4)]
    assert [r.seq for r in written] == [2, 3, 4]  # contiguous, in the call's order
    outbox = await target.fetch("SELECT event_id FROM outbox ORDER BY id")
    assert [r[0] for r in outbox] == [drafts[0].event_id, drafts[1].event_id]
    report = await verify_chain_async(store.iter_audit(), await store.chain_head())
    assert report.ok and report.count == 4
    assert await store.append_many([]) == []


async def test_get_keys_reads_many_and_sees_revocation(target: Target) -> None:
    store = await target.store()
    records = [
        KeyRecord(
            kid=f"kid-{i}",
            sub="alice",
            alg="ES256",
            public_key=b"\x30\x59" + bytes([i]),
            created_at=T0,
            transports=("usb",) if i else (),
        )
        for i in range(3)
    ]
    for record in records:
        await store.insert_key(record)
    got = await store.get_keys(["kid-0", "kid-2", "kid-0", "missing"])
    assert got == {"kid-0": records[0], "kid-2": records[2]}
    assert await store.get_keys([]) == {}
    await store.revoke_key("kid-2", "lost", T0 + 1)
    assert (await store.get_keys(["kid-2"]))["kid-2"].status == "revoked"


async def test_get_approvals_by_nonces(target: Target) -> None:
    store = await target.store()
    made = []
    for _ in range(2):
        record = make_approval(require_uv=False)
        await store.insert_approval(record)
        made.append(record)
    found = await store.get_approvals_by_nonces([made[1].nonce, os.urandom(32), made[1].nonce])
    assert list(found) == [made[1].nonce]
    assert found[made[1].nonce] == await store.get_approval_by_nonce(made[1].nonce)
    assert dataclasses.asdict(found[made[1].nonce])["id"] == made[1].id
    assert await store.get_approvals_by_nonces([]) == {}


async def test_append_many_beyond_one_insert_statement(target: Target) -> None:
    """300 rows (more than one multi-row INSERT on SQLite), a digest repeated across the
    statement boundary: one replay, every other row in order, chain and Merkle log intact."""
    from proof_messenger.audit.merkle import root_from_leaf_hashes
    from proof_messenger.store._merkle import record_leaf_hash

    store = await target.store()
    digests = [os.urandom(32) for _ in range(300)]
    digests[299] = digests[10]
    drafts = [make_draft(i) for i in range(300)]
    results = await store.append_many(
        [(d, rk(g), ()) for d, g in zip(drafts, digests, strict=True)]
    )
    assert [i for i, r in enumerate(results) if r.replayed] == [299]
    written = [r.record for r in results if r.record is not None]
    assert [r.seq for r in written] == list(range(1, 300))
    assert [r.draft.event_id for r in written] == [d.event_id for d in drafts[:299]]
    report = await verify_chain_async(store.iter_audit(), await store.chain_head())
    assert report.ok and report.count == 299
    records = [record async for record in store.iter_audit()]
    tree = await store.merkle_tree()
    assert tree.size == 299
    assert tree.root() == root_from_leaf_hashes([record_leaf_hash(r) for r in records])
    assert (await store.append(make_draft(300), claim=rk(digests[150]))).replayed
