"""SQLite: the group commit takes its batch only once it holds the cross-process write lock."""

from __future__ import annotations

import asyncio

from proof_messenger.store.sqlite import SQLiteStore

from .conftest import another_process_holds_the_write_lock, make_draft, rk


async def test_appends_queued_while_another_process_writes_join_one_commit(
    sqlite_store: SQLiteStore,
) -> None:
    store = sqlite_store
    statements: list[str] = []
    await store._on_writer(lambda con: con.set_trace_callback(statements.append))
    with another_process_holds_the_write_lock(store.path):
        first = asyncio.ensure_future(store.append(make_draft(0), claim=rk(b"d" * 32)))
        await asyncio.sleep(0.05)  # the writer thread now waits for the lock
        rest = [
            asyncio.ensure_future(store.append(make_draft(i), claim=rk(bytes([i]) * 32)))
            for i in range(1, 10)
        ]
        await asyncio.sleep(0.05)
        assert not first.done()  # nothing is written while the other process writes
    results = await asyncio.gather(first, *rest)
    assert [r.record.seq for r in results if r.record] == list(range(1, 11))
    assert statements.count("COMMIT") == 1
