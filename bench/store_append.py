"""Store-level write cost of the audit append path (SQLite): CPU per row, bytes per commit.

Why: every accepted proof costs one audit row, one replay claim and Merkle nodes, written
by the group commit. The HTTP benchmarks cannot show how that cost grows with the size of
the database, and a production relay keeps millions of rows. This script prefills a fresh
database to a given size, then appends 32-row batches through ``SQLiteStore.append_many``
(the path the relay takes) and reports, per prefill size:

* CPU µs per appended row (``time.process_time``: all threads of the process, so the
  writer thread's SQLite work is included), median of ``--windows`` windows;
* KiB written per commit (``wchar`` of ``/proc/self/io``: WAL frames plus checkpoint
  writes back to the database file) and write syscalls per commit;
* the process's peak RSS (``ru_maxrss``), to check cache settings against the worker budget.

Small prefills (``--prefill`` below ``--sql-above``) go through ``append_many`` too; large
ones are inserted with direct SQL (plausible rows: time-ordered UUIDv7 event ids, a mix of
accepted and rejected rows over ``--subs`` subjects, one replay claim per accepted row,
and the Merkle nodes and frontier of the prefilled leaves), which is much faster and
gives the same B-tree shapes. The chain hashes of SQL-prefilled rows are not valid: this
measures cost, it does not verify the log.

Runs against whichever ``proof_messenger`` is first on ``PYTHONPATH`` (so the same script
measures a baseline worktree), e.g.::

    PYTHONPATH=src /work/main/.venv/bin/python bench/store_append.py --prefill 0 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sqlite3
import statistics
import tempfile
import time
import uuid
from typing import Any

from proof_messenger.audit.chain import time_to_micros
from proof_messenger.audit.merkle import CompactTree
from proof_messenger.store import _merkle
from proof_messenger.store import base as store_base
from proof_messenger.store.base import AuditDraft
from proof_messenger.store.sqlite import SQLiteStore

BATCH = 32
LIFETIME = 300  # seconds from "now" to an intent's exp, as a typical client sets it
#: The claim type of this worktree's Store interface: ``ReplayKey`` (claims placed by the
#: intent's exp) if it has one, else the bare digest (the interface before that change).
ReplayKey: Any = getattr(store_base, "ReplayKey", None)


def uuid7(ms: int) -> str:
    """A UUIDv7 string for the millisecond ``ms`` (time-ordered, as the relay's event ids)."""
    r = os.urandom(10)
    return str(uuid.UUID(bytes=ms.to_bytes(6, "big") + bytes([0x70 | (r[0] & 15)]) + r[1:]))


def draft(i: int, t: float, sub: str, accepted: bool) -> AuditDraft:
    """An audit draft shaped like the relay's ``proof.verified`` / ``proof.rejected`` rows."""
    return AuditDraft(
        event_id=uuid7(int(t * 1000)),
        time=t,
        event_type="proof.verified" if accepted else "proof.rejected",
        status="accepted" if accepted else "rejected",
        sub=sub,
        kid=f"kid-{sub}",
        tx_type="payment",
        amount_minor=1_000 + i,
        currency="EUR",
        error_code=None if accepted else "expired",
        proof_id=f"prf_{os.urandom(12).hex()}",
        client_ip="192.0.2.1",
        user_agent="bench/store_append",
        detail=None,
        context_key_id="mk-1",
        context_ct=os.urandom(60),
    )


def claim(t: float) -> Any:
    digest = os.urandom(32)
    if ReplayKey is None:
        return digest
    return ReplayKey(digest=digest, exp=int(t) + LIFETIME)


class Appender:
    """Appends ``BATCH``-row commits through ``store.append_many``, as the relay's group
    commit does: rows over random subjects, 90 % accepted with a replay claim. ``store``
    may be swapped (a reopened store); the row counter goes on."""

    def __init__(self, store: Any, rng: random.Random, subs: list[str]) -> None:
        self.store, self.rng, self.subs, self.rows = store, rng, subs, 0

    async def __call__(self, commits: int) -> None:
        rng, subs = self.rng, self.subs
        for _ in range(commits):
            entries = []
            for _ in range(BATCH):
                self.rows += 1
                t = time.time()
                accepted = rng.random() < 0.9
                d = draft(self.rows, t, subs[rng.randrange(len(subs))], accepted)
                entries.append((d, claim(t) if accepted else None, ()))
            await self.store.append_many(entries)


def prefill_sql(path: str, n: int, subs: list[str], rng: random.Random) -> None:
    """``n`` plausible audit rows, their replay claims and Merkle nodes, by direct SQL."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    replay_cols = [r[1] for r in con.execute("PRAGMA table_info(replay)")]
    has_exp = "exp" in replay_cols
    node_cols = [r[1] for r in con.execute("PRAGMA table_info(merkle_nodes)")]
    by_last = "last_leaf" in node_cols  # migration 0007: nodes keyed by their last leaf
    con.execute("BEGIN")
    t0 = time.time() - n / 1000  # 1,000 rows a second up to now
    tree = CompactTree()
    insert_audit = (
        "INSERT INTO audit (seq, time_us, event_id, event_type, status, sub, kid, tx_type, "
        "amount_minor, currency, error_code, proof_id, client_ip, user_agent, detail, "
        "context_key_id, context_ct, prev_hash, entry_hash, leaf_hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    insert_replay = (
        "INSERT INTO replay (exp, digest, accepted_at, event_id) VALUES (?, ?, ?, ?)"
        if has_exp
        else "INSERT INTO replay (digest, accepted_at, event_id) VALUES (?, ?, ?)"
    )
    step = 20_000
    for start in range(0, n, step):
        rows: list[tuple[Any, ...]] = []
        claims: list[tuple[Any, ...]] = []
        leaves: list[bytes] = []
        for seq in range(start + 1, min(n, start + step) + 1):
            t = t0 + seq / 1000
            d = draft(seq, t, subs[rng.randrange(len(subs))], rng.random() < 0.9)
            leaf = os.urandom(32)
            leaves.append(leaf)
            rows.append(
                (
                    seq,
                    time_to_micros(t),
                    d.event_id,
                    d.event_type,
                    d.status,
                    d.sub,
                    d.kid,
                    d.tx_type,
                    d.amount_minor,
                    d.currency,
                    d.error_code,
                    d.proof_id,
                    d.client_ip,
                    d.user_agent,
                    d.detail,
                    d.context_key_id,
                    d.context_ct,
                    os.urandom(32),
                    os.urandom(32),
                    leaf,
                )
            )
            if d.status == "accepted":
                at = (os.urandom(32), time_to_micros(t), d.event_id)
                claims.append((int(t) + LIFETIME, *at) if has_exp else at)
        con.executemany(insert_audit, rows)
        con.executemany(insert_replay, claims)
        tree, nodes = _merkle.extend_tree(tree, leaves)
        if by_last:
            con.executemany(
                "INSERT INTO merkle_nodes (last_leaf, level, hash) VALUES (?, ?, ?)",
                [(((i + 1) << lv) - 1, lv, h) for lv, i, h in nodes],
            )
        else:
            con.executemany("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
    con.execute(
        "UPDATE chain_head SET seq = ?, entry_hash = ?, merkle_frontier = ? WHERE id = 1",
        (n, os.urandom(32), tree.to_bytes()),
    )
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def db_size(directory: str) -> int:
    """Bytes of the database, WAL and shared-memory files in ``directory``."""
    return sum(e.stat().st_size for e in os.scandir(directory) if e.name.startswith("audit.db"))


def proc_io() -> tuple[int, int]:
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["wchar"]), int(fields["syscw"])


async def measure(prefill: int, args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(prefill)
    subs = [f"user-{i}" for i in range(args.subs)]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "audit.db")
        store = SQLiteStore(path)
        await store.open()
        await store.migrate()
        append = Appender(store, rng, subs)
        if prefill >= args.sql_above:
            await store.close()
            prefill_sql(path, prefill, subs, rng)
            store = append.store = SQLiteStore(path)
            await store.open()
        else:
            await append(prefill // BATCH)
        await append(args.warmup)
        cpu: list[float] = []
        kib: list[float] = []
        syscw: list[float] = []
        for _ in range(args.windows):
            w0, s0 = proc_io()
            c0 = time.process_time()
            await append(args.commits)
            c1 = time.process_time()
            w1, s1 = proc_io()
            cpu.append((c1 - c0) / (args.commits * BATCH) * 1e6)
            kib.append((w1 - w0) / args.commits / 1024)
            syscw.append((s1 - s0) / args.commits)
        await store.close()
        size_mb = db_size(tmp) / (1 << 20)
    return {
        "prefill": prefill,
        "cpu_us_row": statistics.median(cpu),
        "cpu_min": min(cpu),
        "cpu_max": max(cpu),
        "kib_commit": statistics.median(kib),
        "writes_commit": statistics.median(syscw),
        "db_mb": size_mb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prefill", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    p.add_argument("--subs", type=int, default=10_000, help="distinct subjects (default 10000)")
    p.add_argument("--commits", type=int, default=100, help="32-row commits per window")
    p.add_argument("--windows", type=int, default=3, help="measured windows (median reported)")
    p.add_argument("--warmup", type=int, default=50, help="commits before measuring")
    p.add_argument("--sql-above", type=int, default=20_000, help="prefill by SQL from this size")
    p.add_argument("--dir", default=None, help="directory for the temporary database")
    args = p.parse_args()
    print(
        f"claims: {'ReplayKey(exp, digest)' if ReplayKey else 'digest'}; {BATCH} rows/commit, "
        f"{args.subs} subjects, {args.windows}x{args.commits} commits"
    )
    print(
        f"{'prefill':>9} {'us/row':>8} {'(min-max)':>13} {'KiB/commit':>11} {'writes':>7} {'db MB':>7}"
    )
    for n in args.prefill:
        r = asyncio.run(measure(n, args))
        print(
            f"{n:>9} {r['cpu_us_row']:>8.1f} {r['cpu_min']:>6.1f}-{r['cpu_max']:<6.1f} "
            f"{r['kib_commit']:>11.0f} {r['writes_commit']:>7.0f} {r['db_mb']:>7.0f}",
            flush=True,
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MB (includes the prefill)")


if __name__ == "__main__":
    main()
