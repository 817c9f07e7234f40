"""Fixtures: every store test runs against a fresh SQLite file AND a fresh PostgreSQL database."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from proof_messenger.audit.chain import entry_bytes
from proof_messenger.audit.merkle import leaf_hash
from proof_messenger.store import Store
from proof_messenger.store._common import AUDIT_COLUMNS, audit_row_values
from proof_messenger.store.base import (
    ApprovalRecord,
    AuditDraft,
    AuditRecord,
    ReplayKey,
    WebhookSubscription,
)
from proof_messenger.store.postgres import PostgresStore
from proof_messenger.store.sqlite import SQLiteStore

PG_ADMIN_DSN = os.environ.get("PM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_000.0
#: The intent exp of test claims (any value: a claim collides on its digest).
EXP = int(T0) + 300


def rk(digest: bytes, exp: int = EXP) -> ReplayKey:
    """A replay claim for ``digest`` (as the relay builds it from an intent)."""
    return ReplayKey(exp, digest)


def make_draft(i: int, **overrides: Any) -> AuditDraft:
    """A fully populated draft (every column non-null unless overridden)."""
    values: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "time": T0 + i + 0.1234567,  # sub-microsecond part: must round-trip via microseconds
        "event_type": "proof.verified",
        "status": "accepted",
        "sub": "alice",
        "kid": "kid-1",
        "tx_type": "payment",
        "amount_minor": 1_250_000 + i,
        "currency": "EUR",
        "error_code": None,
        "proof_id": f"proof-{i}",
        "client_ip": "192.0.2.1",
        "user_agent": "pytest",
        "detail": "ok",
        "context_key_id": "mk-1",
        "context_ct": os.urandom(40),
    }
    values.update(overrides)
    return AuditDraft(**values)


def make_subscription(
    sub_id: str, events: tuple[str, ...], created_at: float = T0 - 100
) -> WebhookSubscription:
    """A live API-created webhook subscription (created before every ``make_draft`` time)."""
    return WebhookSubscription(
        id=sub_id,
        url=f"https://receiver.example/{sub_id}",
        events=events,
        secret_key_id="mk-1",
        secret_ct=b"\x00" * 40,
        source="api",
        created_at=created_at,
    )


def make_approval(expires_at: float = T0 + 300, **overrides: Any) -> ApprovalRecord:
    """A pending approval request with a fresh id and nonce."""
    values: dict[str, Any] = {
        "id": secrets.token_urlsafe(16),
        "sub": "alice",
        "aud": "localhost",
        "nonce": os.urandom(32),
        "intent_digest": os.urandom(32),
        "intent_key_id": "mk-1",
        "intent_ct": os.urandom(60),
        "page_token_hash": os.urandom(32),
        "created_at": T0,
        "expires_at": expires_at,
        "require_uv": True,
        "api_key_id": "k1",
    }
    values.update(overrides)
    return ApprovalRecord(**values)


@dataclass
class Target:
    """One database under test, plus raw SQL access for tampering (bypassing the Store)."""

    kind: str
    url: str
    make: Callable[[], Store]
    opened: list[Store] = field(default_factory=list)

    async def store(self, *, migrate: bool = True) -> Store:
        s = self.make()
        await s.open()
        self.opened.append(s)
        if migrate:
            await s.migrate()
        return s

    def sql(self, text: str) -> str:
        """Write SQL with $1..$n placeholders; SQLite gets ?NNN."""
        if self.kind == "sqlite":
            return text.replace("$", "?")
        return text

    async def execute(self, text: str, *args: Any) -> None:
        if self.kind == "sqlite":
            con = sqlite3.connect(self.url, timeout=30, isolation_level=None)
            try:
                con.execute(self.sql(text), args)
            finally:
                con.close()
        else:
            con = await asyncpg.connect(self.url)
            try:
                await con.execute(text, *args)
            finally:
                await con.close()

    async def insert_audit_row(self, record: AuditRecord) -> None:
        cols = ", ".join(AUDIT_COLUMNS)
        marks = ", ".join(f"${i + 1}" for i in range(len(AUDIT_COLUMNS)))
        await self.execute(
            f"INSERT INTO audit ({cols}) VALUES ({marks})", *audit_row_values(record)
        )

    async def fetch(self, text: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            con = sqlite3.connect(self.url, timeout=30, isolation_level=None)
            try:
                return [tuple(r) for r in con.execute(self.sql(text), args).fetchall()]
            finally:
                con.close()
        con = await asyncpg.connect(self.url)
        try:
            return [tuple(r) for r in await con.fetch(text, *args)]
        finally:
            await con.close()


@contextlib.contextmanager
def another_process_holds_the_write_lock(path: str) -> Iterator[None]:
    """Hold the SQLite store's cross-process write lock (``flock`` on ``<db>-writelock``,
    through a separate open file description) as a second relay worker would."""
    other = os.open(path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        yield
    finally:
        os.close(other)  # releases the lock


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A freshly created, uniquely named database, dropped afterwards."""
    name = f"pm_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        yield dsn
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            path = str(tmp_path / "db" / "relay.db")
            t = Target("sqlite", path, lambda: SQLiteStore(path))
        else:
            dsn = await stack.enter_async_context(pg_database())
            t = Target("postgres", dsn, lambda: PostgresStore(dsn, max_connections=5))
        try:
            yield t
        finally:
            for s in t.opened:
                await s.close()


@pytest.fixture
async def pg_target() -> AsyncIterator[Target]:
    async with pg_database() as dsn:
        t = Target("postgres", dsn, lambda: PostgresStore(dsn, max_connections=5))
        try:
            yield t
        finally:
            for s in t.opened:
                await s.close()


S = TypeVar("S", bound=Store)


@contextlib.asynccontextmanager
async def opened_store(store: S) -> AsyncIterator[S]:
    """``store`` opened and migrated, and closed afterwards."""
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An opened, migrated SQLite store (its file: ``sqlite_store.path``)."""
    async with opened_store(SQLiteStore(str(tmp_path / "relay.db"))) as s:
        yield s


@pytest.fixture
async def store(target: Target) -> Store:
    return await target.store()


async def leaf_hashes(store: Store) -> list[bytes]:
    """The Merkle leaf hash of every audit row, in order, computed from the rows themselves
    (the reference the stored tree must agree with)."""
    return [leaf_hash(entry_bytes(r.seq, r.draft)) async for r in store.iter_audit()]
