"""``Store.prune_replay``: stale replay claims are deleted in chunks, nothing else is.

Both backends (a real SQLite file and a fresh PostgreSQL database). The cutoffs are given
explicitly here; which cutoffs are safe is the relay's business (tests/relay/
test_replay_prune.py). What is pinned here: the exact boundary (``exp < before_exp``,
``accepted_at < legacy_before``), the chunk limit, claims from before migration 0006 in
``replay_v1``, and that a pruned key can be claimed again while a kept one cannot.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proof_messenger.audit.chain import time_to_micros, verify_chain_async
from proof_messenger.store import Store
from proof_messenger.store.sqlite import SQLiteStore

from .conftest import EXP, T0, Target, make_draft, rk

#: The boundary used below: claims with exp < CUT go, exp >= CUT stay.
CUT = EXP


async def _claim(store: Store, i: int, exp: int) -> bytes:
    digest = os.urandom(32)
    result = await store.append(make_draft(i), claim=rk(digest, exp))
    assert result.record is not None
    return digest


async def _exps(target: Target) -> list[int]:
    return sorted(int(r[0]) for r in await target.fetch("SELECT exp FROM replay"))


async def _legacy(target: Target, digest: bytes, accepted_at: float) -> None:
    """A claim as a relay before migration 0006 made it (digest only)."""
    await target.execute(
        "INSERT INTO replay_v1 (digest, accepted_at, event_id) VALUES ($1, $2, $3)",
        digest,
        time_to_micros(accepted_at),
        f"evt-old-{digest.hex()[:8]}",
    )


async def test_deletes_exactly_the_claims_below_the_cutoff(target: Target) -> None:
    store = await target.store()
    digests = {exp: await _claim(store, i, exp) for i, exp in enumerate(range(CUT - 3, CUT + 3))}

    assert await store.prune_replay(CUT, 0.0, 100) == 3
    assert await _exps(target) == [CUT, CUT + 1, CUT + 2]
    for exp, digest in digests.items():
        assert await store.is_claimed(rk(digest, exp)) is (exp >= CUT)
    # A kept claim still refuses its key; a pruned one no longer does (the relay refuses
    # that proof as expired before it gets here).
    kept = await store.append(make_draft(50), claim=rk(digests[CUT], CUT))
    assert kept.replayed and kept.record is None
    again = await store.append(make_draft(51), claim=rk(digests[CUT - 1], CUT - 1))
    assert again.record is not None
    # Pruning touched no audit row: the chain is intact and complete.
    report = await verify_chain_async(store.iter_audit(), await store.chain_head())
    assert report.ok and report.count == 7, report.problem
    assert await store.prune_replay(CUT, 0.0, 100) == 1  # the re-claimed CUT - 1
    assert await store.prune_replay(CUT, 0.0, 100) == 0


async def test_chunks_delete_a_backlog_across_calls(target: Target) -> None:
    store = await target.store()
    entries = [(make_draft(i), rk(os.urandom(32), CUT - 1 - i % 7), ()) for i in range(25)]
    entries += [(make_draft(100 + i), rk(os.urandom(32), CUT + i), ()) for i in range(4)]
    assert all(r.record is not None for r in await store.append_many(entries))

    counts = []
    while True:
        n = await store.prune_replay(CUT, 0.0, 10)
        counts.append(n)
        if n < 10:
            break
    assert counts == [10, 10, 5]
    assert await _exps(target) == [CUT, CUT + 1, CUT + 2, CUT + 3]
    with pytest.raises(ValueError):
        await store.prune_replay(CUT, 0.0, 0)


async def test_claims_from_before_0006_pruned_by_accepted_at(target: Target) -> None:
    store = await target.store()
    old = {t: os.urandom(32) for t in (T0 - 30, T0 - 20, T0 - 10, T0, T0 + 10)}
    for accepted_at, digest in old.items():
        await _legacy(target, digest, accepted_at)
    fresh = await _claim(store, 1, CUT + 5)
    for digest in old.values():
        assert await store.is_claimed(rk(digest, CUT + 100))  # any exp: keyed by digest

    # Claims accepted before T0 go, the one accepted exactly at T0 stays; replay is empty
    # of stale rows, so the whole limit goes to replay_v1: 2 now, then the third.
    assert await store.prune_replay(CUT, T0, 2) == 2
    assert await store.prune_replay(CUT, T0, 2) == 1
    assert await store.prune_replay(CUT, T0, 2) == 0
    left = sorted(int(r[0]) for r in await target.fetch("SELECT accepted_at FROM replay_v1"))
    assert left == [time_to_micros(T0), time_to_micros(T0 + 10)]
    for accepted_at, digest in old.items():
        assert await store.is_claimed(rk(digest, CUT + 100)) is (accepted_at >= T0)
        result = await store.append(make_draft(60), claim=rk(digest, CUT + 100))
        assert result.replayed is (accepted_at >= T0)
    assert await store.is_claimed(rk(fresh, CUT + 5))


async def test_one_limit_shared_by_both_tables(target: Target) -> None:
    store = await target.store()
    for i in range(5):  # before the store's first claim, as after a real migration
        await _legacy(target, os.urandom(32), T0 - 100 - i)
    for i in range(3):
        await _claim(store, i, CUT - 1)
    assert await store.prune_replay(CUT, T0, 4) == 4  # 3 claims + 1 legacy
    assert await store.prune_replay(CUT, T0, 4) == 4
    assert await store.prune_replay(CUT, T0, 4) == 0
    assert await target.fetch("SELECT digest FROM replay_v1") == []
    assert await _exps(target) == []


async def test_concurrent_pruners_delete_everything_once(target: Target) -> None:
    """Two stores (two workers) pruning at once: every stale row goes, none is counted
    twice, and appends running meanwhile all commit."""
    a, b = await target.store(), await target.store()
    entries = [(make_draft(i), rk(os.urandom(32), CUT - 1 - i % 50), ()) for i in range(300)]
    assert all(r.record is not None for r in await a.append_many(entries))

    async def drain(store: Store) -> int:
        total = 0
        while True:
            n = await store.prune_replay(CUT, 0.0, 20)
            total += n
            if n == 0:
                return total
            await asyncio.sleep(0)

    async def append_meanwhile() -> int:
        ok = 0
        for i in range(20):
            result = await b.append(make_draft(1000 + i), claim=rk(os.urandom(32), CUT + i))
            ok += result.record is not None
        return ok

    pruned_a, pruned_b, appended = await asyncio.gather(drain(a), drain(b), append_meanwhile())
    assert pruned_a + pruned_b == 300
    assert appended == 20
    assert await _exps(target) == list(range(CUT, CUT + 20))
    report = await verify_chain_async(a.iter_audit(), await a.chain_head())
    assert report.ok and report.count == 320, report.problem


@pytest.fixture
async def sqlite_target(tmp_path: Path) -> AsyncIterator[Target]:
    path = str(tmp_path / "relay.db")
    t = Target("sqlite", path, lambda: SQLiteStore(path))
    try:
        yield t
    finally:
        for s in t.opened:
            await s.close()


async def test_sqlite_legacy_lookups_stop_once_replay_v1_is_pruned_empty(
    sqlite_target: Target,
) -> None:
    target = sqlite_target
    store = await target.store()
    assert isinstance(store, SQLiteStore)
    stale, young = os.urandom(32), os.urandom(32)
    await _legacy(target, stale, T0 - 100)
    await _legacy(target, young, T0 + 100)
    assert await store.is_claimed(rk(young, CUT))
    assert store._legacy_claims is True

    assert await store.prune_replay(CUT, T0, 10) == 1
    assert store._legacy_claims is True  # young is still there and still refused
    assert (await store.append(make_draft(1), claim=rk(young, CUT))).replayed

    assert await store.prune_replay(CUT, T0 + 101, 10) == 1
    assert store._legacy_claims is False  # seen empty after the commit
    assert not await store.is_claimed(rk(young, CUT + 1))
    assert await store.prune_replay(CUT, T0 + 101, 10) == 0


async def test_sqlite_flag_set_by_a_read_when_replay_v1_is_empty(sqlite_target: Target) -> None:
    store = await sqlite_target.store()
    assert isinstance(store, SQLiteStore)
    assert store._legacy_claims is None
    assert await store.prune_replay(CUT, T0, 10) == 0
    assert store._legacy_claims is False
