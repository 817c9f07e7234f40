"""SQLite: a group commit runs on the event loop's thread when nobody else writes or waits
to write; otherwise the writer thread waits for the lock and the loop's thread commits,
and the loop is never blocked on a lock."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest

from proof_messenger.store.base import StoreUnavailable
from proof_messenger.store.groupcommit import PendingAppend
from proof_messenger.store.sqlite import SQLiteStore

from .conftest import make_draft, rk


@pytest.fixture
def store(sqlite_store: SQLiteStore) -> SQLiteStore:
    return sqlite_store


def _record_take_threads(store: SQLiteStore) -> list[str]:
    """The names of the threads on which the group commit took its batches."""
    threads: list[str] = []
    committer = store._committer
    take: Callable[[], list[PendingAppend]] = committer._take

    def recording_take() -> list[PendingAppend]:
        threads.append(threading.current_thread().name)
        return take()

    committer._take = recording_take  # type: ignore[method-assign]
    return threads


async def _ticks_while(task: asyncio.Future[Any], seconds: float) -> int:
    """How many times the loop ran another coroutine while ``task`` stayed pending."""
    ticks = 0
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
        assert not task.done()
        ticks += 1
    return ticks


async def test_uncontended_commits_run_on_the_event_loop_thread(store: SQLiteStore) -> None:
    threads = _record_take_threads(store)
    results = await asyncio.gather(
        *(store.append(make_draft(i), claim=rk(bytes([i]) * 32)) for i in range(5))
    )
    assert all(r.record is not None for r in results)
    assert threads and set(threads) == {threading.main_thread().name}
    replayed = await store.append(make_draft(9), claim=rk(bytes([0]) * 32))
    assert replayed.replayed and replayed.record is None
    assert await store.audit_count() == 5


def _lock_is_free(path: str) -> bool:
    """Whether another process could take ``<db>-writelock`` now."""
    fd = os.open(path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken on this descriptor
    return True


async def test_a_lock_held_by_another_process_is_waited_for_then_committed_on_the_loop(
    store: SQLiteStore,
) -> None:
    """The writer thread only waits for the lock (the loop keeps running); the batch is
    then taken and committed on the loop's thread, and the lock released after it."""
    threads = _record_take_threads(store)
    other = os.open(store.path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX)  # a second worker committing (separate open file)
    try:
        pending = asyncio.ensure_future(store.append(make_draft(0), claim=rk(b"a" * 32)))
        assert await _ticks_while(pending, 0.2) >= 5  # the loop is not blocked
        assert threads == []  # nothing taken while the lock was busy
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    result = await asyncio.wait_for(pending, 5)
    assert result.record is not None and result.record.seq == 1
    assert threads == [threading.main_thread().name]
    assert not store._turn_held
    assert _lock_is_free(store.path)


async def test_a_committer_stopped_while_waiting_for_the_lock_does_not_keep_it(
    store: SQLiteStore,
) -> None:
    """Stopping the group commit while its writer thread waits for the lock: once the
    lock comes, the turn is ended at once (the other workers are not locked out until
    this store closes), and the waiting append fails as unavailable."""
    other = os.open(store.path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        pending = asyncio.ensure_future(store.append(make_draft(0), claim=rk(b"s" * 32)))
        await _ticks_while(pending, 0.1)
        await store._committer.stop(drain_timeout=0.05)
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(pending, 5)
    for _ in range(200):  # the writer thread takes the lock, then gives it back
        if not store._turn_held and _lock_is_free(store.path):
            break
        await asyncio.sleep(0.01)
    assert not store._turn_held
    assert _lock_is_free(store.path)


async def test_inline_commits_yield_to_a_process_waiting_for_the_lock(
    store: SQLiteStore,
) -> None:
    """A waiting process is not overtaken by a non-blocking attempt: the commit queues for
    the lock in the kernel (a blocking ``flock`` on the writer thread) like the waiter,
    and only then takes its batch, on the loop's thread."""
    threads = _record_take_threads(store)
    turns: list[str] = []
    acquire_turn = store._acquire_turn

    def recording_acquire_turn() -> None:
        turns.append(threading.current_thread().name)
        acquire_turn()

    store._acquire_turn = recording_acquire_turn  # type: ignore[method-assign]
    waiter = os.open(store.path + "-writewait", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(waiter, fcntl.LOCK_SH)  # another process announces it waits for the lock
    try:
        result = await store.append(make_draft(0), claim=rk(b"b" * 32))
    finally:
        fcntl.flock(waiter, fcntl.LOCK_UN)
        os.close(waiter)
    assert result.record is not None
    assert len(turns) == 1 and turns[0].startswith("pm-sqlite-writer")
    assert threads == [threading.main_thread().name]
    threads.clear()
    turns.clear()
    await store.append(make_draft(1), claim=rk(b"c" * 32))  # nobody waits any more
    assert threads == [threading.main_thread().name]
    assert turns == []  # straight inline, no wait on the writer thread


async def test_a_writer_without_the_lock_does_not_block_the_loop(store: SQLiteStore) -> None:
    """A plain SQLite writer (no flock, e.g. a maintenance script): the inline BEGIN gets
    BUSY at once and the writer thread waits for it with the busy timeout."""
    threads = _record_take_threads(store)
    foreign = sqlite3.connect(store.path, isolation_level=None)
    foreign.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.ensure_future(store.append(make_draft(0), claim=rk(b"e" * 32)))
        assert await _ticks_while(pending, 0.2) >= 5
    finally:
        foreign.execute("COMMIT")
        foreign.close()
    result = await asyncio.wait_for(pending, 5)
    assert result.record is not None and result.record.seq == 1
    # BEGIN was BUSY on the loop's thread too after the flock was taken: the writer
    # thread committed under that turn and ended it.
    assert threads and all(name.startswith("pm-sqlite-writer") for name in threads)
    assert not store._turn_held and _lock_is_free(store.path)
    # The connection's busy timeout is back to the configured value after the attempt.
    timeout = await store._on_writer(lambda con: con.execute("PRAGMA busy_timeout").fetchone())
    assert timeout[0] == 10_000
