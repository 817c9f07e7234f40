"""Run as a separate process by test_store_processes.py: one "relay worker" appending.

usage: python append_worker.py STORE_URL BARRIER_DIR NAME COUNT SHARED_DIGEST_HEX PEERS
Waits until PEERS workers are ready (a file barrier in BARRIER_DIR) so the processes
really write at the same time, then appends from 8 sequential "clients".
Prints one JSON line: {"accepted": n, "replayed": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from proof_messenger.store import AppendResult, AuditDraft, ReplayKey, open_store


def _ready(barrier: Path) -> int:
    return len(list(barrier.glob("*.ready")))


async def main(url: str, barrier: Path, name: str, count: int, shared: bytes, peers: int) -> None:
    store = open_store(url)
    await store.open()
    await store.migrate()  # the processes race here on purpose
    (barrier / f"{name}.ready").touch()
    deadline = time.monotonic() + 60
    # A file barrier between processes: nothing to await but the clock.
    while _ready(barrier) < peers and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)

    async def client(c: int) -> list[AppendResult]:
        out = []
        for i in range(c, count, 8):
            draft = AuditDraft(
                event_id=f"{name}-{i}",
                time=time.time(),
                event_type="proof.verified",
                status="accepted",
                sub=name,
            )
            # Every 20th append also tries to claim the digest all processes share.
            out.append(
                await store.append(
                    draft, claim=ReplayKey(1_700_000_300, shared) if i % 20 == 0 else None
                )
            )
        return out

    results = [r for rs in await asyncio.gather(*(client(c) for c in range(8))) for r in rs]
    await store.close()
    accepted = sum(not r.replayed for r in results)
    print(json.dumps({"accepted": accepted, "replayed": len(results) - accepted}))


if __name__ == "__main__":
    url, barrier, name, count, shared, peers = sys.argv[1:7]
    asyncio.run(main(url, Path(barrier), name, int(count), bytes.fromhex(shared), int(peers)))
