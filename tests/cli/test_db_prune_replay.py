"""``proof-messenger db prune-replay``: the command operators run when the task is off.

Runs the real command in a subprocess against a real SQLite file and a fresh PostgreSQL
database (``target``) populated through the store: stale claims (now, by the wall clock)
go, fresh ones stay, and the summary says how many.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import yaml

from proof_messenger.audit.chain import time_to_micros
from tests.cli.test_cli import run
from tests.store.conftest import Target, make_draft, rk


def _config(tmp_path: Path, target: Target, **retention: int) -> Path:
    url = f"sqlite:///{target.url}" if target.kind == "sqlite" else target.url
    path = tmp_path / "relay.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": url},
                "master_key_file": str(tmp_path / "master.key"),
                "verification": {"clock_skew_seconds": 60, "max_lifetime_seconds": 300},
                "retention": {"replay_prune_margin_seconds": 600, **retention},
            }
        )
    )
    return path


async def test_prune_replay_command(tmp_path: Path, target: Target) -> None:
    store = await target.store()
    now = int(time.time())
    cutoff = now - 60 - 600  # exp below this goes (the clock moves on a little meanwhile)
    stale = [rk(os.urandom(32), cutoff - 10 - i) for i in range(7)]
    fresh = [rk(os.urandom(32), cutoff + 30), rk(os.urandom(32), now + 300)]
    entries = [(make_draft(i), key, ()) for i, key in enumerate(stale + fresh)]
    assert all(r.record is not None for r in await store.append_many(entries))
    for accepted_at in (now - 3600, now - 60):  # claims from before migration 0006
        await target.execute(
            "INSERT INTO replay_v1 (digest, accepted_at, event_id) VALUES ($1, $2, $3)",
            os.urandom(32),
            time_to_micros(accepted_at),
            f"evt-old-{accepted_at}",
        )
    await store.close()

    config = _config(tmp_path, target)
    done = await asyncio.to_thread(
        run, "db", "prune-replay", "--config", str(config), "--chunk-rows", "3"
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "pruned 8 replay claims in 3 chunks" in out, out  # 3 + 3 + (1 claim + 1 old)

    left = sorted(int(r[0]) for r in await target.fetch("SELECT exp FROM replay"))
    assert left == sorted(k.exp for k in fresh)
    old = await target.fetch("SELECT accepted_at FROM replay_v1")
    assert [int(r[0]) for r in old] == [time_to_micros(now - 60)]

    again = await asyncio.to_thread(run, "db", "prune-replay", "--config", str(config))
    assert again.returncode == 0 and "pruned 0 replay claims in 1 chunk," in again.stdout.decode()


async def test_prune_replay_refuses_an_unmigrated_database(tmp_path: Path, target: Target) -> None:
    await target.store(migrate=False)  # creates the SQLite file, no tables
    done = await asyncio.to_thread(
        run, "db", "prune-replay", "--config", str(_config(tmp_path, target))
    )
    assert done.returncode == 2
    assert "db upgrade" in done.stderr.decode()
