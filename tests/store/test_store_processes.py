"""Several relay worker PROCESSES on one database: no fork, no gap, one claim wins."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import proof_messenger.store
from proof_messenger.audit.chain import verify_chain_async

from .conftest import Target, rk

WORKER = Path(__file__).with_name("append_worker.py")
SRC = str(Path(proof_messenger.store.__file__).resolve().parents[2])


async def test_three_processes_share_one_database(target: Target, tmp_path: Path) -> None:
    url = f"sqlite:///{target.url}" if target.kind == "sqlite" else target.url
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    shared = os.urandom(32).hex()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            url,
            str(barrier),
            name,
            "400",
            shared,
            "3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for name in ("w1", "w2", "w3")
    ]
    outputs = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
        assert proc.returncode == 0, err.decode()
        outputs.append(json.loads(out.decode().strip().splitlines()[-1]))

    # Each process tried the shared digest 20 times; exactly one attempt in total won.
    assert sum(o["replayed"] for o in outputs) == 59
    assert sum(o["accepted"] for o in outputs) == 1141

    store = await target.store(migrate=False)
    assert await store.is_ready()
    rows = [r async for r in store.iter_audit()]
    assert [r.seq for r in rows] == list(range(1, 1142))
    assert {r.draft.sub for r in rows} == {"w1", "w2", "w3"}
    assert sorted(r.draft.event_id for r in rows if r.draft.event_id.endswith("-1")) == [
        "w1-1",
        "w2-1",
        "w3-1",
    ]
    report = await verify_chain_async(store.iter_audit(), await store.chain_head())
    assert report.ok, report.problem
    assert await store.is_claimed(rk(bytes.fromhex(shared)))
