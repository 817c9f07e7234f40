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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from proof_messenger.audit.chain import seal_entry, time_to_micros
from proof_messenger.audit.merkle import CompactTree, leaf_hash

from . import _merkle
from ._common import (
    APPROVAL_COLUMNS,
    APPROVAL_SELECT,
    AUDIT_COLUMNS,
    AUDIT_SELECT,
    DELIVERY_COLUMNS,
    DELIVERY_FROM,
    ITER_CHUNK,
    LIVE_SUBSCRIPTION_EVENTS,
    MAX_LOG_ENTRIES,
    MAX_WEBHOOK_ERROR,
    REGISTRATION_SELECT,
    SELECT_API_KEY,
    SELECT_CHECKPOINT,
    SELECT_KEY,
    SELECT_LOG_KEY,
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTION_SELECT,
    TASK_COLUMNS,
    TASK_FROM,
    api_key_from_row,
    approval_from_row,
    approval_values,
    audit_record_from_row,
    audit_row_values,
    audit_where,
    check_limit,
    checkpoint_from_row,
    decode_cursor,
    decode_delivery_cursor,
    delivery_from_row,
    encode_cursor,
    encode_delivery_cursor,
    key_from_row,
    load_migrations,
    log_key_from_row,
    matching_subscriptions,
    registration_from_row,
    subscription_from_row,
    subscription_values,
    task_from_row,
    transition_args,
    transition_sql,
    webhook_delivery_id,
)
from ._generations import APPROVALS, REGISTRY, Generations, NonceFilter, RecordCache
from .base import (
    ApiKeyRecord,
    AppendEntry,
    AppendResult,
    ApprovalRecord,
    ApprovalTransition,
    AuditDraft,
    AuditFilter,
    AuditPage,
    AuditRecord,
    ChainHead,
    CheckpointRecord,
    CommitObserver,
    DeliveryPage,
    DeliveryTask,
    DuplicateKey,
    KeyRecord,
    LogEntry,
    LogKeyRecord,
    OutboxEvent,
    PolicyApproval,
    RegistrationChallenge,
    ReplayKey,
    StoreError,
    StoreUnavailable,
    WebhookDelivery,
    WebhookSubscription,
)
from .groupcommit import GroupCommitter, PendingAppend

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["SQLiteStore"]

T = TypeVar("T")
R = TypeVar("R")

#: WAL frames after which a commit also checkpoints the WAL into the database file
#: (SQLite's default: 1,000). That checkpoint runs inside the COMMIT that crosses the
#: threshold, on the event loop's thread and under the cross-process write lock, so its
#: length adds to every request waiting behind it: it was the steady-load p99. At 250
#: frames each checkpoint copies about a quarter as much. In eight interleaved pairs
#: (docs/benchmarks.md, seventh round) p99 at a steady 1,500/s fell by a median 25 %
#: (7.7-9.9 ms instead of 9.4-13.6 ms); the cost is more bytes written per commit (+8 to
#: +24 %: fewer rewrites of one page are merged) and a median of -2.5 % peak /verify and
#: -5 % /verify/batch throughput, both within the machine's drift.
WAL_AUTOCHECKPOINT = 250

#: Where the writer connection keeps SQLite's temporary files, above all the statement
#: journal: a multi-row INSERT inside a transaction may fail halfway (a constraint), so
#: SQLite saves the original of every page it changes, and past 64 KiB it spills them to a
#: new file in /var/tmp (or TMPDIR) that it deletes when the statement ends. A group
#: commit's audit INSERT touches one per-subject index page per row, so about one such
#: file was created, written page by page and deleted per commit, and copies of audit
#: pages went to a directory outside the data directory. In memory they stay private and
#: need no writable temp directory; per 32-row commit 38 % fewer write calls and bytes,
#: and about 9 % less CPU per row on a new database (docs/benchmarks.md, ninth round).
#: One statement's journal is bounded by its rows (a group commit takes at most
#: ``max_batch`` rows, or one call's batch: about 4 KiB per page changed); migrations,
#: whose sorts are unbounded, run with on-disk temp files (see ``migrate``).
WRITER_TEMP_STORE = "MEMORY"

_INSERT_AUDIT = (
    "INSERT INTO audit (seq, time_us, event_id, event_type, status, sub, kid, tx_type, "
    "amount_minor, currency, error_code, proof_id, client_ip, user_agent, detail, "
    "context_key_id, context_ct, prev_hash, entry_hash, leaf_hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
assert _INSERT_AUDIT.count("?") == len(AUDIT_COLUMNS) + 1  # + leaf_hash
_INSERT_KEY = (
    "INSERT INTO keys (kid, sub, alg, public_key, label, status, created_at, revoked_at, "
    "revoke_reason, sign_count, transports, attestation_format) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_API_KEY = (
    "INSERT INTO api_keys (id, name, secret_hash, scopes, created_at, revoked_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_APPROVAL = (
    "INSERT INTO approvals (id, sub, aud, nonce, intent_digest, intent_key_id, intent_ct, "
    "page_token_hash, created_at, expires_at, status, require_uv, api_key_id, decided_at, "
    "proof_id, audit_event_id, user_roles) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
assert _INSERT_APPROVAL.count("?") == len(APPROVAL_COLUMNS)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (event_id, event_type, payload, created_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?)"
)


# --- Merkle log ----------------------------------------------------------------------


# --- end Merkle log ---------------------------------------------------------------------------


def _json_strings(text: str) -> tuple[str, ...]:
    """SQLite keeps string lists (scopes, transports) as JSON text."""
    if text == "[]":  # a device key's transports: every key read, skip the JSON parser
        return ()
    return tuple(json.loads(text))


_SELECT_KEY_BY_KID = SELECT_KEY + " WHERE kid = ?"
_SELECT_API_KEY_BY_ID = SELECT_API_KEY + " WHERE id = ?"


def _key_from_row(row: Any) -> KeyRecord:
    return key_from_row(row, _json_strings)


def _api_key_from_row(row: Any) -> ApiKeyRecord:
    return api_key_from_row(row, _json_strings)


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
        self._wait_lock_fd: int | None = None
        self._read_cons: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._local = threading.local()
        #: True while the group commit holds the cross-process write lock taken before
        #: draining its queue (taken on the writer thread; the batch's transaction, on
        #: either thread, releases it). Read and written under ``_write_mutex``.
        self._turn_held = False
        #: Held by whichever thread uses the write connection: the writer thread, or the
        #: event loop's thread during an inline group commit (``_commit_inline``).
        self._write_mutex = threading.RLock()
        #: Group commits may run on the event loop's thread (file databases with flock).
        self._inline_commits = not self._memory and fcntl is not None
        #: Read caches of keys, API keys and approval nonces, checked against change
        #: counters shared by every process on this file (see _generations.py); None for
        #: ":memory:" (one process, reads already go through the writer's connection).
        self._generations: Generations | None = None
        self._key_cache: RecordCache[str, KeyRecord] | None = None
        self._api_key_cache: RecordCache[str, ApiKeyRecord] | None = None
        self._nonce_filter: NonceFilter | None = None
        #: Whether ``replay_v1`` (claims from before migration 0006) holds any row; None
        #: until first needed. Nothing writes that table after 0006 created it, so once
        #: seen empty it stays empty, and claims then skip looking digests up in it.
        self._legacy_claims: bool | None = None
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
            _check_writable(Path(self.path))
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
        if not self._memory:
            try:
                self._generations = Generations(self.path + "-gen")
            except OSError as exc:
                await self.close()
                raise StoreUnavailable(f"cannot map {self.path}-gen: {exc}") from exc
            self._key_cache = RecordCache(self._generations, REGISTRY)
            self._api_key_cache = RecordCache(self._generations, REGISTRY)
            self._nonce_filter = NonceFilter(self._generations, self._approval_nonces_after)
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
        for fd in (self._lock_fd, self._wait_lock_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._wait_lock_fd = None
        if self._generations is not None:
            self._generations.close()
            self._generations = None
        self._key_cache = self._api_key_cache = self._nonce_filter = None

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
            if not self._memory:
                self._write_con.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
            self._write_con.execute(f"PRAGMA temp_store = {WRITER_TEMP_STORE}")
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

    def _write_txn(self, fn: Callable[[sqlite3.Connection], T], bump: int | None = None) -> T:
        """One write transaction. ``bump`` names a change counter (``_generations``) to
        advance after COMMIT, still under the write lock, when ``fn`` changed what the
        read caches hold; ``fn`` may return a falsy result to say nothing changed."""
        with self._write_mutex, self._process_lock():
            con = self._writer_con()
            con.execute("BEGIN IMMEDIATE")
            result = _finish_txn(con, fn)
            if bump is not None and self._generations is not None:
                self._generations.bump(bump)
        return result

    @contextlib.contextmanager
    def _process_lock(self) -> Iterator[None]:
        """Queue writers of other processes in the kernel (``flock`` on a side file).

        SQLite's own busy handler polls with sleeps of up to 100 ms, so with two relay
        workers a waiting writer often slept long after the lock was free (p99 append
        latency ~80 ms in a 2-process test). A blocking ``flock`` wakes it at once.
        ``BEGIN IMMEDIATE`` still guards against writers that do not take this lock.
        """
        if self._memory or fcntl is None:
            yield
            return
        if self._turn_held:  # the group commit's turn: this thread already holds it
            yield
            return
        fd = self._lock_exclusive()
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_exclusive(self) -> int:
        """Block until this process holds the ``<db>-writelock`` flock; return its fd.

        While it waits it holds a shared flock on ``<db>-writewait``, which makes the
        non-blocking inline commits of other processes (``_commit_inline``) yield to it.
        """
        try:
            lock_fd, wait_fd = self._lock_files()
            fcntl.flock(wait_fd, fcntl.LOCK_SH)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            finally:
                fcntl.flock(wait_fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreUnavailable(f"cannot lock {self.path}-writelock: {exc}") from exc
        return lock_fd

    def _lock_files(self) -> tuple[int, int]:
        """The fds of ``<db>-writelock`` and ``<db>-writewait``, opened on first use."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self.path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        if self._wait_lock_fd is None:
            self._wait_lock_fd = os.open(self.path + "-writewait", os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd, self._wait_lock_fd

    async def _run(self, executor: ThreadPoolExecutor | None, fn: Callable[[], T]) -> T:
        if executor is None:
            raise StoreUnavailable("store is not open")
        try:
            with self._store_errors():
                return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except RuntimeError as exc:  # executor shut down under us
            raise StoreUnavailable(f"store closed: {exc}") from exc

    @contextlib.contextmanager
    def _store_errors(self) -> Iterator[None]:
        """SQLite's exceptions as the store's: a constraint is a StoreError, anything else
        means the database is unavailable."""
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"SQLite constraint violated: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database {self.path!r}: {exc}") from exc

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._write_mutex:
                return fn(self._writer_con())

        return await self._run(self._writer, call)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], bump: int | None = None) -> T:
        return await self._run(self._writer, functools.partial(self._write_txn, fn, bump))

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
        return self._inline(fn)

    def _inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on this thread's reader connection, errors as ``StoreUnavailable``."""
        try:
            return fn(self._reader_con())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database {self.path!r}: {exc}") from exc

    async def _cached_row(
        self,
        cache: RecordCache[str, R] | None,
        key: str,
        sql: str,
        from_row: Callable[[Any], R],
    ) -> R | None:
        """A primary-key read through a read cache (``_generations``): a hit, or the row
        read inline and kept under the counter value seen before the read."""
        generation = 0
        if cache is not None:
            hit, generation = cache.get(key)
            if hit is not None:
                return hit
        row = await self._lookup(lambda con: con.execute(sql, (key,)).fetchone())
        if row is None:
            return None
        record = from_row(row)
        if cache is not None:
            cache.put(key, record, generation)
        return record

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
                if migration.name == "0002_merkle":
                    _rebuild_merkle_sync(con)
                con.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, now),
                )
                applied.append(migration.name)
            return applied

        def apply_with_disk_temp(con: sqlite3.Connection) -> list[str]:
            # A migration may sort a whole table (0007 copies every Merkle node in key
            # order); with temp_store = MEMORY SQLite's sorter never spills, so that sort
            # would be held in memory entire. temp_store is changed outside a transaction.
            con.execute("PRAGMA temp_store = FILE")
            try:
                return self._write_txn(apply)
            finally:
                con.execute(f"PRAGMA temp_store = {WRITER_TEMP_STORE}")

        applied = await self._on_writer(apply_with_disk_temp)
        if applied:
            self._legacy_claims = None  # 0006 may just have moved claims to replay_v1
        return applied

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
        return await self._cached_row(self._key_cache, kid, _SELECT_KEY_BY_KID, _key_from_row)

    async def get_keys(self, kids: Sequence[str]) -> dict[str, KeyRecord]:
        """``get_key`` for many kids: cache hits, then ONE read for the misses."""
        cache, generation = self._key_cache, 0
        found: dict[str, KeyRecord] = {}
        wanted: list[str] = []
        for kid in dict.fromkeys(kids):
            if cache is not None:
                hit, generation = cache.get(kid)
                if hit is not None:
                    found[kid] = hit
                    continue
            wanted.append(kid)
        if not wanted:
            return found
        sql = SELECT_KEY + " WHERE kid IN (" + ",".join("?" * len(wanted)) + ")"
        rows = await self._lookup(lambda con: con.execute(sql, wanted).fetchall())
        for row in rows:
            record = _key_from_row(row)
            found[record.kid] = record
            if cache is not None:
                cache.put(record.kid, record, generation)
        return found

    async def list_keys(self, sub: str | None = None) -> list[KeyRecord]:
        def query(con: sqlite3.Connection) -> list[Any]:
            if sub is None:
                return con.execute(SELECT_KEY + " ORDER BY created_at, kid").fetchall()
            return con.execute(
                SELECT_KEY + " WHERE sub = ? ORDER BY created_at, kid", (sub,)
            ).fetchall()

        return [_key_from_row(r) for r in await self._read(query)]

    async def revoke_key(self, kid: str, reason: str, at: float) -> KeyRecord | None:
        """Revoke; an already revoked key keeps its first revocation (time and reason)."""

        def revoke(con: sqlite3.Connection) -> Any:
            con.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = ?, revoke_reason = ? "
                "WHERE kid = ? AND status = 'active'",
                (at, reason, kid),
            )
            return con.execute(SELECT_KEY + " WHERE kid = ?", (kid,)).fetchone()

        row = await self._write(revoke, bump=REGISTRY)
        return None if row is None else _key_from_row(row)

    async def advance_sign_count(self, kid: str, seen: int, new: int) -> bool:
        def cas(con: sqlite3.Connection) -> bool:
            cur = con.execute(
                "UPDATE keys SET sign_count = ? WHERE kid = ? AND sign_count = ?",
                (new, kid, seen),
            )
            return cur.rowcount == 1

        return await self._write(cas, bump=REGISTRY)

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
        return await self._cached_row(
            self._api_key_cache, key_id, _SELECT_API_KEY_BY_ID, _api_key_from_row
        )

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(
            lambda con: con.execute(SELECT_API_KEY + " ORDER BY created_at, id").fetchall()
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

        return await self._write(revoke, bump=REGISTRY)

    # --- policy engine ----------------------------------------------------------------

    async def add_policy_approval(self, approval: PolicyApproval) -> bool:
        values = _policy_approval_values(approval)

        def insert(con: sqlite3.Connection) -> bool:
            return con.execute(_INSERT_POLICY_APPROVAL, values).rowcount == 1

        return await self._write(insert)

    async def list_policy_approvals(self, tx_key: str) -> list[PolicyApproval]:
        rows = await self._read(
            lambda con: con.execute(
                "SELECT tx_key, sub, proof_id, rule, roles, at FROM policy_approvals "
                "WHERE tx_key = ? ORDER BY at, sub",
                (tx_key,),
            ).fetchall()
        )
        return [
            PolicyApproval(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), float(r[5]))
            for r in rows
        ]

    # --- end policy engine ---------------------------------------------------------------------

    # --- replay + audit ------------------------------------------------------------------------

    async def is_claimed(self, key: ReplayKey) -> bool:
        def query(con: sqlite3.Connection) -> Any:
            if self._has_legacy_claims(con):
                return con.execute(_IS_CLAIMED_OR_LEGACY, (*key, key.digest)).fetchone()
            return con.execute(_IS_CLAIMED, key).fetchone()

        return await self._lookup(query) is not None

    def _has_legacy_claims(self, con: sqlite3.Connection) -> bool:
        """Whether ``replay_v1`` holds claims from before migration 0006 (see
        ``_legacy_claims``); read once per store, on the first claim after migrating."""
        if self._legacy_claims is None:
            row = con.execute(_ANY_LEGACY).fetchone()
            self._legacy_claims = bool(row[0])
        return self._legacy_claims

    async def prune_replay(self, before_exp: int, legacy_before: float, limit: int) -> int:
        """Delete up to ``limit`` stale claims (see ``Store``).

        Each write transaction goes through ``_write`` like any other write (writer thread, the
        cross-process ``flock``, ``BEGIN IMMEDIATE``), so it queues with the group commit
        instead of overtaking it, and holds the lock for one key-range delete of at most
        ``limit`` rows. ``replay_v1`` has no index on ``accepted_at``: its candidates are
        found by a read on a reader thread first (WAL: no lock held while scanning) and
        deleted by primary key, the cutoff re-checked, inside the write transaction. Once
        ``replay_v1`` is seen empty after a commit, ``_legacy_claims`` becomes False and
        claims stop looking digests up there (nothing writes that table any more).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        legacy_us = time_to_micros(legacy_before)

        def prune_claims(con: sqlite3.Connection) -> int:
            return con.execute(_PRUNE_CLAIMS, (before_exp, limit)).rowcount

        deleted = await self._write(prune_claims)
        if deleted >= limit or self._legacy_claims is False:
            return deleted
        budget = limit - deleted

        def find_legacy(con: sqlite3.Connection) -> tuple[list[bytes], bool]:
            found = [bytes(r[0]) for r in con.execute(_LEGACY_CANDIDATES, (legacy_us, budget))]
            return found, bool(found) or bool(con.execute(_ANY_LEGACY).fetchone()[0])

        candidates, any_legacy = await self._read(find_legacy)
        if not candidates:
            if not any_legacy:  # seen empty in committed state: empty for good
                self._legacy_claims = False
            return deleted

        def prune_legacy(con: sqlite3.Connection) -> tuple[int, bool]:
            n = 0
            for digest in candidates:
                n += con.execute(_PRUNE_LEGACY_ONE, (digest, legacy_us)).rowcount
            emptied = len(candidates) < budget and not con.execute(_ANY_LEGACY).fetchone()[0]
            return n, bool(emptied)

        legacy_deleted, emptied = await self._write(prune_legacy)
        if emptied:  # committed: replay_v1 is empty for good
            self._legacy_claims = False
        return deleted + legacy_deleted

    async def append(
        self,
        draft: AuditDraft,
        *,
        claim: ReplayKey | None = None,
        outbox: Sequence[OutboxEvent] = (),
        approval: ApprovalTransition | None = None,
        policy_approval: PolicyApproval | None = None,  # policy engine
    ) -> AppendResult:
        return await self._committer.submit(draft, claim, outbox, approval, policy_approval)

    async def append_many(self, entries: Sequence[AppendEntry]) -> list[AppendResult]:
        return await self._committer.submit_many(entries)

    def observe_commits(self, observer: CommitObserver | None) -> None:
        self._committer.observer = observer

    async def _commit_batch(self, take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        """Commit on the event loop's thread when nobody else is writing or waiting to;
        else let the writer thread wait for the cross-process lock, then commit on the
        event loop's thread all the same (``_commit_after_wait``).

        On the writer thread every SQLite call of a batch releases and retakes the GIL, and
        behind a busy event loop each retake waits: with two busy workers a 2-4 row commit
        took 1-3 ms on average (0.3-0.4 ms to reach the thread, 0.4-0.9 ms of SQL worth a
        third of that in CPU, 0.3-0.5 ms back), p99 2-6 ms each (docs/benchmarks.md).
        Inline, the loop is blocked only for the commit's own work (CPU plus one
        ``fdatasync``, about 0.1 ms here). A process waiting for the lock announces itself
        on ``<db>-writewait`` (see ``_lock_exclusive``) and an inline attempt then yields
        to it: a non-blocking attempt could otherwise overtake a blocked waiter again and
        again on a busy machine.
        """
        if self._inline_commits and self._writer is not None:
            results = self._commit_inline(take)
            if results is not None:
                return results
            return await self._commit_after_wait(take)
        return await self._run(self._writer, functools.partial(self._commit_turn, take))

    async def _commit_after_wait(
        self, take: Callable[[], list[PendingAppend]]
    ) -> list[AppendResult]:
        """Someone else writes: wait for the write lock on the writer thread, then commit
        on this thread.

        The writer thread only waits (blocked in ``flock``, without the GIL) and returns
        holding the group commit's write turn; the batch is then taken and committed on
        the event loop's thread, as an uncontended inline commit is. Committing on the
        writer thread instead holds the lock the other workers wait for while each of the
        batch's SQLite calls queues for the GIL behind this busy loop (up to the 5 ms
        switch interval each): under load the lock's hold time, not the SQL, set the
        pace. If the write mutex or SQLite's own lock is busy after all (another write
        of this process on the writer thread, a writer without the flock), the batch
        goes to the writer thread, which commits under the held turn and ends it.
        """
        writer = self._writer
        assert writer is not None
        try:
            wait = asyncio.get_running_loop().run_in_executor(writer, self._acquire_turn)
        except RuntimeError as exc:  # executor shut down under us
            raise StoreUnavailable(f"store closed: {exc}") from exc
        try:
            with self._store_errors():
                await asyncio.shield(wait)
        except asyncio.CancelledError:
            # Stopped while waiting: the turn, once taken, must not stay held.
            wait.add_done_callback(lambda _: self._end_turn_later(writer))
            raise
        try:
            results = self._commit_held_inline(take)
        except BaseException:
            self._end_turn_locked()
            raise
        if results is not None:
            return results
        return await self._run(writer, functools.partial(self._commit_turn, take))

    def _acquire_turn(self) -> None:
        """On the writer thread: block until this process holds the write lock, and keep
        it as the group commit's turn (``_commit_held_inline`` or ``_commit_turn`` ends
        it)."""
        with self._write_mutex:
            if not self._turn_held:
                self._lock_exclusive()
                self._turn_held = True

    def _end_turn_locked(self) -> None:
        with self._write_mutex:
            self._end_turn()

    def _end_turn_later(self, writer: ThreadPoolExecutor) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: close() releases the lock
            writer.submit(self._end_turn_locked)

    def _commit_held_inline(
        self, take: Callable[[], list[PendingAppend]]
    ) -> list[AppendResult] | None:
        """The batch, committed on this thread under the turn ``_acquire_turn`` took, which
        it then ends; None (the turn still held, nothing taken) when the write mutex or
        SQLite's own lock is busy."""
        if not self._write_mutex.acquire(blocking=False):
            return None
        try:
            with self._store_errors():
                results = self._commit_inline_locked(take)
            if results is not None:
                self._end_turn()
            return results
        finally:
            self._write_mutex.release()

    def _commit_inline(self, take: Callable[[], list[PendingAppend]]) -> list[AppendResult] | None:
        """One group commit on this (the event loop's) thread, or None, having taken and
        written nothing, when someone else is writing or waiting to write: this store's
        writer thread, a process holding or waiting for the write lock, or a writer that
        does not take that lock (SQLite answers BUSY at once: the busy timeout is 0 for
        this BEGIN only)."""
        if not self._write_mutex.acquire(blocking=False):
            return None
        try:
            try:
                lock_fd, wait_fd = self._lock_files()
                fcntl.flock(wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails if anyone waits
                fcntl.flock(wait_fd, fcntl.LOCK_UN)
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise StoreUnavailable(f"cannot lock {self.path}-writelock: {exc}") from exc
            try:
                with self._store_errors():
                    return self._commit_inline_locked(take)
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            self._write_mutex.release()

    def _commit_inline_locked(
        self, take: Callable[[], list[PendingAppend]]
    ) -> list[AppendResult] | None:
        con = self._writer_con()
        con.execute("PRAGMA busy_timeout = 0")
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # BUSY and its extended codes (primary code in the low byte).
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return None
            raise
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        return _finish_txn(con, lambda con: self._write_batch(con, take()))

    def _commit_turn(self, take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        """On the writer thread: wait for the cross-process write lock, THEN take the batch
        (appends that arrived while the other worker committed join it: fewer, bigger
        fsyncs), commit it, and end the write turn. One thread hop per batch."""
        with self._write_mutex:
            return self._commit_turn_locked(take)

    def _commit_turn_locked(self, take: Callable[[], list[PendingAppend]]) -> list[AppendResult]:
        if not self._memory and fcntl is not None and not self._turn_held:
            self._lock_exclusive()
            self._turn_held = True
        try:
            batch = take()
            if not batch:
                return []
            return self._write_txn(functools.partial(self._write_batch, batch=batch))
        finally:
            self._end_turn()

    def _write_batch(
        self, con: sqlite3.Connection, batch: list[PendingAppend]
    ) -> list[AppendResult]:
        """A group-commit batch inside the caller's transaction (both commit paths)."""
        if not batch:
            return []
        legacy = any(item.claim is not None for item in batch) and self._has_legacy_claims(con)
        return _commit_batch_sync(con, batch, legacy_claims=legacy)

    def _end_turn(self) -> None:
        if self._turn_held:
            self._turn_held = False
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --- approvals and registration ceremonies ---------------------------------------

    async def insert_approval(self, record: ApprovalRecord) -> None:
        values = approval_values(record)
        await self._write(lambda con: con.execute(_INSERT_APPROVAL, values), bump=APPROVALS)

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        row = await self._read(
            lambda con: con.execute(APPROVAL_SELECT + " WHERE id = ?", (approval_id,)).fetchone()
        )
        return None if row is None else approval_from_row(row)

    async def get_approval_by_nonce(self, nonce: bytes) -> ApprovalRecord | None:
        # Done for every proof (check 8). Almost every nonce belongs to no approval
        # request: the filter says so without a read. Otherwise a unique-index point read,
        # inline (no thread hop).
        if self._nonce_filter is not None and not self._nonce_filter.might_contain(nonce):
            return None
        row = await self._lookup(
            lambda con: con.execute(APPROVAL_SELECT + " WHERE nonce = ?", (nonce,)).fetchone()
        )
        return None if row is None else approval_from_row(row)

    def _approval_nonces_after(self, rowid: int) -> list[tuple[int, bytes]]:
        """(rowid, nonce) of approval requests after ``rowid`` (approval rows are never
        deleted, and writers commit one at a time, so rowids only grow)."""
        return self._inline(
            lambda con: con.execute(
                "SELECT rowid, nonce FROM approvals WHERE rowid > ? ORDER BY rowid", (rowid,)
            ).fetchall()
        )

    async def get_approvals_by_nonces(self, nonces: Sequence[bytes]) -> dict[bytes, ApprovalRecord]:
        """``get_approval_by_nonce`` for many nonces: the filter, then ONE read if needed."""
        nonce_filter = self._nonce_filter
        wanted = [
            n
            for n in dict.fromkeys(nonces)
            if nonce_filter is None or nonce_filter.might_contain(n)
        ]
        if not wanted:
            return {}
        sql = APPROVAL_SELECT + " WHERE nonce IN (" + ",".join("?" * len(wanted)) + ")"
        rows = await self._lookup(lambda con: con.execute(sql, wanted).fetchall())
        return {r.nonce: r for r in map(approval_from_row, rows)}

    async def list_due_approvals(self, now: float, limit: int) -> list[ApprovalRecord]:
        sql = APPROVAL_SELECT + (
            " WHERE status = 'pending' AND expires_at <= ? ORDER BY expires_at LIMIT ?"
        )
        rows = await self._read(lambda con: con.execute(sql, (now, limit)).fetchall())
        return [approval_from_row(r) for r in rows]

    async def insert_registration(self, challenge: RegistrationChallenge) -> None:
        values = (
            challenge.token_hash,
            challenge.sub,
            challenge.challenge,
            challenge.options_json,
            challenge.created_at,
            challenge.expires_at,
            int(challenge.used),
        )

        def insert(con: sqlite3.Connection) -> None:
            # Ceremonies are short-lived: drop the long-expired ones while we hold the lock.
            con.execute(
                "DELETE FROM webauthn_challenges WHERE expires_at < ?",
                (challenge.created_at - 3600,),
            )
            con.execute(
                "INSERT INTO webauthn_challenges (token_hash, sub, challenge, options_json, "
                "created_at, expires_at, used) VALUES (?, ?, ?, ?, ?, ?, ?)",
                values,
            )

        await self._write(insert)

    async def get_registration(self, token_hash: bytes, now: float) -> RegistrationChallenge | None:
        sql = REGISTRATION_SELECT + " WHERE token_hash = ? AND used = 0 AND expires_at > ?"
        row = await self._read(lambda con: con.execute(sql, (token_hash, now)).fetchone())
        return None if row is None else registration_from_row(row)

    async def consume_registration(
        self, token_hash: bytes, now: float
    ) -> RegistrationChallenge | None:
        def consume(con: sqlite3.Connection) -> Any:
            cur = con.execute(
                "UPDATE webauthn_challenges SET used = 1 "
                "WHERE token_hash = ? AND used = 0 AND expires_at > ?",
                (token_hash, now),
            )
            if cur.rowcount != 1:
                return None
            return con.execute(
                REGISTRATION_SELECT + " WHERE token_hash = ?", (token_hash,)
            ).fetchone()

        row = await self._write(consume)
        return None if row is None else registration_from_row(row)

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

    # --- webhooks -------------------------------------------------------

    async def upsert_webhook_subscription(self, sub: WebhookSubscription) -> None:
        values = subscription_values(sub)

        def upsert(con: sqlite3.Connection) -> None:
            con.execute(
                "INSERT INTO webhook_subscriptions (" + SUBSCRIPTION_COLUMNS + ") "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "url = excluded.url, events = excluded.events, "
                "secret_key_id = excluded.secret_key_id, secret_ct = excluded.secret_ct, "
                "source = excluded.source, deleted_at = NULL",
                values,
            )

        await self._write(upsert)

    async def insert_webhook_subscription(self, sub: WebhookSubscription) -> None:
        values = subscription_values(sub)

        def insert(con: sqlite3.Connection) -> None:
            con.execute(
                "INSERT INTO webhook_subscriptions (" + SUBSCRIPTION_COLUMNS + ") "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

        try:
            await self._write(insert)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise DuplicateKey(f"webhook subscription {sub.id!r} already exists") from exc

    async def get_webhook_subscription(self, sub_id: str) -> WebhookSubscription | None:
        row = await self._read(
            lambda con: con.execute(
                SUBSCRIPTION_SELECT + " WHERE id = ? AND deleted_at IS NULL",
                (sub_id,),
            ).fetchone()
        )
        return None if row is None else subscription_from_row(row)

    async def list_webhook_subscriptions(self) -> list[WebhookSubscription]:
        rows = await self._read(
            lambda con: con.execute(
                SUBSCRIPTION_SELECT + " WHERE deleted_at IS NULL ORDER BY created_at, id"
            ).fetchall()
        )
        return [subscription_from_row(r) for r in rows]

    async def delete_webhook_subscription(self, sub_id: str, at: float) -> bool:
        def delete(con: sqlite3.Connection) -> bool:
            cur = con.execute(
                "UPDATE webhook_subscriptions SET deleted_at = ? "
                "WHERE id = ? AND deleted_at IS NULL",
                (at, sub_id),
            )
            return cur.rowcount == 1

        return await self._write(delete)

    async def fan_out_outbox(self, now: float, limit: int) -> int:
        # An idle worker must not take the write lock (and delay audit commits) every poll.
        pending = await self._read(
            lambda con: con.execute(
                "SELECT 1 FROM outbox WHERE status = 'pending' LIMIT 1"
            ).fetchone()
        )
        if pending is None:
            return 0

        def fan_out(con: sqlite3.Connection) -> int:
            rows = con.execute(
                "SELECT id, event_id, event_type, created_at FROM outbox "
                "WHERE status = 'pending' ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            if not rows:
                return 0
            subs = [
                subscription_from_row(r)
                for r in con.execute(SUBSCRIPTION_SELECT + " WHERE deleted_at IS NULL")
            ]
            for outbox_id, event_id, event_type, created_at in rows:
                for sub in matching_subscriptions(subs, event_type, created_at):
                    con.execute(
                        "INSERT INTO webhook_deliveries (id, outbox_id, subscription_id, "
                        "event_type, created_at, window_start, next_attempt_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (
                            webhook_delivery_id(event_id, event_type, sub.id),
                            outbox_id,
                            sub.id,
                            event_type,
                            now,
                            now,
                            now,
                        ),
                    )
            con.executemany(
                "UPDATE outbox SET status = 'delivered', delivered_at = ? WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
            return len(rows)

        return await self._write(fan_out)

    async def claim_due_deliveries(
        self, now: float, limit: int, lease_seconds: float, worker_id: str
    ) -> list[DeliveryTask]:
        due = await self._read(
            lambda con: con.execute(
                "SELECT 1 FROM webhook_deliveries d JOIN webhook_subscriptions s "
                "ON s.id = d.subscription_id WHERE d.status = 'pending' "
                "AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?) "
                "AND s.deleted_at IS NULL LIMIT 1",
                (now, now),
            ).fetchone()
        )
        if due is None:
            return []

        def claim(con: sqlite3.Connection) -> list[Any]:
            # BEGIN IMMEDIATE holds the write lock: no other process claims the same rows.
            rows = con.execute(
                "SELECT " + TASK_COLUMNS + TASK_FROM + " WHERE d.status = 'pending' "
                "AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?) "
                "AND s.deleted_at IS NULL ORDER BY d.next_attempt_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            con.executemany(
                "UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ? WHERE id = ?",
                [(worker_id, now + lease_seconds, r[0]) for r in rows],
            )
            return rows

        return [task_from_row(r) for r in await self._write(claim)]

    async def _leased_update(self, sql: str, params: tuple[Any, ...]) -> bool:
        def update(con: sqlite3.Connection) -> bool:
            return con.execute(sql, params).rowcount == 1

        return await self._write(update)

    async def mark_delivered(
        self, delivery_id: str, worker_id: str, at: float, status_code: int
    ) -> bool:
        return await self._leased_update(
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, "
            "delivered_at = ?, last_status = ?, last_error = NULL, lease_owner = NULL, "
            "lease_until = NULL WHERE id = ? AND lease_owner = ? AND status = 'pending'",
            (at, status_code, delivery_id, worker_id),
        )

    async def mark_failed(
        self,
        delivery_id: str,
        worker_id: str,
        next_attempt_at: float,
        error: str,
        status_code: int | None,
    ) -> bool:
        return await self._leased_update(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?, "
            "last_status = ?, last_error = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_owner = ? AND status = 'pending'",
            (next_attempt_at, status_code, error[:MAX_WEBHOOK_ERROR], delivery_id, worker_id),
        )

    async def mark_dead(
        self, delivery_id: str, worker_id: str, error: str, status_code: int | None
    ) -> bool:
        return await self._leased_update(
            "UPDATE webhook_deliveries SET status = 'dead', attempts = attempts + 1, "
            "last_status = ?, last_error = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_owner = ? AND status = 'pending'",
            (status_code, error[:MAX_WEBHOOK_ERROR], delivery_id, worker_id),
        )

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        row = await self._read(
            lambda con: con.execute(
                "SELECT " + DELIVERY_COLUMNS + DELIVERY_FROM + " WHERE d.id = ?", (delivery_id,)
            ).fetchone()
        )
        return None if row is None else delivery_from_row(row)

    async def list_deliveries(
        self,
        subscription_id: str,
        status: str | None,
        limit: int,
        cursor: str | None = None,
    ) -> DeliveryPage:
        check_limit(limit)
        sql = "SELECT " + DELIVERY_COLUMNS + DELIVERY_FROM + " WHERE d.subscription_id = ?"
        params: list[Any] = [subscription_id]
        if status is not None:
            sql += " AND d.status = ?"
            params.append(status)
        if cursor is not None:
            created_at, last_id = decode_delivery_cursor(cursor)
            sql += " AND (d.created_at < ? OR (d.created_at = ? AND d.id < ?))"
            params += [created_at, created_at, last_id]
        sql += " ORDER BY d.created_at DESC, d.id DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self._read(lambda con: con.execute(sql, params).fetchall())
        deliveries = [delivery_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        last = deliveries[-1] if deliveries else None
        return DeliveryPage(
            deliveries=deliveries,
            next_cursor=encode_delivery_cursor(last.created_at, last.id) if more and last else None,
        )

    async def replay_delivery(self, delivery_id: str, now: float) -> WebhookDelivery | None:
        def replay(con: sqlite3.Connection) -> Any:
            con.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, "
                "window_start = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND status IN ('dead', 'delivered')",
                (now, now, delivery_id),
            )
            return con.execute(
                "SELECT " + DELIVERY_COLUMNS + DELIVERY_FROM + " WHERE d.id = ?", (delivery_id,)
            ).fetchone()

        row = await self._write(replay)
        return None if row is None else delivery_from_row(row)

    # --- end webhooks ------------------------------------------------------------------------------
    # --- Merkle log ------------------------------------------------------------------

    async def merkle_tree(self) -> CompactTree:
        row = await self._read(
            lambda con: con.execute(
                "SELECT merkle_frontier FROM chain_head WHERE id = 1"
            ).fetchone()
        )
        if row is None:
            raise StoreUnavailable("chain head missing: database not migrated")
        return CompactTree.from_bytes(bytes(row[0]))

    async def perfect_roots(self, nodes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        wanted = list(dict.fromkeys(nodes))

        def query(con: sqlite3.Connection) -> dict[tuple[int, int], bytes]:
            found: dict[tuple[int, int], bytes] = {}
            for level, idx in wanted:
                if level == 0:
                    row = con.execute(
                        "SELECT leaf_hash FROM audit WHERE seq = ?", (idx + 1,)
                    ).fetchone()
                else:
                    row = con.execute(
                        "SELECT hash FROM merkle_nodes WHERE last_leaf = ? AND level = ?",
                        (_last_leaf(level, idx), level),
                    ).fetchone()
                if row is not None and row[0] is not None:
                    found[(level, idx)] = bytes(row[0])
            return found

        return await self._read(query)

    async def log_entries(self, start: int, end: int) -> list[LogEntry]:
        if start < 0 or end < start or end - start > MAX_LOG_ENTRIES:
            raise ValueError(f"need 0 <= start <= end <= start + {MAX_LOG_ENTRIES}")
        sql = AUDIT_SELECT.replace(" FROM audit", ", leaf_hash FROM audit")
        rows = await self._read(
            lambda con: con.execute(
                sql + " WHERE seq > ? AND seq <= ? ORDER BY seq", (start, end)
            ).fetchall()
        )
        return [
            LogEntry(audit_record_from_row(r[:-1]), None if r[-1] is None else bytes(r[-1]))
            for r in rows
        ]

    async def save_checkpoint(self, checkpoint: CheckpointRecord) -> CheckpointRecord:
        c = checkpoint

        def save(con: sqlite3.Connection) -> Any:
            con.execute(
                "INSERT INTO checkpoints (size, root, note, created_at, key_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (size) DO NOTHING",
                (c.size, c.root, c.note, c.created_at, c.key_id),
            )
            return con.execute(SELECT_CHECKPOINT + " WHERE size = ?", (c.size,)).fetchone()

        return checkpoint_from_row(await self._write(save))

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        row = await self._read(
            lambda con: con.execute(SELECT_CHECKPOINT + " ORDER BY size DESC LIMIT 1").fetchone()
        )
        return None if row is None else checkpoint_from_row(row)

    async def get_checkpoint(self, size: int) -> CheckpointRecord | None:
        row = await self._read(
            lambda con: con.execute(SELECT_CHECKPOINT + " WHERE size = ?", (size,)).fetchone()
        )
        return None if row is None else checkpoint_from_row(row)

    async def log_key_history(self) -> list[LogKeyRecord]:
        rows = await self._read(
            lambda con: con.execute(SELECT_LOG_KEY + " ORDER BY created_at, key_id").fetchall()
        )
        return [log_key_from_row(r) for r in rows]

    async def add_log_key(self, record: LogKeyRecord) -> bool:
        r = record

        def add(con: sqlite3.Connection) -> bool:
            cur = con.execute(
                "INSERT INTO log_keys (key_id, public_key, created_at, rotated_from, "
                "rotation_note) VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
                (r.key_id, r.public_key, r.created_at, r.rotated_from, r.rotation_note),
            )
            return cur.rowcount == 1

        return await self._write(add)

    # --- end Merkle log ------------------------------------------------------------------------


def _finish_txn(con: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """The body of a transaction the caller began: ``fn``, then COMMIT, or ROLLBACK on
    any failure."""
    try:
        result = fn(con)
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            # If even ROLLBACK fails the next BEGIN will say so; nothing is kept.
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise
    return result


def _commit_batch_sync(
    con: sqlite3.Connection, batch: list[PendingAppend], legacy_claims: bool = True
) -> list[AppendResult]:
    """One group-commit batch inside the caller's BEGIN IMMEDIATE transaction.

    ``legacy_claims``: whether ``replay_v1`` may hold claims from before migration 0006
    (False only when the store has seen it empty: nothing writes it any more)."""
    head = con.execute(
        "SELECT seq, entry_hash, merkle_frontier FROM chain_head WHERE id = 1"
    ).fetchone()
    if head is None:
        raise StoreUnavailable("chain head missing: database not migrated")
    seq, prev_hash = int(head[0]), bytes(head[1])
    tree = CompactTree.from_bytes(bytes(head[2]))
    if tree.size != seq:
        raise StoreError(f"Merkle frontier has {tree.size} leaves but the chain has {seq} rows")
    leaves: list[bytes] = []
    results: list[AppendResult] = []
    wanted: frozenset[str] | None = None  # event types some live subscription wants
    # Rows are collected and written with one multi-row INSERT per table after the loop
    # (the outbox and policy rows after the audit rows they refer to).
    audit_rows: list[tuple[Any, ...]] = []
    outbox_rows: list[tuple[Any, ...]] = []
    policy_rows: list[tuple[Any, ...]] = []
    # Digests claimed before migration 0006 (replay_v1) are replays whatever their exp.
    legacy = (
        _legacy_claimed(con, [i.claim.digest for i in batch if i.claim is not None])
        if legacy_claims
        else frozenset()
    )
    # Replay claims: all at once, unless an approval transition is in the batch (a failed
    # compare-and-set gives its claim back, so claims must then run row by row, in order).
    won = (
        None if any(item.approval is not None for item in batch) else _claim_all(con, batch, legacy)
    )
    for item in batch:
        draft = item.draft
        claim = item.claim
        if claim is not None:
            if won is not None:
                if draft.event_id not in won:
                    results.append(AppendResult(record=None, replayed=True))
                    continue
            elif (
                claim.digest in legacy
                or con.execute(
                    _CLAIM_ONE, (*claim, time_to_micros(draft.time), draft.event_id)
                ).rowcount
                != 1
            ):
                results.append(AppendResult(record=None, replayed=True))
                continue
        if item.approval is not None:  # approval CAS, atomic with this row
            cur = con.execute(
                transition_sql(item.approval, "sqlite"),
                transition_args(item.approval, draft.event_id),
            )
            if cur.rowcount != 1:
                if claim is not None:  # give the claim back: the row is not written
                    con.execute("DELETE FROM replay WHERE exp = ? AND digest = ?", claim)
                results.append(AppendResult(record=None, transition_failed=True))
                continue
        record, entry = seal_entry(seq + 1, prev_hash, draft)
        leaf = leaf_hash(entry)
        leaves.append(leaf)
        audit_rows.append((*audit_row_values(record), leaf))
        if item.outbox:
            if wanted is None:
                wanted = frozenset(
                    t
                    for (events,) in con.execute(LIVE_SUBSCRIPTION_EVENTS)
                    for t in json.loads(events)
                )
            outbox_rows.extend(
                (draft.event_id, event.event_type, event.body(), draft.time, draft.time)
                for event in item.outbox
                if event.event_type in wanted
            )
        if item.policy_approval is not None:  # policy engine
            policy_rows.append(_policy_approval_values(item.policy_approval))
        seq, prev_hash = record.seq, record.entry_hash
        results.append(AppendResult(record=record))
    _insert_many(con, _INSERT_AUDIT, audit_rows)
    _insert_many(con, _INSERT_OUTBOX, outbox_rows)
    _insert_many(con, _INSERT_POLICY_APPROVAL, policy_rows)
    tree, nodes = _merkle.extend_tree(tree, leaves)
    _insert_many(con, _INSERT_MERKLE_NODE, [(_last_leaf(lv, i), lv, h) for lv, i, h in nodes])
    con.execute(
        "UPDATE chain_head SET seq = ?, entry_hash = ?, merkle_frontier = ? WHERE id = 1",
        (seq, prev_hash, tree.to_bytes()),
    )
    return results


_CLAIM_ONE = (
    "INSERT INTO replay (exp, digest, accepted_at, event_id) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (exp, digest) DO NOTHING"
)
_CLAIMED_BY = "SELECT event_id FROM replay WHERE exp = ? AND digest = ?"
_IS_CLAIMED = "SELECT 1 FROM replay WHERE exp = ? AND digest = ?"
#: A claim (exp, digest), or its digest claimed before migration 0006 (replay_v1).
_IS_CLAIMED_OR_LEGACY = (
    "SELECT 1 FROM replay WHERE exp = ? AND digest = ? "
    "UNION ALL SELECT 1 FROM replay_v1 WHERE digest = ? LIMIT 1"
)
_LEGACY_CLAIMED = "SELECT digest FROM replay_v1 WHERE digest IN ("
#: Pruning (``prune_replay``): one range at the left edge of the (exp, digest) key.
_PRUNE_CLAIMS = (
    "DELETE FROM replay WHERE (exp, digest) IN "
    "(SELECT exp, digest FROM replay WHERE exp < ? ORDER BY exp, digest LIMIT ?)"
)
_LEGACY_CANDIDATES = "SELECT digest FROM replay_v1 WHERE accepted_at < ? LIMIT ?"
_PRUNE_LEGACY_ONE = "DELETE FROM replay_v1 WHERE digest = ? AND accepted_at < ?"
_ANY_LEGACY = "SELECT EXISTS (SELECT 1 FROM replay_v1)"
_INSERT_MERKLE_NODE = "INSERT INTO merkle_nodes (last_leaf, level, hash) VALUES (?, ?, ?)"


def _last_leaf(level: int, idx: int) -> int:
    """The key of node (level, idx) in ``merkle_nodes`` (migration 0007): the index of the
    last leaf it covers. The nodes a batch completes all end inside the batch, so they are
    inserted next to each other instead of at one right edge per level."""
    return ((idx + 1) << level) - 1


def _legacy_claimed(con: sqlite3.Connection, digests: list[bytes]) -> frozenset[bytes]:
    """The digests among ``digests`` claimed before migration 0006 (kept in ``replay_v1``).

    Power-of-two chunks (:func:`_chunks`), as in :func:`_insert_many`.
    Usually (and always on a database created after 0006) the table is empty or holds none
    of them: a read of a few pages, no write.
    """
    found: set[bytes] = set()
    for chunk in _chunks(con, digests, 1):
        sql = _LEGACY_CLAIMED + ",".join("?" * len(chunk)) + ")"
        found.update(bytes(d) for (d,) in con.execute(sql, chunk))
    return frozenset(found)


def _claim_all(
    con: sqlite3.Connection, batch: list[PendingAppend], legacy: frozenset[bytes]
) -> set[str]:
    """Claim every claim of the batch; return the event ids whose claim won.

    Within the batch the first claimant of a key wins (rows insert in order); a digest in
    ``legacy`` (claimed before migration 0006) is not claimed again and never wins.
    Usually every claim wins, which the row count shows; only otherwise are the winners
    read back, one primary-key read each.
    """
    claims = [
        (*item.claim, time_to_micros(item.draft.time), item.draft.event_id)
        for item in batch
        if item.claim is not None and item.claim.digest not in legacy
    ]
    if _insert_many(con, _CLAIM_ONE, claims) == len(claims):
        return {event_id for _, _, _, event_id in claims}
    won: set[str] = set()
    for exp, digest in dict.fromkeys((c[0], c[1]) for c in claims):
        row = con.execute(_CLAIMED_BY, (exp, digest)).fetchone()
        if row is not None:
            won.add(row[0])
    return won


def _insert_many(con: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Rows through one multi-row ``INSERT ... VALUES (...), (...)`` statement per chunk;
    returns the number of rows inserted.

    ``executemany`` steps the statement once per row, and each step releases and retakes
    the GIL: under load the writer thread then queues behind the event loop for every
    row. Chunks are powers of two, so a connection prepares few distinct statements.
    """
    if not rows:
        return 0
    head, _, tail = sql.partition(" VALUES ")
    values, conflict = tail.split(")", 1)
    inserted = 0
    for chunk in _chunks(con, rows, len(rows[0])):
        statement = _multi_row_sql(head, values + ")", conflict, len(chunk))
        inserted += con.execute(statement, [value for row in chunk for value in row]).rowcount
    return inserted


def _chunks(con: sqlite3.Connection, items: Sequence[T], width: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive chunks whose sizes are powers of two (largest first) and
    whose parameters (``width`` each) fit SQLite's variable limit: a connection then
    prepares few distinct statements for any number of items."""
    limit = _chunk_size(con, width)
    start = 0
    while start < len(items):
        n = min(limit, 1 << ((len(items) - start).bit_length() - 1))
        yield items[start : start + n]
        start += n


def _chunk_size(con: sqlite3.Connection, width: int) -> int:
    """The largest power of two of rows whose parameters fit SQLite's variable limit."""
    rows = max(1, con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    return min(256, 1 << (rows.bit_length() - 1))


@functools.lru_cache(maxsize=64)
def _multi_row_sql(head: str, values: str, conflict: str, n: int) -> str:
    return f"{head} VALUES {', '.join([values] * n)}{conflict}"


def _rebuild_merkle_sync(con: sqlite3.Connection) -> int:
    """Recompute leaf hashes, nodes and frontier from the rows in seq order (backfill).

    Runs inside migration 0002, on ``merkle_nodes`` as 0002 creates it (keyed by level,
    idx; 0007 re-keys it afterwards), and on the current table (tests rebuild a tree)."""
    by_last = any(r[1] == "last_leaf" for r in con.execute("PRAGMA table_info(merkle_nodes)"))
    con.execute("DELETE FROM merkle_nodes")
    tree = CompactTree()
    last = 0
    while True:
        rows = con.execute(AUDIT_SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?", (last, ITER_CHUNK))
        chunk = [audit_record_from_row(r) for r in rows.fetchall()]
        if not chunk:
            break
        leaves = [_merkle.record_leaf_hash(r) for r in chunk]
        con.executemany(
            "UPDATE audit SET leaf_hash = ? WHERE seq = ?",
            [(leaf, r.seq) for leaf, r in zip(leaves, chunk, strict=True)],
        )
        tree, nodes = _merkle.extend_tree(tree, leaves)
        if by_last:
            con.executemany(_INSERT_MERKLE_NODE, [(_last_leaf(lv, i), lv, h) for lv, i, h in nodes])
        else:
            con.executemany("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        last = chunk[-1].seq
    con.execute("UPDATE chain_head SET merkle_frontier = ? WHERE id = 1", (tree.to_bytes(),))
    return tree.size


def _fetch_chunk(con: sqlite3.Connection, sql: str, start: int) -> list[Any]:
    return con.execute(sql, (start, ITER_CHUNK)).fetchall()


# --- policy engine -------------------------------------------------------------------
_INSERT_POLICY_APPROVAL = (
    "INSERT INTO policy_approvals (tx_key, sub, proof_id, rule, roles, at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tx_key, sub) DO NOTHING"
)


def _policy_approval_values(a: PolicyApproval) -> tuple[Any, ...]:
    return (a.tx_key, a.sub, a.proof_id, a.rule, json.dumps(list(a.roles)), a.at)


# --- end policy engine -------------------------------------------------------------------------


def _check_writable(path: Path) -> None:
    """Name a read-only database plainly (SQLite only says "unable to open database file").

    The directory must be writable too: SQLite creates the -wal, -shm and lock files there.
    """
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            raise StoreUnavailable(
                f"{target} is read-only (file permissions or a read-only filesystem): the "
                "relay must write the audit log; make it writable or move database.url"
            )
