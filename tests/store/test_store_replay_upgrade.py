"""Migration 0006 (replay claims keyed by (exp, digest)) on a database populated before it.

The claims made before 0006 stored the digest only; the migration keeps them (as
``replay_v1``) and every claim path must still refuse them: ``is_claimed``, the batch
claim (``append_many`` and a group-commit batch of single appends), the row-by-row claims
of a batch with an approval transition, and the chain, Merkle proofs and audit rows must
come through intact. Both backends.
"""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from proof_messenger.audit.chain import verify_chain_async
from proof_messenger.audit.merkle import inclusion_proof_from, verify_inclusion
from proof_messenger.store import _merkle
from proof_messenger.store._common import load_migrations
from proof_messenger.store.base import ApprovalTransition

from .conftest import EXP, T0, Target, leaf_hashes, make_approval, make_draft, rk


def _old_replay_ddl(kind: str) -> str:
    """``CREATE TABLE replay`` exactly as 0001_initial created it (digest-only key)."""
    initial = load_migrations(kind)[0]
    found = re.search(r"CREATE TABLE replay \(.*?\)[^;]*;", initial.sql, re.DOTALL)
    assert found is not None and "digest" in found.group(0)
    return found.group(0)


async def _downgrade_replay(target: Target) -> None:
    """Put the replay table back in its pre-0006 shape, keeping its claims (by digest)."""
    rows = await target.fetch("SELECT digest, accepted_at, event_id FROM replay")
    await target.execute("DROP TABLE replay")
    await target.execute("DROP TABLE replay_v1")
    await target.execute(_old_replay_ddl(target.kind))
    for digest, accepted_at, event_id in rows:
        await target.execute(
            "INSERT INTO replay (digest, accepted_at, event_id) VALUES ($1, $2, $3)",
            bytes(digest),
            accepted_at,
            event_id,
        )
    await target.execute("DELETE FROM schema_migrations WHERE name = '0006_replay_exp'")


async def test_claims_made_before_0006_are_still_refused(target: Target) -> None:
    old = await target.store()
    digests = [os.urandom(32) for _ in range(6)]
    for i, digest in enumerate(digests[:3]):
        assert (await old.append(make_draft(i), claim=rk(digest))).record is not None
    results = await old.append_many(
        [(make_draft(10 + i), rk(d), ()) for i, d in enumerate(digests[3:])]
    )
    assert all(r.record is not None for r in results)
    await old.append(make_draft(20))  # a row without a claim (a rejection)
    before = [r async for r in old.iter_audit()]
    head_before = await old.chain_head()
    tree_before = await old.merkle_tree()
    await old.close()
    await _downgrade_replay(target)
    assert len(await target.fetch("SELECT digest FROM replay")) == 6

    store = target.make()
    await store.open()
    target.opened.append(store)
    assert await store.migrate() == ["0006_replay_exp"]
    assert await store.is_ready()

    # Data intact: rows, chain, Merkle tree and an inclusion proof.
    assert [r async for r in store.iter_audit()] == before
    assert await store.chain_head() == head_before
    assert await store.merkle_tree() == tree_before
    report = await verify_chain_async(store.iter_audit(), await store.chain_head())
    assert report.ok and report.count == 7, report.problem
    leaves = await leaf_hashes(store)
    found = await store.perfect_roots(_merkle.plan_inclusion(4, 7))
    proof = inclusion_proof_from(4, 7, _merkle.lookup(found))
    verify_inclusion(leaves[4], 4, 7, proof, tree_before.root())
    kept = await target.fetch("SELECT digest FROM replay_v1")
    assert sorted(bytes(r[0]) for r in kept) == sorted(digests)
    assert await target.fetch("SELECT digest FROM replay") == []

    # Every claim path refuses a digest claimed before the upgrade, whatever the exp
    # (the old rows have none: the relay derives it from the intent the digest covers).
    for digest in digests:
        assert await store.is_claimed(rk(digest))
        assert await store.is_claimed(rk(digest, exp=EXP + 1))
    assert not await store.is_claimed(rk(os.urandom(32)))
    count = await store.audit_count()
    single = await store.append(make_draft(30), claim=rk(digests[0]))
    assert single.replayed and single.record is None
    fresh = os.urandom(32)
    batch = await store.append_many(
        [
            (make_draft(31), rk(digests[1]), ()),
            (make_draft(32), rk(fresh), ()),
            (make_draft(33), rk(digests[4]), ()),
        ]
    )
    assert [r.replayed for r in batch] == [True, False, True]
    # Concurrent single appends share group-commit batches (the batch claim path).
    concurrent = await asyncio.gather(
        *(store.append(make_draft(40 + i), claim=rk(d)) for i, d in enumerate(digests))
    )
    assert all(r.replayed for r in concurrent)
    # A batch with an approval transition claims row by row.
    request = make_approval()
    await store.insert_approval(request)
    transition = ApprovalTransition(request.id, "approved", T0 + 10, proof_id="p1")
    by_row = await asyncio.gather(
        store.append(make_draft(50), claim=rk(digests[2]), approval=transition),
        store.append(make_draft(51), claim=rk(digests[5])),
    )
    assert all(r.replayed for r in by_row)
    assert (await store.get_approval(request.id)).status == "pending"  # type: ignore[union-attr]
    assert await store.audit_count() == count + 1  # only the fresh claim was written

    # New claims: keyed by (exp, digest), refused the second time.
    assert await store.is_claimed(rk(fresh))
    assert (await store.append(make_draft(60), claim=rk(fresh))).replayed
    approved = await store.append(make_draft(61), claim=rk(os.urandom(32)), approval=transition)
    assert approved.record is not None and not approved.transition_failed
    report = await verify_chain_async(store.iter_audit(), await store.chain_head())
    assert report.ok and report.count == count + 2, report.problem
    assert len(await target.fetch("SELECT digest FROM replay_v1")) == 6  # never written


async def test_a_relay_without_0006_fails_closed_on_the_migrated_table(target: Target) -> None:
    """The claim of a relay version from before 0006 errors instead of claiming (no double
    acceptance in a mixed fleet, docs/deployment.md#upgrades-and-migrations)."""
    await target.store()
    old_claim = target.sql(
        "INSERT INTO replay (digest, accepted_at, event_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (digest) DO NOTHING"
    )
    with pytest.raises(Exception, match=r"(?i)conflict"):
        await target.execute(old_claim, os.urandom(32), 1, "evt")
    assert await target.fetch("SELECT digest FROM replay") == []
