"""PostgreSQL twin of ``store_append.py``: WAL bytes and full-page images per 32-row commit.

Why: PostgreSQL does not write pages per commit as SQLite's WAL does, but the first change
of a page after each checkpoint writes the whole 8 KiB page into the WAL (a full-page
image, FPI), so inserts spread over random index pages cost WAL bytes too, more as the
tables grow. This prefills a fresh database by SQL (audit rows over 10,000 subjects, one
replay claim per accepted row in whichever key shape the schema has, the Merkle frontier),
appends 20 commits, takes a CHECKPOINT, then appends ``--commits`` 32-row batches through
``PostgresStore.append_many`` and reports WAL bytes (``pg_current_wal_insert_lsn``) and FPIs
(``pg_stat_wal``) per commit.

WAL positions are cluster-wide: use a PRIVATE cluster that nothing else writes to, e.g.::

    su postgres -c "initdb -D /tmp/pgb -A trust"
    su postgres -c "pg_ctl -D /tmp/pgb -o '-p 55432 -k /tmp' start"
    PYTHONPATH=src python bench/store_append_pg.py --admin-dsn \\
        postgresql://postgres@127.0.0.1:55432/postgres --prefill 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid

import asyncpg
from store_append import BATCH, LIFETIME, Appender

from proof_messenger.audit.merkle import CompactTree
from proof_messenger.store import _merkle
from proof_messenger.store.postgres import PostgresStore

_HEX32 = "decode(md5(random()::text) || md5(random()::text), 'hex')"


async def prefill(con: asyncpg.Connection, n: int) -> None:
    """``n`` audit rows, claims for 90 % of them and a frontier of ``n`` leaves, by SQL."""
    t0_us = int((time.time() - n / 1000) * 1e6)
    await con.execute(
        "INSERT INTO audit (seq, time_us, event_id, event_type, status, sub, kid, tx_type, "
        "amount_minor, currency, proof_id, client_ip, user_agent, context_key_id, context_ct, "
        "prev_hash, entry_hash, leaf_hash) "
        f"SELECT g, {t0_us} + g * 1000, gen_random_uuid()::text, 'proof.verified', 'accepted', "
        "'user-' || (random() * 9999)::int, 'kid', 'payment', g, 'EUR', 'prf_' || g, "
        f"'192.0.2.1', 'bench', 'mk-1', {_HEX32} || {_HEX32}, {_HEX32}, {_HEX32}, {_HEX32} "
        f"FROM generate_series(1, {n}) g"
    )
    columns = {
        r[0]
        for r in await con.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'replay'"
        )
    }
    exp = f"{t0_us // 1_000_000 + LIFETIME} + g / 1000, " if "exp" in columns else ""
    await con.execute(
        f"INSERT INTO replay ({'exp, ' if exp else ''}digest, accepted_at, event_id) "
        f"SELECT {exp}{_HEX32}, {t0_us} + g * 1000, 'e' || g "
        f"FROM generate_series(1, {n}) g WHERE g % 10 <> 0"
    )
    tree = CompactTree()
    for start in range(0, n, 100_000):
        leaves = [os.urandom(32) for _ in range(min(100_000, n - start))]
        tree, _ = _merkle.extend_tree(tree, leaves)
    await con.execute(
        "UPDATE chain_head SET seq = $1, merkle_frontier = $2 WHERE id = 1", n, tree.to_bytes()
    )
    await con.execute("VACUUM ANALYZE")


async def measure(admin_dsn: str, n: int, commits: int) -> str:
    name = f"pm_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    store = PostgresStore(dsn, max_connections=4)
    con: asyncpg.Connection | None = None
    try:
        await store.open()
        await store.migrate()
        con = await asyncpg.connect(dsn)
        await prefill(con, n)
        rng = random.Random(n)
        subs = [f"user-{i}" for i in range(10_000)]
        append = Appender(store, rng, subs)
        await append(20)
        await con.execute("CHECKPOINT")
        lsn0 = await con.fetchval("SELECT pg_current_wal_insert_lsn()")
        fpi0 = await con.fetchval("SELECT wal_fpi FROM pg_stat_wal")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await append(commits)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        wal = await con.fetchval("SELECT pg_current_wal_insert_lsn() - $1::pg_lsn", lsn0)
        await asyncio.sleep(1)  # backends report their WAL statistics lazily
        fpi1 = await con.fetchval("SELECT wal_fpi FROM pg_stat_wal")
        return (
            f"{n:>9} {float(wal) / commits / 1024:>11.0f} {(fpi1 - fpi0) / commits:>10.1f} "
            f"{(cpu1 - cpu0) / (commits * BATCH) * 1e6:>14.0f} {(wall1 - wall0) / commits * 1e3:>10.1f}"
        )
    finally:
        if con is not None:
            await con.close()
        await store.close()
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--admin-dsn", required=True, help="a database of a PRIVATE cluster")
    p.add_argument("--prefill", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--commits", type=int, default=300)
    args = p.parse_args()
    print(f"{'prefill':>9} {'WAL KiB/c':>11} {'FPI/c':>10} {'client us/row':>14} {'ms/commit':>10}")
    for n in args.prefill:
        print(asyncio.run(measure(args.admin_dsn, n, args.commits)), flush=True)


if __name__ == "__main__":
    main()
