"""Run as a separate process by test_store_multiprocess.py: appends to a shared SQLite file.

usage: python sqlite_worker.py DB_PATH NAME COUNT SHARED_DIGEST_HEX PEERS
Waits until PEERS workers are ready (a file barrier next to the database) so the
processes really write at the same time, then appends from 8 sequential "clients".
Prints one JSON line: {"accepted": n, "replayed": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from proof_messenger.store import AppendResult, AuditDraft
from proof_messenger.store.sqlite import SQLiteStore


async def main(path: str, name: str, count: int, shared: bytes, peers: int) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.migrate()  # the processes race here on purpose
    barrier = Path(path).parent
    (barrier / f"{name}.ready").touch()
    deadline = time.monotonic() + 60
    # A file barrier between processes: nothing to await but the clock.
    while len(list(barrier.glob("*.ready"))) < peers and time.monotonic() < deadline:  # noqa: ASYNC110
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
            out.append(await store.append(draft, claim_digest=shared if i % 20 == 0 else None))
        return out

    results = [r for rs in await asyncio.gather(*(client(c) for c in range(8))) for r in rs]
    await store.close()
    accepted = sum(not r.replayed for r in results)
    print(json.dumps({"accepted": accepted, "replayed": len(results) - accepted}))


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4]), int(sys.argv[5])
        )
    )
