"""The Merkle tree kept by both store backends agrees with a from-scratch computation."""

from __future__ import annotations

import asyncio

from proof_messenger.audit.merkle import (
    consistency_proof,
    consistency_proof_from,
    inclusion_proof,
    inclusion_proof_from,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from proof_messenger.store import _merkle
from tests.store.conftest import Target, leaf_hashes, make_draft


async def test_concurrent_batches_keep_tree_equal_to_reference(target: Target) -> None:
    a = await target.store()
    b = await target.store()  # a second relay instance on the same database
    await asyncio.gather(*(s.append(make_draft(i)) for i, s in enumerate([a, b] * 37)))
    leaves = await leaf_hashes(a)
    assert len(leaves) == 74
    for s in (a, b):
        tree = await s.merkle_tree()
        assert tree.size == 74
        assert tree.root() == root_from_leaf_hashes(leaves)
    entries = await a.log_entries(0, 74)
    assert [e.leaf_hash for e in entries] == leaves
    for size in (1, 2, 5, 31, 32, 33, 74):
        root = root_from_leaf_hashes(leaves[:size])
        assert _merkle.root_from_nodes(size, await a.perfect_roots(_merkle.plan_root(size))) == root
        for index in {0, size // 2, size - 1}:
            found = await b.perfect_roots(_merkle.plan_inclusion(index, size))
            proof = inclusion_proof_from(index, size, _merkle.lookup(found))
            assert proof == inclusion_proof(index, size, leaves)
            verify_inclusion(leaves[index], index, size, proof, root)
    for s1, s2 in [(1, 74), (5, 33), (32, 64), (33, 74)]:
        found = await a.perfect_roots(_merkle.plan_consistency(s1, s2))
        proof = consistency_proof_from(s1, s2, _merkle.lookup(found))
        assert proof == consistency_proof(s1, s2, leaves)
        verify_consistency(
            s1, s2, proof, root_from_leaf_hashes(leaves[:s1]), root_from_leaf_hashes(leaves[:s2])
        )


async def test_frontier_and_checkpoints_persist_across_reopen(target: Target) -> None:
    from proof_messenger.store.base import CheckpointRecord, LogKeyRecord

    s = await target.store()
    for i in range(13):
        await s.append(make_draft(i))
    before = await s.merkle_tree()
    saved = await s.save_checkpoint(CheckpointRecord(13, before.root(), "note\n", 1.0, "k1"))
    dup = await s.save_checkpoint(CheckpointRecord(13, bytes(32), "other\n", 2.0, "k2"))
    assert dup == saved  # first checkpoint of a size wins
    assert await s.add_log_key(LogKeyRecord("k1", bytes(32), 1.0))
    assert not await s.add_log_key(LogKeyRecord("k1", bytes(32), 2.0))
    await s.close()
    t = await target.store()
    assert await t.merkle_tree() == before
    assert await t.latest_checkpoint() == saved
    assert await t.get_checkpoint(12) is None
    assert [k.key_id for k in await t.log_key_history()] == ["k1"]
    await t.append(make_draft(99))
    assert (await t.merkle_tree()).root() == root_from_leaf_hashes(await leaf_hashes(t))


async def test_migration_backfills_existing_rows(target: Target) -> None:
    s = await target.store()
    for i in range(9):
        await s.append(make_draft(i))
    expected = await s.merkle_tree()
    # Simulate a database migrated before 0002: drop the Merkle state, re-run the backfill.
    await target.execute("DELETE FROM merkle_nodes")
    await target.execute("UPDATE audit SET leaf_hash = NULL")
    await target.execute(
        "DELETE FROM schema_migrations WHERE name IN ('0002_merkle', '0007_merkle_by_last')"
    )
    for stmt in (
        "DROP TABLE merkle_nodes",
        "DROP TABLE checkpoints",
        "DROP TABLE log_keys",
        "ALTER TABLE audit DROP COLUMN leaf_hash",
        "ALTER TABLE chain_head DROP COLUMN merkle_frontier",
    ):
        await target.execute(stmt)
    await s.close()
    t = await target.store()
    assert await t.merkle_tree() == expected
    leaves = await leaf_hashes(t)
    assert [e.leaf_hash for e in await t.log_entries(0, 9)] == leaves
    found = await t.perfect_roots(_merkle.plan_inclusion(3, 9))
    proof = inclusion_proof_from(3, 9, _merkle.lookup(found))
    verify_inclusion(leaves[3], 3, 9, proof, expected.root())
