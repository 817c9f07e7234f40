"""The embedded SQLite backend (the default), safe for several relay processes on one file.

Threading model: the stdlib ``sqlite3`` driver on ONE dedicated writer thread that owns
the write connection, plus a small pool of reader threads with their own connections (WAL
lets readers run while a writer commits). A whole group-commit batch (claims, chain head,
audit rows, outbox rows, COMMIT) runs as a single function call on the writer thread: one
thread hop per *batch*. ``aiosqlite`` would hop to its thread and back for every statement
(3-4 per appended row), which is what limits throughput when the event loop is busy.

Every write is a ``BEGIN IMMEDIATE`` transaction: it takes SQLite's write lock up front
(waiting up to ``busy_timeout`` for another process), so the chain head read inside it is
the true head and two processes can never fork the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from proof_messenger.audit.chain import seal, time_to_micros

from ._common import (
    AUDIT_COLUMNS,
    AUDIT_SELECT,
    ITER_CHUNK,
    audit_record_from_row,
    audit_row_values,
    audit_where,
    check_limit,
    decode_cursor,
    encode_cursor,
    load_migrations,
)
from .base import (
    ApiKeyRecord,
    AppendResult,
    AuditDraft,
    AuditFilter,
    AuditPage,
    AuditRecord,
    ChainHead,
    DuplicateKey,
    KeyRecord,
    OutboxEvent,
    StoreError,
    StoreUnavailable,
)
from .groupcommit import GroupCommitter, PendingAppend

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SELECT_KEY = (
    "SELECT kid, sub, alg, public_key, label, status, created_at, revoked_at, revoke_reason, "
    "sign_count, transports, attestation_format FROM keys"
)
_SELECT_API_KEY = "SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_keys"
_INSERT_AUDIT = (
    "INSERT INTO audit (seq, time_us, event_id, event_type, status, sub, kid, tx_type, "
    "amount_minor, currency, error_code, proof_id, client_ip, user_agent, detail, "
    "context_key_id, context_ct, prev_hash, entry_hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
assert _INSERT_AUDIT.count("?") == len(AUDIT_COLUMNS)
_INSERT_KEY = (
    "INSERT INTO keys (kid, sub, alg, public_key, label, status, created_at, revoked_at, "
    "revoke_reason, sign_count, transports, attestation_format) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_API_KEY = (
    "INSERT INTO api_keys (id, name, secret_hash, scopes, created_at, revoked_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (event_id, event_type, payload, created_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _key_from_row(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        kid=row[0],
        sub=row[1],
        alg=row[2],
        public_key=bytes(row[3]),
        label=row[4],
        status=row[5],
        created_at=row[6],
        revoked_at=row[7],
        revoke_reason=row[8],
        sign_count=row[9],
        transports=tuple(json.loads(row[10])),
        attestation_format=row[11],
    )


def _api_key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[0],
        name=row[1],
        secret_hash=bytes(row[2]),
        scopes=tuple(json.loads(row[3])),
        created_at=row[4],
        revoked_at=row[5],
    )


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would COMMIT our transaction)."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    return statements


class SQLiteStore:
    """``Store`` on one SQLite file (``":memory:"`` works for a single process)."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 10.0,
        read_threads: int = 2,
        max_batch: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._memory = path == ":memory:"
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._read_threads = max(1, read_threads)
        self._write_con: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._read_cons: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._local = threading.local()
        self._committer = GroupCommitter(self._commit_batch, max_batch=max_batch)

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        if not self._memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create directory for {self.path}: {exc}") from exc
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="pm-sqlite-writer")
        self._readers = (
            self._writer
            if self._memory
            else ThreadPoolExecutor(self._read_threads, thread_name_prefix="pm-sqlite-reader")
        )
        try:
            await self._on_writer(lambda con: None)
        except StoreUnavailable:
            await self.close()
            raise
        self._committer.start()

    async def close(self) -> None:
        await self._committer.stop()
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        if writer is not None:
            await asyncio.to_thread(writer.shutdown)
        if readers is not None and readers is not writer:
            await asyncio.to_thread(readers.shutdown)
        with self._read_lock:
            cons, self._read_cons = self._read_cons, []
            self._local = threading.local()  # a reopened store must not reuse closed ones
        if self._write_con is not None:
            cons.append(self._write_con)
            self._write_con = None
        for con in cons:
            con.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # used by one thread at a time; closed from close()
        )
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            if not self._memory:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"{self.path}: cannot enable WAL (got {mode})")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            con.close()
            raise
        return con

    # --- thread plumbing -----------------------------------------------------------------------

    def _writer_con(self) -> sqlite3.Connection:
        if self._write_con is None:
            self._write_con = self._connect()
        return self._write_con

    def _reader_con(self) -> sqlite3.Connection:
        if self._memory:
            return self._writer_con()
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = self._connect()
            self._local.con = con
            with self._read_lock:
                self._read_cons.append(con)
        return con

    def _write_txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        con = self._writer_con()
        locked = self._take_write_turn()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                result = fn(con)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    # If even ROLLBACK fails the next BEGIN will say so; nothing is kept.
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                raise
        finally:
            if locked and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return result

    def _take_write_turn(self) -> bool:
        """Queue for the write lock on ``<db>-writelock`` before asking SQLite for it.

        When several relay processes share the file, a writer that finds SQLite's lock
        taken sleeps in SQLite's busy handler for 1, 2, 5, 10... ms, far longer than a
        commit lasts, so one process starves the others (measured: two workers slower
        than one, p50 36 ms). Waiting here polls every 50-500 µs instead. It is only a
        queue: ``BEGIN IMMEDIATE`` still takes SQLite's own lock (with ``busy_timeout``),
        so processes that do not use this file (older relays, the sqlite3 shell) stay
        safe. After ``busy_timeout`` we stop waiting and let SQLite decide.
        """
        if self._memory:
            return False
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(f"{self.path}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return False  # e.g. a read-only directory: SQLite's locking alone still works
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.00005
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.0005)

    async def _run(self, executor: ThreadPoolExecutor | None, fn: Callable[[], T]) -> T:
        if executor is None:
            raise StoreUnavailable("store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"SQLite constraint violated: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database {self.path!r}: {exc}") from exc
        except RuntimeError as exc:  # executor shut down under us
            raise StoreUnavailable(f"store closed: {exc}") from exc

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, lambda: fn(self._writer_con()))

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, functools.partial(self._write_txn, fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._readers, lambda: fn(self._reader_con()))

    async def _lookup(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A primary-key read, run right here on the event loop's thread.

        Such a read takes a few microseconds from the page cache, while a hop to a reader
        thread and back costs far more (executor queue, GIL hand-over, loop wake-up): it
        was the largest single cost of /verify, which does three of them. WAL readers never
        wait for the writer, so this does not block the loop behind a commit. Scans
        (lists, iteration) still go to the reader threads.
        """
        if self._memory:
            return await self._read(fn)
        if self._readers is None:
            raise StoreUnavailable("store is not open")
        try:
            return fn(self._reader_con())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database {self.path!r}: {exc}") from exc

    # --- migrations ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        migrations = load_migrations("sqlite")
        now = self._clock()

        def apply(con: sqlite3.Connection) -> list[str]:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {r[0] for r in con.execute("SELECT name FROM schema_migrations")}
            applied: list[str] = []
            for migration in migrations:
                if migration.name in done:
                    continue
                for statement in _split_statements(migration.sql):
                    con.execute(statement)
                con.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, now),
                )
                applied.append(migration.name)
            return applied

        return await self._write(apply)

    async def is_ready(self) -> bool:
        wanted = {m.name for m in load_migrations("sqlite")}

        def check(con: sqlite3.Connection) -> bool:
            exists = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
            if exists is None:
                return False
            done = {r[0] for r in con.execute("SELECT name FROM schema_migrations")}
            return wanted <= done

        try:
            return await self._read(check)
        except StoreError:
            return False

    # --- key registry --------------------------------------------------------------------------

    async def insert_key(self, record: KeyRecord) -> None:
        values = (
            record.kid,
            record.sub,
            record.alg,
            record.public_key,
            record.label,
            record.status,
            record.created_at,
            record.revoked_at,
            record.revoke_reason,
            record.sign_count,
            json.dumps(list(record.transports)),
            record.attestation_format,
        )

        def insert(con: sqlite3.Connection) -> None:
            con.execute(_INSERT_KEY, values)

        try:
            await self._write(insert)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise DuplicateKey(f"key {record.kid!r} is already registered") from exc

    async def get_key(self, kid: str) -> KeyRecord | None:
        row = await self._lookup(
            lambda con: con.execute(_SELECT_KEY + " WHERE kid = ?", (kid,)).fetchone()
        )
        return None if row is None else _key_from_row(row)

    async def list_keys(self, sub: str | None = None) -> list[KeyRecord]:
        def query(con: sqlite3.Connection) -> list[Any]:
            if sub is None:
                return con.execute(_SELECT_KEY + " ORDER BY kid").fetchall()
            return con.execute(_SELECT_KEY + " WHERE sub = ? ORDER BY kid", (sub,)).fetchall()

        return [_key_from_row(r) for r in await self._read(query)]

    async def revoke_key(self, kid: str, reason: str, at: float) -> KeyRecord | None:
        """Revoke; an already revoked key keeps its first revocation (time and reason)."""

        def revoke(con: sqlite3.Connection) -> Any:
            con.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = ?, revoke_reason = ? "
                "WHERE kid = ? AND status = 'active'",
                (at, reason, kid),
            )
            return con.execute(_SELECT_KEY + " WHERE kid = ?", (kid,)).fetchone()

        row = await self._write(revoke)
        return None if row is None else _key_from_row(row)

    async def advance_sign_count(self, kid: str, seen: int, new: int) -> bool:
        def cas(con: sqlite3.Connection) -> bool:
            cur = con.execute(
                "UPDATE keys SET sign_count = ? WHERE kid = ? AND sign_count = ?",
                (new, kid, seen),
            )
            return cur.rowcount == 1

        return await self._write(cas)

    # --- API keys ------------------------------------------------------------------------------

    async def insert_api_key(self, record: ApiKeyRecord) -> None:
        values = (
            record.id,
            record.name,
            record.secret_hash,
            json.dumps(list(record.scopes)),
            record.created_at,
            record.revoked_at,
        )

        def insert(con: sqlite3.Connection) -> None:
            con.execute(_INSERT_API_KEY, values)

        try:
            await self._write(insert)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise DuplicateKey(f"API key {record.id!r} already exists") from exc

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._lookup(
            lambda con: con.execute(_SELECT_API_KEY + " WHERE id = ?", (key_id,)).fetchone()
        )
        return None if row is None else _api_key_from_row(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(
            lambda con: con.execute(_SELECT_API_KEY + " ORDER BY created_at, id").fetchall()
        )
        return [_api_key_from_row(r) for r in rows]

    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        """True if this call revoked it; False if unknown or already revoked."""

        def revoke(con: sqlite3.Connection) -> bool:
            cur = con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
            return cur.rowcount == 1

        return await self._write(revoke)

    # --- replay + audit ------------------------------------------------------------------------

    async def is_claimed(self, digest: bytes) -> bool:
        row = await self._lookup(
            lambda con: con.execute("SELECT 1 FROM replay WHERE digest = ?", (digest,)).fetchone()
        )
        return row is not None

    async def append(
        self,
        draft: AuditDraft,
        *,
        claim_digest: bytes | None = None,
        outbox: Sequence[OutboxEvent] = (),
    ) -> AppendResult:
        return await self._committer.submit(draft, claim_digest, outbox)

    async def _commit_batch(self, batch: list[PendingAppend]) -> list[AppendResult]:
        return await self._write(functools.partial(_commit_batch_sync, batch=batch))

    async def chain_head(self) -> ChainHead:
        row = await self._read(
            lambda con: con.execute(
                "SELECT seq, entry_hash FROM chain_head WHERE id = 1"
            ).fetchone()
        )
        if row is None:
            raise StoreUnavailable("chain head missing: database not migrated")
        return ChainHead(seq=int(row[0]), entry_hash=bytes(row[1]))

    async def get_audit(self, event_id: str) -> AuditRecord | None:
        row = await self._lookup(
            lambda con: con.execute(AUDIT_SELECT + " WHERE event_id = ?", (event_id,)).fetchone()
        )
        return None if row is None else audit_record_from_row(row)

    async def list_audit(
        self, flt: AuditFilter, limit: int, cursor: str | None = None
    ) -> AuditPage:
        check_limit(limit)
        before = decode_cursor(cursor) if cursor is not None else None
        where, params = audit_where(flt, before, lambda n: "?")
        # Only "?" placeholders are interpolated; every value is a bound parameter.
        sql = AUDIT_SELECT + where + " ORDER BY seq DESC LIMIT ?"
        rows = await self._read(lambda con: con.execute(sql, (*params, limit + 1)).fetchall())
        records = [audit_record_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(
            records=records, next_cursor=encode_cursor(records[-1].seq) if more else None
        )

    async def iter_audit(self, from_seq: int = 1) -> AsyncIterator[AuditRecord]:
        sql = AUDIT_SELECT + " WHERE seq >= ? ORDER BY seq LIMIT ?"
        next_seq = from_seq
        while True:
            rows = await self._read(functools.partial(_fetch_chunk, sql=sql, start=next_seq))
            for row in rows:
                record = audit_record_from_row(row)
                next_seq = record.seq + 1
                yield record
            if len(rows) < ITER_CHUNK:
                return

    async def audit_count(self) -> int:
        """Rows in the chain, from the chain head (O(1); ``verify_chain`` checks it)."""
        return (await self.chain_head()).seq


def _commit_batch_sync(con: sqlite3.Connection, batch: list[PendingAppend]) -> list[AppendResult]:
    """One group-commit batch inside the caller's BEGIN IMMEDIATE transaction."""
    head = con.execute("SELECT seq, entry_hash FROM chain_head WHERE id = 1").fetchone()
    if head is None:
        raise StoreUnavailable("chain head missing: database not migrated")
    seq, prev_hash = int(head[0]), bytes(head[1])
    results: list[AppendResult] = []
    for item in batch:
        draft = item.draft
        if item.claim_digest is not None:
            cur = con.execute(
                "INSERT INTO replay (digest, accepted_at, event_id) VALUES (?, ?, ?) "
                "ON CONFLICT (digest) DO NOTHING",
                (item.claim_digest, time_to_micros(draft.time), draft.event_id),
            )
            if cur.rowcount != 1:
                results.append(AppendResult(record=None, replayed=True))
                continue
        record = seal(seq + 1, prev_hash, draft)
        con.execute(_INSERT_AUDIT, audit_row_values(record))
        for event in item.outbox:
            con.execute(
                _INSERT_OUTBOX,
                (draft.event_id, event.event_type, event.payload, draft.time, draft.time),
            )
        seq, prev_hash = record.seq, record.entry_hash
        results.append(AppendResult(record=record))
    con.execute("UPDATE chain_head SET seq = ?, entry_hash = ? WHERE id = 1", (seq, prev_hash))
    return results


def _fetch_chunk(con: sqlite3.Connection, sql: str, start: int) -> list[Any]:
    return con.execute(sql, (start, ITER_CHUNK)).fetchall()
