"""Run as a separate process by test_store_multiprocess.py: appends to a shared SQLite file.

usage: python sqlite_worker.py DB_PATH NAME COUNT SHARED_DIGEST_HEX
Prints one JSON line: {"accepted": n, "replayed": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from proof_messenger.store import AuditDraft
from proof_messenger.store.sqlite import SQLiteStore


async def main(path: str, name: str, count: int, shared: bytes) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.migrate()  # both processes race here on purpose
    jobs = []
    for i in range(count):
        draft = AuditDraft(
            event_id=f"{name}-{i}",
            time=time.time(),
            event_type="proof.verified",
            status="accepted",
            sub=name,
        )
        # Every 20th append also tries to claim the digest both processes share.
        jobs.append(store.append(draft, claim_digest=shared if i % 20 == 0 else None))
    results = await asyncio.gather(*jobs)
    await store.close()
    accepted = sum(not r.replayed for r in results)
    print(json.dumps({"accepted": accepted, "replayed": len(results) - accepted}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])))
