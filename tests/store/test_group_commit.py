"""GroupCommitter.submit_many: one queued group per call, committed whole, results in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from proof_messenger.store.base import (
    AppendEntry,
    AppendResult,
    AuditDraft,
    AuditRecord,
    StoreUnavailable,
)
from proof_messenger.store.groupcommit import GroupCommitter, PendingAppend


def draft(n: int) -> AuditDraft:
    return AuditDraft(event_id=f"e{n}", time=1.0, event_type="t", status="info")


class FakeDb:
    """Commits in memory; a claimed digest is replayed, as in the real backends."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.claimed: set[bytes] = set()
        self.gate = asyncio.Event()
        self.gate.set()

    async def commit(self, batch: list[PendingAppend]) -> list[AppendResult]:
        await self.gate.wait()
        self.commits.append([item.draft.event_id for item in batch])
        results = []
        for seq, item in enumerate(batch, 1):
            if item.claim_digest is not None and item.claim_digest in self.claimed:
                results.append(AppendResult(record=None, replayed=True))
                continue
            if item.claim_digest is not None:
                self.claimed.add(item.claim_digest)
            results.append(AppendResult(AuditRecord(seq, item.draft, b"", b"")))
        return results


def entries(numbers: Sequence[int], claim: bytes | None = None) -> list[AppendEntry]:
    return [(draft(n), claim, ()) for n in numbers]


async def test_results_in_order_and_a_claim_taken_earlier_in_the_group_is_replayed() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.commit, max_batch=256)
    gc.start()
    try:
        rows: list[AppendEntry] = [
            (draft(1), b"a", ()),
            (draft(2), None, ()),
            (draft(3), b"a", ()),
            (draft(4), b"b", ()),
        ]
        results = await gc.submit_many(rows)
        assert [r.record.draft.event_id if r.record else None for r in results] == [
            "e1",
            "e2",
            None,
            "e4",
        ]
        assert [r.replayed for r in results] == [False, False, True, False]
        assert db.commits == [["e1", "e2", "e3", "e4"]]
        assert await gc.submit_many([]) == []
    finally:
        await gc.stop()


async def test_a_group_is_never_split_and_groups_that_do_not_fit_wait() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.commit, max_batch=3)
    gc.start()
    try:
        db.gate.clear()
        first = asyncio.ensure_future(gc.submit(draft(0), None, ()))
        await asyncio.sleep(0)  # the writer takes e0 and waits in the commit
        big = asyncio.ensure_future(gc.submit_many(entries(range(1, 6))))  # 5 > max_batch
        small = asyncio.ensure_future(gc.submit_many(entries(range(6, 8))))
        single = asyncio.ensure_future(gc.submit(draft(8), None, ()))
        await asyncio.sleep(0)
        db.gate.set()
        await asyncio.gather(first, big, small, single)
        assert db.commits == [["e0"], ["e1", "e2", "e3", "e4", "e5"], ["e6", "e7", "e8"]]
    finally:
        await gc.stop()


async def test_a_cancelled_caller_gets_nothing_written() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.commit)
    gc.start()
    try:
        db.gate.clear()
        blocker = asyncio.ensure_future(gc.submit(draft(0), None, ()))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(gc.submit_many(entries(range(1, 4))))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        db.gate.set()
        await blocker
        await gc.submit_many(entries([9]))
        assert db.commits == [["e0"], ["e9"]]
    finally:
        await gc.stop()


async def test_stop_fails_queued_groups_and_refuses_new_ones() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.commit)
    gc.start()
    db.gate.clear()
    blocker = asyncio.ensure_future(gc.submit(draft(0), None, ()))
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(gc.submit_many(entries(range(1, 3))))
    await asyncio.sleep(0)
    await gc.stop(drain_timeout=0.01)
    for task in (blocker, queued):
        with pytest.raises(StoreUnavailable):
            await task
    with pytest.raises(StoreUnavailable):
        await gc.submit_many(entries([5]))
