"""Migration 0007 (SQLite's Merkle nodes keyed by their last leaf) on an existing database.

A database whose ``merkle_nodes`` is in its 0002 shape (keyed by level, idx) migrates up
with every node kept, and inclusion and consistency proofs from the stored nodes still
verify against a from-scratch computation, before and after more appends. On PostgreSQL
0007 is empty: the same checks show it changes nothing there.
"""

from __future__ import annotations

import re

from proof_messenger.audit.merkle import (
    consistency_proof,
    consistency_proof_from,
    inclusion_proof,
    inclusion_proof_from,
    root_from_leaf_hashes,
)
from proof_messenger.store import Store, _merkle
from proof_messenger.store._common import load_migrations

from .conftest import Target, leaf_hashes, make_draft


async def _check_proofs(store: Store) -> None:
    """Every inclusion proof and a spread of consistency proofs equal the reference ones."""
    leaves = await leaf_hashes(store)
    size = len(leaves)
    assert (await store.merkle_tree()).root() == root_from_leaf_hashes(leaves)
    for index in range(size):
        found = await store.perfect_roots(_merkle.plan_inclusion(index, size))
        proof = inclusion_proof_from(index, size, _merkle.lookup(found))
        assert proof == inclusion_proof(index, size, leaves)
    for old in (1, 2, 7, 8, size // 2, size - 1):
        found = await store.perfect_roots(_merkle.plan_consistency(old, size))
        proof = consistency_proof_from(old, size, _merkle.lookup(found))
        assert proof == consistency_proof(old, size, leaves)


async def _downgrade_sqlite_nodes(target: Target) -> list[tuple[int, int, bytes]]:
    """Put SQLite's merkle_nodes back in its 0002 shape; return its rows (level, idx, hash)."""
    rows = [
        (int(level), ((int(last) + 1) >> int(level)) - 1, bytes(h))
        for last, level, h in await target.fetch("SELECT last_leaf, level, hash FROM merkle_nodes")
    ]
    ddl = re.search(
        r"CREATE TABLE merkle_nodes \(.*?\)[^;]*;", load_migrations("sqlite")[1].sql, re.DOTALL
    )
    assert ddl is not None and "PRIMARY KEY (level, idx)" in ddl.group(0)
    await target.execute("DROP TABLE merkle_nodes")
    await target.execute(ddl.group(0))
    for row in rows:
        await target.execute(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)", *row
        )
    return sorted(rows)


async def test_nodes_survive_0007_and_proofs_verify(target: Target) -> None:
    s = await target.store()
    for i in range(5):
        await s.append(make_draft(i))
    await s.append_many([(make_draft(10 + i), None, ()) for i in range(20)])
    await s.append_many([(make_draft(40 + i), None, ()) for i in range(12)])
    tree = await s.merkle_tree()
    await s.close()
    old_rows = await _downgrade_sqlite_nodes(target) if target.kind == "sqlite" else None
    await target.execute("DELETE FROM schema_migrations WHERE name = '0007_merkle_by_last'")

    store = target.make()
    await store.open()
    target.opened.append(store)
    assert await store.migrate() == ["0007_merkle_by_last"]
    assert await store.merkle_tree() == tree
    if old_rows is not None:
        kept = await target.fetch("SELECT last_leaf, level, hash FROM merkle_nodes")
        assert len(old_rows) == len(kept) == 37 - (37).bit_count()  # 18 + 9 + 4 + 2 + 1
        assert sorted((lv, ((last + 1) >> lv) - 1, bytes(h)) for last, lv, h in kept) == old_rows
    await _check_proofs(store)
    for i in range(3):
        await store.append_many([(make_draft(100 + 30 * i + j), None, ()) for j in range(30)])
    await _check_proofs(store)
