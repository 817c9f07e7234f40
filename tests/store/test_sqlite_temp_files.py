"""SQLite: the writer connection keeps its temporary files in memory.

A multi-row INSERT inside a transaction saves the original of every page it changes (its
statement journal), and SQLite spills that journal past 64 KiB to a new file in /var/tmp
or TMPDIR, deleted when the statement ends. A group commit touches about one per-subject
index page per row, so with on-disk temp files nearly every commit created, wrote and
deleted such a file, with copies of audit pages, outside the data directory
(``store/sqlite.py``, ``WRITER_TEMP_STORE``).

SQLite unlinks the file as soon as it opens it, so the tests look at the process's open
descriptors while the statements run: a progress handler calls back into Python every few
hundred virtual-machine steps.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from proof_messenger.store.sqlite import SQLiteStore

from .conftest import make_draft, rk

#: SQLite's temporary file names: "etilqs_" and random characters.
TEMP_PREFIX = "etilqs_"


@contextlib.contextmanager
def temp_files_opened(con: sqlite3.Connection) -> Iterator[set[str]]:
    """The SQLite temporary files ``con`` has open at any point inside the block."""
    seen: set[str] = set()

    def look() -> int:
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if TEMP_PREFIX in target:
                    seen.add(target)
        return 0  # go on

    con.set_progress_handler(look, 200)
    try:
        yield seen
    finally:
        con.set_progress_handler(None, 200)


async def append_wide(store: SQLiteStore, start: int, rows: int) -> None:
    """One group commit of ``rows`` rows, each for another subject and with a claim."""
    await store.append_many(
        [
            (make_draft(start + i, sub=f"user-{start + i}"), rk(os.urandom(32)), ())
            for i in range(rows)
        ]
    )


async def grown(store: SQLiteStore) -> SQLiteStore:
    """``store`` with 3,000 rows: the next commit changes dozens of existing index pages,
    whose originals the statement journal keeps (new pages it does not)."""
    for commit in range(30):
        await append_wide(store, commit * 100, 100)
    return store


async def test_a_group_commit_opens_no_temporary_file(sqlite_store: SQLiteStore) -> None:
    store = await grown(sqlite_store)
    with temp_files_opened(store._writer_con()) as seen:
        await append_wide(store, 10_000, 200)
    assert seen == set()


async def test_with_temp_files_on_disk_the_same_commit_opens_one(
    sqlite_store: SQLiteStore,
) -> None:
    """The check above can fail: SQLite's default puts this commit's journal in a file."""
    store = await grown(sqlite_store)
    con = store._writer_con()
    con.execute("PRAGMA temp_store = FILE")
    with temp_files_opened(con) as seen:
        await append_wide(store, 10_000, 200)
    assert seen, "no statement journal was spilled: the test no longer shows anything"
