"""Group-commit observation: rows, wait for the write turn and time holding it, per commit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from proof_messenger.store import Store
from proof_messenger.store.base import AppendResult, AuditRecord, StoreUnavailable
from proof_messenger.store.groupcommit import GroupCommitter, PendingAppend
from proof_messenger.store.sqlite import SQLiteStore

from .conftest import Target, another_process_holds_the_write_lock, make_draft, rk
from .test_group_commit import FakeDb, draft, entries

Seen = list[tuple[int, float, float]]


def observed(gc: GroupCommitter | Store) -> Seen:
    seen: Seen = []

    def observer(rows: int, wait: float, duration: float) -> None:
        seen.append((rows, wait, duration))

    if isinstance(gc, GroupCommitter):
        gc.observer = observer
    else:
        gc.observe_commits(observer)
    return seen


async def test_wait_runs_until_the_backend_takes_the_batch() -> None:
    db = FakeDb()
    gc = GroupCommitter(db.commit)
    seen = observed(gc)
    gc.start()
    try:
        db.gate.clear()  # the backend waits for its write turn
        first = asyncio.ensure_future(gc.submit(draft(0), None, ()))
        await asyncio.sleep(0.05)
        db.gate.set()
        await first
        await gc.submit_many(entries(range(1, 4)))
    finally:
        await gc.stop()
    assert [rows for rows, _, _ in seen] == [1, 3]
    (_, wait, duration), (_, second_wait, _) = seen
    assert wait >= 0.05 > second_wait
    assert 0 <= duration < 0.05


async def test_duration_runs_from_taking_the_batch_to_the_end_of_the_commit() -> None:
    async def slow_commit(take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        batch = take()
        await asyncio.sleep(0.05)  # holding the write turn
        return [AppendResult(AuditRecord(1, item.draft, b"", b"")) for item in batch]

    gc = GroupCommitter(slow_commit)
    seen = observed(gc)
    gc.start()
    try:
        await gc.submit(draft(0), None, ())
    finally:
        await gc.stop()
    [(rows, wait, duration)] = seen
    assert rows == 1 and duration >= 0.05 > wait


async def test_a_failed_commit_is_not_observed_and_a_failing_observer_loses_nothing() -> None:
    db = FakeDb()
    db.failures.append(StoreUnavailable("cannot lock x-writelock"))
    gc = GroupCommitter(db.commit)
    calls: list[int] = []

    def broken(rows: int, wait: float, duration: float) -> None:
        calls.append(rows)
        raise RuntimeError("metrics backend down")

    gc.observer = broken
    gc.start()
    try:
        with pytest.raises(StoreUnavailable):
            await gc.submit(draft(0), None, ())
        assert calls == []
        result = await gc.submit(draft(1), None, ())
        assert result.record is not None  # committed and answered despite the observer
        assert calls == [1]
        seen = observed(gc)
        await gc.submit(draft(2), None, ())  # the committer goes on
        assert [rows for rows, _, _ in seen] == [1]
    finally:
        await gc.stop()
    assert db.commits == [["e1"], ["e2"]]


async def test_rows_retried_one_by_one_are_observed_one_by_one() -> None:
    db = FakeDb()

    async def commit(take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        batch = take()
        if len(batch) > 1:
            raise ValueError("duplicate event_id")  # the whole transaction rolls back
        return await db.commit(lambda: batch)

    gc = GroupCommitter(commit)
    seen = observed(gc)
    gc.start()
    try:
        await gc.submit_many(entries(range(3)))
    finally:
        await gc.stop()
    assert db.commits == [["e0"], ["e1"], ["e2"]]
    assert [rows for rows, _, _ in seen] == [1, 1, 1]


async def test_every_append_of_a_real_store_is_observed(store: Store) -> None:
    seen = observed(store)
    await store.append(make_draft(0), claim=rk(b"a" * 32))
    await store.append_many(
        [(make_draft(i), rk(bytes([i]) * 32), ()) for i in range(1, 6)]
        + [(make_draft(6), rk(b"a" * 32), ())]  # a replay: claimed above, writes nothing
    )
    assert [rows for rows, _, _ in seen] == [1, 6]
    assert all(wait >= 0 and duration > 0 for _, wait, duration in seen)
    store.observe_commits(None)
    await store.append(make_draft(7))
    assert len(seen) == 2


async def test_sqlite_wait_is_the_time_another_process_holds_the_write_lock(
    sqlite_store: SQLiteStore,
) -> None:
    seen = observed(sqlite_store)
    with another_process_holds_the_write_lock(sqlite_store.path):
        appends = [
            asyncio.ensure_future(sqlite_store.append(make_draft(i), claim=rk(bytes([i]) * 32)))
            for i in range(10)
        ]
        await asyncio.sleep(0.1)
    await asyncio.gather(*appends)
    [(rows, wait, duration)] = seen  # one commit, after the lock came free
    assert rows == 10 and wait >= 0.1 and duration > 0


@pytest.mark.postgres
async def test_postgres_wait_is_the_time_another_transaction_holds_the_chain_head(
    pg_target: Target,
) -> None:
    """The batch is taken once the chain head is locked: appends that arrive while another
    worker or instance commits join one commit, and the wait is that other commit's."""
    store = await pg_target.store()
    seen = observed(store)
    other = await asyncpg.connect(pg_target.url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")
        first = asyncio.ensure_future(store.append(make_draft(0), claim=rk(b"p" * 32)))
        await asyncio.sleep(0.05)  # the committer now waits for the head
        rest = [
            asyncio.ensure_future(store.append(make_draft(i), claim=rk(bytes([i]) * 32)))
            for i in range(1, 10)
        ]
        await asyncio.sleep(0.05)
        assert not first.done()  # the other instance's transaction holds the head
        await tx.rollback()
        results = await asyncio.gather(first, *rest)
    finally:
        await other.close()
    assert [r.record.seq for r in results if r.record] == list(range(1, 11))
    [(rows, wait, duration)] = seen  # one commit: the rows queued while it waited joined
    assert rows == 10 and wait >= 0.1 > duration
