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

from .conftest import make_draft, rk

#: A WAL frame: a 24-byte header and one page (the default 4 KiB).
FRAME = 24 + 4096


async def test_wal_stays_within_one_checkpoint_interval(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    wal = tmp_path / "relay.db-wal"
    store = SQLiteStore(str(path))
    await store.open()
    await store.migrate()
    try:
        high_water = 0
        for commit in range(80):  # about 50 frames each: several times SQLite's default
            await store.append_many(
                [
                    (make_draft(commit * 32 + i, sub=f"user-{i}"), rk(os.urandom(32)), ())
                    for i in range(32)
                ]
            )
            high_water = max(high_water, wal.stat().st_size)
        with contextlib.closing(sqlite3.connect(path)) as con:
            assert con.execute("SELECT count(*) FROM audit").fetchone()[0] == 80 * 32
        # One interval plus the commit that crossed it; with SQLite's default the WAL
        # grows past 1,000 frames (4 MiB) before its first reset.
        assert high_water < (WAL_AUTOCHECKPOINT + 150) * FRAME, high_water // FRAME
    finally:
        await store.close()


async def test_every_writer_connection_uses_the_threshold(tmp_path: Path) -> None:
    """A reopened store (a restarted worker) checkpoints at the same threshold."""
    path = str(tmp_path / "relay.db")
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        await store.migrate()
        try:
            con = store._writer_con()
            assert con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT
        finally:
            await store.close()
