"""GroupCommitter.submit_many: one queued group per call, committed whole, results in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import pytest

from proof_messenger.store.base import (
    AppendEntry,
    AppendResult,
    AuditDraft,
    AuditRecord,
    ReplayKey,
    StoreUnavailable,
)
from proof_messenger.store.groupcommit import GroupCommitter, PendingAppend

from .conftest import rk


def draft(n: int) -> AuditDraft:
    return AuditDraft(event_id=f"e{n}", time=1.0, event_type="t", status="info")


class FakeDb:
    """Commits in memory; a claimed digest is replayed, as in the real backends."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.claimed: set[ReplayKey] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        #: Raised, one per commit, before anything is taken (e.g. the write lock failed).
        self.failures: list[Exception] = []

    async def commit(self, take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        if self.failures:
            raise self.failures.pop()
        await self.gate.wait()
        batch = take()
        if not batch:
            return []
        self.commits.append([item.draft.event_id for item in batch])
        results = []
        for seq, item in enumerate(batch, 1):
            if item.claim is not None and item.claim in self.claimed:
                results.append(AppendResult(record=None, replayed=True))
                continue
            if item.claim is not None:
                self.claimed.add(item.claim)
            results.append(AppendResult(AuditRecord(seq, item.draft, b"", b"")))
        return results


def entries(numbers: Sequence[int], claim: ReplayKey | None = None) -> list[AppendEntry]:
    return [(draft(n), claim, ()) for n in numbers]


async def test_results_in_order_and_a_claim_taken_earlier_in_the_group_is_replayed() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.commit, max_batch=256)
    gc.start()
    try:
        rows: list[AppendEntry] = [
            (draft(1), rk(b"a"), ()),
            (draft(2), None, ()),
            (draft(3), rk(b"a"), ()),
            (draft(4), rk(b"b"), ()),
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


async def test_the_batch_is_taken_when_the_backend_may_write() -> None:
    """Appends queued while the backend waits for its write turn join that batch."""
    db = FakeDb()
    gc = GroupCommitter(db.commit)
    gc.start()
    try:
        db.gate.clear()  # the backend is waiting for its turn
        first = asyncio.ensure_future(gc.submit(draft(0), None, ()))
        await asyncio.sleep(0)
        later = asyncio.ensure_future(gc.submit_many(entries(range(1, 4))))
        await asyncio.sleep(0)
        db.gate.set()
        await asyncio.gather(first, later)
        assert db.commits == [["e0", "e1", "e2", "e3"]]
    finally:
        await gc.stop()


async def test_a_commit_on_a_thread_that_outlives_stop_takes_nothing() -> None:
    """stop() fails what is still queued; a writer thread that only then gets its turn
    takes an empty batch, so nothing is written for callers already told "closed"."""
    turn = threading.Event()
    taken: list[list[str]] = []

    def on_thread(take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        turn.wait(5)
        batch = take()
        taken.append([item.draft.event_id for item in batch])
        return [AppendResult(AuditRecord(1, item.draft, b"", b"")) for item in batch]

    async def commit(take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        return await asyncio.get_running_loop().run_in_executor(None, on_thread, take)

    gc = GroupCommitter(commit)
    gc.start()
    pending = asyncio.ensure_future(gc.submit(draft(0), None, ()))
    await asyncio.sleep(0.01)
    await gc.stop(drain_timeout=0.01)
    with pytest.raises(StoreUnavailable, match="closed"):
        await pending
    turn.set()
    for _ in range(100):
        if taken:
            break
        await asyncio.sleep(0.01)
    assert taken == [[]]


async def test_a_failure_before_taking_fails_the_next_batch_and_the_writer_goes_on() -> None:
    db = FakeDb()
    db.failures.append(StoreUnavailable("cannot lock x-writelock"))
    gc = GroupCommitter(db.commit)
    gc.start()
    try:
        with pytest.raises(StoreUnavailable, match="writelock"):
            await gc.submit(draft(0), None, ())
        result = await gc.submit(draft(1), None, ())
        assert result.record is not None and db.commits == [["e1"]]
    finally:
        await gc.stop()
