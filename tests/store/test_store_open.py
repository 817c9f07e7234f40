"""open_store URL parsing, SQLite specifics, PostgreSQL recovery and replica fallback."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import asyncpg
import pytest

from proof_messenger.store import AuditFilter, Store, StoreUnavailable, open_store
from proof_messenger.store._common import load_migrations
from proof_messenger.store.postgres import PostgresStore
from proof_messenger.store.sqlite import SQLiteStore

from .conftest import PG_ADMIN_DSN, Target, make_draft


def test_open_store_parses_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///data/relay.db")
    assert isinstance(rel, SQLiteStore) and rel.path == "data/relay.db"
    absolute = open_store(f"sqlite:///{tmp_path}/abs/relay.db")  # sqlite:////abs/...
    assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/abs/relay.db"
    mem = open_store("sqlite:///:memory:")
    assert isinstance(mem, SQLiteStore) and mem.path == ":memory:"
    for url in ("postgresql://u@127.0.0.1:5432/db", "postgres://u@127.0.0.1/db"):
        assert isinstance(open_store(url, max_connections=3), PostgresStore)
    # Both backends satisfy the Store protocol the relay is written against.
    assert isinstance(rel, Store)
    assert isinstance(open_store("postgres://u@127.0.0.1/db"), Store)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://u@h/db", "'mysql'"),
        ("relay.db", "(none)"),
        ("sqlite://relay.db", "sqlite:///"),
        ("sqlite:///", "no file path"),
        ("sqlite:///x.db?mode=ro", "options"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        open_store(url)


async def test_sqlite_creates_parent_dirs_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "relay.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.migrate()
        assert path.exists()
        await store.append(make_draft(0))
    finally:
        await store.close()
    import sqlite3

    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


async def test_sqlite_memory_store_works_in_one_process() -> None:
    store = open_store("sqlite:///:memory:")
    await store.open()
    try:
        assert not await store.is_ready()
        await store.migrate()
        assert await store.is_ready()
        results = await asyncio.gather(*(store.append(make_draft(i)) for i in range(20)))
        assert sorted(r.record.seq for r in results if r.record) == list(range(1, 21))
        page = await store.list_audit(AuditFilter(), 5)
        assert [r.seq for r in page.records] == [20, 19, 18, 17, 16]
    finally:
        await store.close()


async def test_sqlite_unopenable_path_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SQLiteStore(str(tmp_path / "file" / "relay.db"))
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_sqlite_not_a_database_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    store = SQLiteStore(str(path))
    with pytest.raises(StoreUnavailable):
        await store.open()
        await store.migrate()
    await store.close()


def test_migrations_ship_as_package_data() -> None:
    sqlite_names = [m.name for m in load_migrations("sqlite")]
    assert sqlite_names[0] == "0001_initial"
    assert [m.name for m in load_migrations("postgres")] == sqlite_names
    assert "CREATE TABLE audit" in load_migrations("postgres")[0].sql


async def test_postgres_unreachable_is_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", connection_timeout=2)
    await store.open()  # lazy pool: opening does not need the database
    try:
        assert await store.is_ready() is False
        with pytest.raises(StoreUnavailable, match="PostgreSQL unavailable"):
            await store.get_key("k")
        with pytest.raises(StoreUnavailable):
            await store.append(make_draft(0))
    finally:
        await store.close()


async def _terminate_backends(dsn: str) -> int:
    db = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                db,
            )
        )
    finally:
        await admin.close()


async def _append_eventually(store: Store, i: int) -> int:
    """Calls right after an outage may fail with StoreUnavailable (one per dead pooled
    connection); within a few seconds the store must recover by itself."""
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        try:
            res = await store.append(make_draft(i))
        except StoreUnavailable:
            await asyncio.sleep(0.05)
            continue
        assert res.record is not None
        return res.record.seq
    raise AssertionError("store did not recover")


@pytest.mark.postgres
async def test_postgres_recovers_after_connections_are_killed(pg_target: Target) -> None:
    target = pg_target
    store = await target.store()
    await asyncio.gather(*(store.append(make_draft(i)) for i in range(10)))
    assert await _terminate_backends(target.url) >= 1
    assert await _append_eventually(store, 100) == 11
    assert await _terminate_backends(target.url) >= 1
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            assert await store.get_key("nope") is None
            break
        except StoreUnavailable:
            assert asyncio.get_running_loop().time() < deadline, "store did not recover"
            await asyncio.sleep(0.05)
    assert await store.audit_count() == 11


@pytest.mark.postgres
async def test_postgres_replica_reads_fall_back_to_primary(pg_target: Target) -> None:
    target = pg_target
    writer = await target.store()
    res = await writer.append(make_draft(0))
    assert res.record is not None
    broken = "postgresql://postgres@127.0.0.1:1/none"
    # A dead replica first, then a working one (the primary itself stands in for it).
    store = PostgresStore(target.url, replica_dsns=[broken, target.url], connection_timeout=2)
    await store.open()
    try:
        assert await store.get_audit(res.record.draft.event_id) == res.record
        page = await store.list_audit(AuditFilter(), 10)
        assert [r.seq for r in page.records] == [1]
    finally:
        await store.close()
    only_dead = PostgresStore(target.url, replica_dsns=[broken], connection_timeout=2)
    await only_dead.open()
    try:
        assert await only_dead.get_audit(res.record.draft.event_id) == res.record
    finally:
        await only_dead.close()


@pytest.mark.postgres
async def test_postgres_failed_replica_is_skipped_for_a_while(pg_target: Target) -> None:
    """A replica that accepts TCP but never answers is tried once, not on every read."""
    target = pg_target
    writer = await target.store()
    res = await writer.append(make_draft(0))
    assert res.record is not None
    attempts = 0
    held: list[asyncio.StreamWriter] = []

    async def blackhole(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        held.append(w)  # never answer the startup message

    server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = PostgresStore(
        target.url,
        replica_dsns=[f"postgresql://postgres@127.0.0.1:{port}/x"],
        connection_timeout=0.5,
    )
    await store.open()
    try:
        for _ in range(5):
            assert await store.get_audit(res.record.draft.event_id) == res.record
        assert attempts == 1
    finally:
        await store.close()
        for w in held:
            w.close()
        server.close()
