"""SQLite: the WAL is checkpointed every ``WAL_AUTOCHECKPOINT`` frames, not SQLite's 1,000.

The checkpoint runs inside the commit that crosses the threshold, on the event loop's
thread and under the write lock; a shorter one is a shorter stall for everyone waiting
(docs/benchmarks.md, seventh round). The WAL file's size is its high-water mark, so it
shows how far the WAL grew between two checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from proof_messenger.store.sqlite import WAL_AUTOCHECKPOINT, SQLiteStore

from .conftest import make_draft, opened_store, rk

#: A WAL frame: a 24-byte header and one page (the default 4 KiB).
FRAME = 24 + 4096


def wal_size(db_path: str) -> int:
    """The WAL file's size: its high-water mark since the database was opened."""
    return os.stat(db_path + "-wal").st_size


async def test_wal_stays_within_one_checkpoint_interval(sqlite_store: SQLiteStore) -> None:
    high_water = 0
    for commit in range(80):  # about 50 frames each: several times SQLite's default
        await sqlite_store.append_many(
            [
                (make_draft(commit * 32 + i, sub=f"user-{i}"), rk(os.urandom(32)), ())
                for i in range(32)
            ]
        )
        high_water = max(high_water, wal_size(sqlite_store.path))
    with contextlib.closing(sqlite3.connect(sqlite_store.path)) as con:
        assert con.execute("SELECT count(*) FROM audit").fetchone()[0] == 80 * 32
    # One interval plus the commit that crossed it; with SQLite's default the WAL grows
    # past 1,000 frames (4 MiB) before its first reset.
    assert high_water < (WAL_AUTOCHECKPOINT + 150) * FRAME, high_water // FRAME


async def test_every_writer_connection_uses_the_threshold(tmp_path: Path) -> None:
    """A reopened store (a restarted worker) checkpoints at the same threshold."""
    path = str(tmp_path / "relay.db")
    for _ in range(2):
        async with opened_store(SQLiteStore(path)) as store:
            con = store._writer_con()
            assert con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT
