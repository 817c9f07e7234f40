"""Several relay worker PROCESSES on one SQLite file: no fork, no gap, one claim wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import proof_messenger
from proof_messenger.audit.chain import verify_chain_async
from proof_messenger.store.sqlite import SQLiteStore

WORKER = Path(__file__).with_name("sqlite_worker.py")


async def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "relay.db"
    shared = os.urandom(32).hex()
    src = str(Path(proof_messenger.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), name, "500", shared],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for name in ("w1", "w2")
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))

    # Each process tried the shared digest 25 times; exactly one attempt in total won.
    assert sum(o["replayed"] for o in outputs) == 49
    assert sum(o["accepted"] for o in outputs) == 951

    store = SQLiteStore(str(db))
    await store.open()
    try:
        assert await store.is_ready()
        rows = [r async for r in store.iter_audit()]
        assert [r.seq for r in rows] == list(range(1, 952))
        assert {r.draft.sub for r in rows} == {"w1", "w2"}
        report = await verify_chain_async(store.iter_audit(), await store.chain_head())
        assert report.ok, report.problem
        assert await store.is_claimed(bytes.fromhex(shared))
    finally:
        await store.close()
