"""The PostgreSQL backend (asyncpg pool), correct with many relay processes on one database.

* Chain: each group commit locks the single ``chain_head`` row (``SELECT ... FOR
  UPDATE``) and only then takes its batch, so batches from different processes serialise,
  the chain never forks, and rows that arrive while another process commits join it.
* Replay: ``replay (exp, digest)`` is the PRIMARY KEY (``ReplayKey``); a batch claims its
  keys with one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` in the same transaction as
  the audit rows, so an accepted proof is written exactly once or not at all. A digest
  claimed before migration 0006 (``replay_v1``, digest only) is never claimed again.
* Reads of the audit log may go to replicas (``replica_dsns``), falling back to the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import asyncpg

from proof_messenger.audit.chain import seal_entry, time_to_micros
from proof_messenger.audit.merkle import CompactTree, leaf_hash

from . import _merkle
from ._common import (
    APPROVAL_COLUMNS,
    APPROVAL_SELECT,
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

__all__ = ["PostgresStore"]

T = TypeVar("T")

# Arbitrary constant: "pm-migr" — serialises migrate() across processes.
_MIGRATION_LOCK_ID = 0x706D2D6D696772
#: How long a replica that failed is skipped before it is tried again.
REPLICA_RETRY_SECONDS = 30.0
_INSERT_APPROVAL = (
    "INSERT INTO approvals (id, sub, aud, nonce, intent_digest, intent_key_id, intent_ct, "
    "page_token_hash, created_at, expires_at, status, require_uv, api_key_id, decided_at, "
    "proof_id, audit_event_id, user_roles) VALUES "
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
)
assert _INSERT_APPROVAL.count("$") == len(APPROVAL_COLUMNS)
# The coalesced point reads (ReadCoalescer): one query for many keys.
_SELECT_KEYS = SELECT_KEY + " WHERE kid = ANY($1::text[])"
_SELECT_API_KEYS = SELECT_API_KEY + " WHERE id = ANY($1::text[])"
_SELECT_APPROVALS_BY_NONCE = APPROVAL_SELECT + " WHERE nonce = ANY($1::bytea[])"
# Webhooks: is there anything for the fan-out to do? (index outbox_due)
_ANY_PENDING_OUTBOX = "SELECT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending')"
_LEASE_DUE_DELIVERIES = (
    "WITH leased AS (UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2 "
    "WHERE id IN (SELECT d.id FROM webhook_deliveries d "
    "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
    "WHERE d.status = 'pending' AND d.next_attempt_at <= $3 "
    "AND (d.lease_until IS NULL OR d.lease_until < $3) AND s.deleted_at IS NULL "
    "ORDER BY d.next_attempt_at LIMIT $4 FOR UPDATE OF d SKIP LOCKED) "
    "RETURNING id) "
)
_CLAIM_DUE_DELIVERIES = (
    _LEASE_DUE_DELIVERIES
    + "SELECT "
    + TASK_COLUMNS
    + TASK_FROM
    + " JOIN leased l ON l.id = d.id ORDER BY d.next_attempt_at"
)
# Group commit, round trip 1 of 4: begin, and wait for the chain head (other workers' and
# instances' commits hold it) before the batch is taken. One simple-protocol round trip,
# as the BEGIN alone was.
_BEGIN_AND_LOCK_HEAD = "BEGIN; SELECT 1 FROM chain_head WHERE id = 1 FOR UPDATE"
# Round trip 2 of 4: lock the chain head (already held), claim the batch's keys (ON
# CONFLICT: a key already there is a replay; so is a digest claimed before migration 0006,
# in replay_v1, which nothing writes any more) and ask whether any webhook subscription is
# live. The claim's WHERE reads the locked head, so the head row is locked before any
# digest is claimed, as when they were two statements: two processes claiming the same
# digest queue on the head first and cannot deadlock.
_LOCK_AND_CLAIM = (
    "WITH head AS (SELECT seq, entry_hash, merkle_frontier FROM chain_head WHERE id = 1 "
    "FOR UPDATE), "
    "claimed AS (INSERT INTO replay (exp, digest, accepted_at, event_id) "
    "SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::text[]) "
    "AS c (exp, digest, accepted_at, event_id) "
    "WHERE EXISTS (SELECT 1 FROM head) "
    "AND NOT EXISTS (SELECT 1 FROM replay_v1 l WHERE l.digest = c.digest) "
    "ON CONFLICT (exp, digest) DO NOTHING RETURNING exp, digest) "
    "SELECT seq, entry_hash, merkle_frontier, ARRAY(SELECT digest FROM claimed), "
    "ARRAY(SELECT exp FROM claimed), "
    "ARRAY(SELECT events FROM webhook_subscriptions WHERE deleted_at IS NULL) FROM head"
)
assert LIVE_SUBSCRIPTION_EVENTS in _LOCK_AND_CLAIM
#: A claim (exp, digest), or its digest claimed before migration 0006 (replay_v1).
_IS_CLAIMED = (
    "SELECT EXISTS (SELECT 1 FROM replay WHERE exp = $1 AND digest = $2) "
    "OR EXISTS (SELECT 1 FROM replay_v1 WHERE digest = $2)"
)
#: Pruning (``prune_replay``): a chunk of the left edge of the (exp, digest) key; the
#: claims from before migration 0006 have no index on accepted_at (the scan stops at the
#: LIMIT, and the table only shrinks).
_PRUNE_CLAIMS = (
    "DELETE FROM replay r USING (SELECT exp, digest FROM replay WHERE exp < $1 "
    "ORDER BY exp, digest LIMIT $2 FOR UPDATE SKIP LOCKED) d "
    "WHERE r.exp = d.exp AND r.digest = d.digest"
)
_PRUNE_LEGACY = (
    "DELETE FROM replay_v1 r USING (SELECT digest FROM replay_v1 WHERE accepted_at < $1 "
    "LIMIT $2 FOR UPDATE SKIP LOCKED) d WHERE r.digest = d.digest"
)
# Round trip 3 of 4: the batch's audit rows, the Merkle nodes it completes, its outbox
# rows (empty arrays insert nothing) and the new chain head, in one statement.
_WRITE_BATCH = (
    "WITH audit_rows AS (INSERT INTO audit (seq, time_us, event_id, event_type, status, sub, "
    "kid, tx_type, amount_minor, currency, error_code, proof_id, client_ip, user_agent, "
    "detail, context_key_id, context_ct, prev_hash, entry_hash, leaf_hash) "
    "SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[], $12::text[], "
    "$13::text[], $14::text[], $15::text[], $16::text[], $17::bytea[], $18::bytea[], "
    "$19::bytea[], $20::bytea[])), "
    "node_rows AS (INSERT INTO merkle_nodes (level, idx, hash) "
    "SELECT * FROM unnest($21::int[], $22::bigint[], $23::bytea[])), "
    "outbox_rows AS (INSERT INTO outbox (event_id, event_type, payload, created_at, "
    "next_attempt_at) SELECT e, t, p, c, c FROM unnest($24::text[], $25::text[], "
    "$26::bytea[], $27::double precision[]) AS u(e, t, p, c)) "
    "UPDATE chain_head SET seq = $28, entry_hash = $29, merkle_frontier = $30 WHERE id = 1"
)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (unnest parameters); ``width`` empty lists if no rows."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


def _row_count(status: str) -> int:
    """The row count of a command tag (``DELETE 42``)."""
    return int(status.rsplit(" ", 1)[-1])


async def _keep_session(con: Any) -> None:
    """Pool ``reset``: send nothing when a connection goes back to the pool.

    asyncpg's default reset runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;`` on every release: one more round trip and four server statements per
    acquisition, about a third of all statements of a /verify. This store never changes
    session state (no SET, LISTEN, cursors or session locks outside ``migrate``, which
    unlocks, or closes the connection if it cannot). An open transaction is still rolled
    back by asyncpg before this is called.
    """


# Errors that mean "the database is not there / not writable": the relay answers 503.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left in a broken state by an outage
    asyncpg.PostgresError,
)


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """Map driver exceptions to the Store error tree (no raw asyncpg error leaks out)."""
    try:
        yield
    except StoreError:
        raise
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise StoreError(f"PostgreSQL constraint violated during {what}: {exc}") from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"PostgreSQL unavailable during {what}: {exc!r}") from exc


K = TypeVar("K")
V = TypeVar("V")


class ReadCoalescer(Generic[K, V]):
    """Point reads by unique key from concurrent requests share one query.

    Every ``/verify`` reads its API key, its signing key and (approvals) the nonce's
    request: three round trips and pool acquisitions per proof, most of the relay's
    database cost. Here the reads asked for in one event-loop pass are sent as ONE
    ``... = ANY($1)`` query. While ``max_in_flight`` queries are running, new reads wait
    and go together in the next one.

    Not a cache: a read is always answered by a query that STARTS after it was asked
    (a read never joins a query already sent), so a revocation committed before the read
    is seen, exactly as with one query per read.
    """

    def __init__(
        self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], *, max_in_flight: int = 1
    ) -> None:
        self._fetch = fetch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._pending: dict[K, list[asyncio.Future[V | None]]] = {}
        self._scheduled = False

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._scheduled:
            # After the callbacks already due in this pass: their reads join this query.
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= self._max_in_flight:
            return  # the query in flight dispatches these when it ends
        pending, self._pending = self._pending, {}
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._run(pending))

    async def _run(self, pending: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self._fetch(list(pending))
        except BaseException as exc:
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        # One exception object per caller: they are raised in many tasks.
                        error = (
                            type(exc)(*exc.args)
                            if isinstance(exc, StoreError)
                            else StoreUnavailable(f"read failed: {exc!r}")
                        )
                        error.__cause__ = exc
                        future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            for key, futures in pending.items():
                value = found.get(key)
                for future in futures:
                    if not future.done():  # a caller that gave up (cancelled) is skipped
                        future.set_result(value)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._dispatch()


class PostgresStore:
    """``Store`` on PostgreSQL through an asyncpg pool."""

    def __init__(
        self,
        dsn: str,
        max_connections: int = 10,
        connection_timeout: float = 5.0,
        replica_dsns: Sequence[str] = (),
        *,
        max_batch: int = 256,
        command_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_connections < 2:
            raise ValueError("max_connections must be >= 2 (one is held by the batch writer)")
        self.dsn = dsn
        self._max_connections = max_connections
        self._connection_timeout = connection_timeout
        self._command_timeout = command_timeout
        self._replica_dsns = tuple(replica_dsns)
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._replicas: list[asyncpg.Pool] = []
        #: index of a failed replica -> clock time before which it is not tried again, so a
        #: replica that silently drops packets costs one connection timeout, not one per read.
        self._replica_down_until: dict[int, float] = {}
        self._committer = GroupCommitter(self._commit_batch, max_batch=max_batch)
        self._new_coalescers()

    def _new_coalescers(self) -> None:
        """The per-request point reads of /verify (see ReadCoalescer); fresh on every
        open(), so no state of a previous (maybe closed) event loop is carried over."""
        self._api_keys = ReadCoalescer(self._fetch_api_keys)
        self._keys = ReadCoalescer(self._fetch_keys)
        self._approvals_by_nonce = ReadCoalescer(self._fetch_approvals_by_nonce)

    # --- lifecycle -----------------------------------------------------------------------------

    async def _make_pool(self, dsn: str, max_size: int) -> asyncpg.Pool:
        # min_size=0: open() never blocks on an unreachable database; every acquire
        # reconnects as needed, which is how the store recovers after an outage.
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            timeout=self._connection_timeout,
            command_timeout=self._command_timeout,
            max_inactive_connection_lifetime=60.0,
            reset=_keep_session,
        )
        return pool

    async def open(self) -> None:
        if self._pool is not None:
            return
        with _translate("open"):
            self._pool = await self._make_pool(self.dsn, self._max_connections)
            self._replicas = [
                await self._make_pool(dsn, self._max_connections) for dsn in self._replica_dsns
            ]
        self._new_coalescers()
        self._committer.start()

    async def close(self) -> None:
        await self._committer.stop()
        pools = [p for p in (self._pool, *self._replicas) if p is not None]
        self._pool, self._replicas = None, []
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), timeout=self._connection_timeout)
            except _UNAVAILABLE:
                pool.terminate()

    def _primary(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _conn(self, what: str, pool: asyncpg.Pool | None = None) -> AsyncIterator[Any]:
        pool = pool or self._primary()
        with _translate(what):
            async with pool.acquire(timeout=self._connection_timeout) as con:
                yield con

    async def _read(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run a read on the first working replica, else on the primary."""
        now = time.monotonic()
        for index, replica in enumerate(self._replicas):
            if self._replica_down_until.get(index, 0.0) > now:
                continue
            try:
                async with self._conn(what, replica) as con:
                    return await fn(con)
            except StoreUnavailable:
                self._replica_down_until[index] = time.monotonic() + REPLICA_RETRY_SECONDS
                continue
        async with self._conn(what) as con:
            return await fn(con)

    # --- migrations ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        migrations = load_migrations("postgres")
        applied: list[str] = []
        async with self._conn("migrate") as con:
            await con.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
            try:
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(name text PRIMARY KEY, applied_at double precision NOT NULL)"
                )
                done = {r[0] for r in await con.fetch("SELECT name FROM schema_migrations")}
                for migration in migrations:
                    if migration.name in done:
                        continue
                    async with con.transaction():
                        await con.execute(migration.sql)
                        if migration.name == "0002_merkle":
                            await _rebuild_merkle(con)
                        await con.execute(
                            "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)",
                            migration.name,
                            self._clock(),
                        )
                    applied.append(migration.name)
            finally:
                try:
                    await con.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
                except _UNAVAILABLE:
                    # The pool does not reset sessions (_keep_session): a connection that
                    # may still hold the lock must not go back to it.
                    con.terminate()
        return applied

    async def is_ready(self) -> bool:
        wanted = {m.name for m in load_migrations("postgres")}
        try:
            async with self._conn("readiness check") as con:
                if await con.fetchval("SELECT to_regclass('schema_migrations')") is None:
                    return False
                done = {r[0] for r in await con.fetch("SELECT name FROM schema_migrations")}
        except StoreError:
            return False
        return wanted <= done

    # --- key registry --------------------------------------------------------------------------

    async def insert_key(self, record: KeyRecord) -> None:
        try:
            async with self._conn("insert_key") as con:
                await con.execute(
                    "INSERT INTO keys (kid, sub, alg, public_key, label, status, created_at, "
                    "revoked_at, revoke_reason, sign_count, transports, attestation_format) VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
                    list(record.transports),
                    record.attestation_format,
                )
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise DuplicateKey(f"key {record.kid!r} is already registered") from exc

    async def get_key(self, kid: str) -> KeyRecord | None:
        return await self._keys.get(kid)

    async def _fetch_keys(self, kids: list[str]) -> dict[str, KeyRecord]:
        async with self._conn("get_key") as con:
            rows = await con.fetch(_SELECT_KEYS, kids)
        return {r[0]: key_from_row(r, tuple) for r in rows}

    async def get_keys(self, kids: Sequence[str]) -> dict[str, KeyRecord]:
        wanted = list(dict.fromkeys(kids))
        return await self._fetch_keys(wanted) if wanted else {}

    async def list_keys(self, sub: str | None = None) -> list[KeyRecord]:
        async with self._conn("list_keys") as con:
            if sub is None:
                rows = await con.fetch(SELECT_KEY + " ORDER BY created_at, kid")
            else:
                rows = await con.fetch(SELECT_KEY + " WHERE sub = $1 ORDER BY created_at, kid", sub)
        return [key_from_row(r, tuple) for r in rows]

    async def revoke_key(self, kid: str, reason: str, at: float) -> KeyRecord | None:
        """Revoke; an already revoked key keeps its first revocation (time and reason)."""
        async with self._conn("revoke_key") as con, con.transaction():
            await con.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = $2, revoke_reason = $3 "
                "WHERE kid = $1 AND status = 'active'",
                kid,
                at,
                reason,
            )
            row = await con.fetchrow(SELECT_KEY + " WHERE kid = $1", kid)
        return None if row is None else key_from_row(row, tuple)

    async def advance_sign_count(self, kid: str, seen: int, new: int) -> bool:
        async with self._conn("advance_sign_count") as con:
            status = await con.execute(
                "UPDATE keys SET sign_count = $3 WHERE kid = $1 AND sign_count = $2",
                kid,
                seen,
                new,
            )
        return bool(status == "UPDATE 1")

    # --- API keys ------------------------------------------------------------------------------

    async def insert_api_key(self, record: ApiKeyRecord) -> None:
        try:
            async with self._conn("insert_api_key") as con:
                await con.execute(
                    "INSERT INTO api_keys (id, name, secret_hash, scopes, created_at, revoked_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    record.id,
                    record.name,
                    record.secret_hash,
                    list(record.scopes),
                    record.created_at,
                    record.revoked_at,
                )
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise DuplicateKey(f"API key {record.id!r} already exists") from exc

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._api_keys.get(key_id)

    async def _fetch_api_keys(self, ids: list[str]) -> dict[str, ApiKeyRecord]:
        async with self._conn("get_api_key") as con:
            rows = await con.fetch(_SELECT_API_KEYS, ids)
        return {r[0]: api_key_from_row(r, tuple) for r in rows}

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self._conn("list_api_keys") as con:
            rows = await con.fetch(SELECT_API_KEY + " ORDER BY created_at, id")
        return [api_key_from_row(r, tuple) for r in rows]

    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        """True if this call revoked it; False if unknown or already revoked."""
        async with self._conn("revoke_api_key") as con:
            status = await con.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                key_id,
                at,
            )
        return bool(status == "UPDATE 1")

    # --- policy engine ----------------------------------------------------------------

    async def add_policy_approval(self, approval: PolicyApproval) -> bool:
        async with self._conn("add_policy_approval") as con:
            status = await con.execute(_INSERT_POLICY_APPROVAL, *_policy_approval_values(approval))
        return bool(status == "INSERT 0 1")

    async def list_policy_approvals(self, tx_key: str) -> list[PolicyApproval]:
        # From the primary: a replica may lag behind the approval just written.
        async with self._conn("list_policy_approvals") as con:
            rows = await con.fetch(
                "SELECT tx_key, sub, proof_id, rule, roles, at FROM policy_approvals "
                "WHERE tx_key = $1 ORDER BY at, sub",
                tx_key,
            )
        return [PolicyApproval(r[0], r[1], r[2], r[3], tuple(r[4]), float(r[5])) for r in rows]

    # --- end policy engine ---------------------------------------------------------------------

    # --- replay + audit ------------------------------------------------------------------------

    async def is_claimed(self, key: ReplayKey) -> bool:
        async with self._conn("is_claimed") as con:
            return bool(await con.fetchval(_IS_CLAIMED, key.exp, key.digest))

    async def prune_replay(self, before_exp: int, legacy_before: float, limit: int) -> int:
        """Delete up to ``limit`` stale claims (see ``Store``), one statement per table.

        Each statement is its own short transaction on a pool connection: no row of the
        chain head is touched, so batches keep committing around it. The chunk is read
        in key order ``FOR UPDATE SKIP LOCKED``: pruners in other workers or instances take
        disjoint chunks instead of queueing on each other's row locks (one that finds the
        rest locked returns fewer than ``limit`` and stops until its next run).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._conn("prune_replay") as con:
            deleted = _row_count(await con.execute(_PRUNE_CLAIMS, before_exp, limit))
            if deleted < limit:
                deleted += _row_count(
                    await con.execute(_PRUNE_LEGACY, time_to_micros(legacy_before), limit - deleted)
                )
        return deleted

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
        """Lock the chain head, THEN take the batch: appends that arrive while another
        worker or instance holds the head join this commit (fewer, bigger commits under
        contention, as SQLite's group commit takes its batch once it holds the write lock).
        """
        async with self._conn("audit append") as con:
            try:
                await con.execute(_BEGIN_AND_LOCK_HEAD)
                batch = take()
                results = await self._commit_rows(con, batch) if batch else []
                await con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):  # gone with the connection otherwise
                    await con.execute("ROLLBACK")
                raise
            return results

    async def _commit_rows(
        self, con: asyncpg.Connection, batch: list[PendingAppend]
    ) -> list[AppendResult]:
        """The batch, in the caller's transaction (the head already locked), in two round
        trips before the caller's COMMIT: claim the digests + read the event types live
        webhook subscriptions want (_LOCK_AND_CLAIM); every row of the batch + the new head
        (_WRITE_BATCH). Approval transitions and N-of-M approval rows (rare) add their own
        statements."""
        # Within the batch the first claimant of a key wins; later ones are replays.
        seen: set[ReplayKey] = set()
        claims: list[tuple[ReplayKey, PendingAppend]] = []
        for item in batch:
            if item.claim is not None and item.claim not in seen:
                seen.add(item.claim)
                claims.append((item.claim, item))
        head = await con.fetchrow(
            _LOCK_AND_CLAIM,
            [k.exp for k, _ in claims],
            [k.digest for k, _ in claims],
            [time_to_micros(c.draft.time) for _, c in claims],
            [c.draft.event_id for _, c in claims],
        )
        if head is None:
            raise StoreUnavailable("chain head missing: database not migrated")
        tree = CompactTree.from_bytes(bytes(head[2]))
        if tree.size != int(head[0]):
            raise StoreError(
                f"Merkle frontier has {tree.size} leaves but the chain has {head[0]} rows"
            )
        won = {ReplayKey(int(e), bytes(d)) for d, e in zip(head[3], head[4], strict=True)}
        # Outbox rows only for event types a live subscription wants (see
        # LIVE_SUBSCRIPTION_EVENTS): with no subscription, no outbox write at all.
        wanted = {t for events in head[5] for t in json.loads(events)}
        seq, prev_hash = int(head[0]), bytes(head[1])
        results: list[AppendResult] = []
        records: list[AuditRecord] = []
        leaves: list[bytes] = []
        outbox_rows: list[tuple[str, str, bytes, float]] = []
        approval_rows: list[tuple[Any, ...]] = []  # policy engine
        for item in batch:
            claim = item.claim
            if claim is not None:
                if claim not in won:
                    results.append(AppendResult(record=None, replayed=True))
                    continue
                won.discard(claim)  # a second item with this key is a replay
            if item.approval is not None:  # approval CAS, atomic with this row
                status = await con.execute(
                    transition_sql(item.approval, "postgres"),
                    *transition_args(item.approval, item.draft.event_id),
                )
                if status != "UPDATE 1":
                    if claim is not None:  # give the claim back: the row is not written
                        await con.execute(
                            "DELETE FROM replay WHERE exp = $1 AND digest = $2", *claim
                        )
                    results.append(AppendResult(record=None, transition_failed=True))
                    continue
            record, entry = seal_entry(seq + 1, prev_hash, item.draft)
            seq, prev_hash = record.seq, record.entry_hash
            records.append(record)
            leaves.append(leaf_hash(entry))
            results.append(AppendResult(record=record))
            outbox_rows.extend(
                (item.draft.event_id, ev.event_type, ev.body(), item.draft.time)
                for ev in item.outbox
                if ev.event_type in wanted
            )
            if item.policy_approval is not None:  # policy engine
                approval_rows.append(_policy_approval_values(item.policy_approval))
        if records:
            audit_columns = zip(
                *((*audit_row_values(r), leaf) for r, leaf in zip(records, leaves, strict=True)),
                strict=True,
            )
            tree, nodes = _merkle.extend_tree(tree, leaves)
            await con.execute(
                _WRITE_BATCH,
                *(list(c) for c in audit_columns),
                *_columns(nodes, 3),
                *_columns(outbox_rows, 4),
                seq,
                prev_hash,
                tree.to_bytes(),
            )
            if approval_rows:  # policy engine
                await con.executemany(_INSERT_POLICY_APPROVAL, approval_rows)
        return results

    # --- approvals and registration ceremonies ---------------------------------------

    async def insert_approval(self, record: ApprovalRecord) -> None:
        async with self._conn("insert_approval") as con:
            await con.execute(_INSERT_APPROVAL, *approval_values(record))

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        async with self._conn("get_approval") as con:
            row = await con.fetchrow(APPROVAL_SELECT + " WHERE id = $1", approval_id)
        return None if row is None else approval_from_row(row)

    async def get_approval_by_nonce(self, nonce: bytes) -> ApprovalRecord | None:
        return await self._approvals_by_nonce.get(bytes(nonce))

    async def _fetch_approvals_by_nonce(self, nonces: list[bytes]) -> dict[bytes, ApprovalRecord]:
        async with self._conn("get_approval_by_nonce") as con:
            rows = await con.fetch(_SELECT_APPROVALS_BY_NONCE, nonces)
        records = (approval_from_row(r) for r in rows)
        return {r.nonce: r for r in records}  # nonce is UNIQUE

    async def get_approvals_by_nonces(self, nonces: Sequence[bytes]) -> dict[bytes, ApprovalRecord]:
        wanted = list(dict.fromkeys(nonces))
        return await self._fetch_approvals_by_nonce(wanted) if wanted else {}

    async def list_due_approvals(self, now: float, limit: int) -> list[ApprovalRecord]:
        async with self._conn("list_due_approvals") as con:
            rows = await con.fetch(
                APPROVAL_SELECT
                + " WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
                now,
                limit,
            )
        return [approval_from_row(r) for r in rows]

    async def insert_registration(self, challenge: RegistrationChallenge) -> None:
        async with self._conn("insert_registration") as con, con.transaction():
            # Ceremonies are short-lived: drop the long-expired ones as we go.
            await con.execute(
                "DELETE FROM webauthn_challenges WHERE expires_at < $1",
                challenge.created_at - 3600,
            )
            await con.execute(
                "INSERT INTO webauthn_challenges (token_hash, sub, challenge, options_json, "
                "created_at, expires_at, used) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                challenge.token_hash,
                challenge.sub,
                challenge.challenge,
                challenge.options_json,
                challenge.created_at,
                challenge.expires_at,
                challenge.used,
            )

    async def get_registration(self, token_hash: bytes, now: float) -> RegistrationChallenge | None:
        async with self._conn("get_registration") as con:
            row = await con.fetchrow(
                REGISTRATION_SELECT + " WHERE token_hash = $1 AND NOT used AND expires_at > $2",
                token_hash,
                now,
            )
        return None if row is None else registration_from_row(row)

    async def consume_registration(
        self, token_hash: bytes, now: float
    ) -> RegistrationChallenge | None:
        async with self._conn("consume_registration") as con:
            row = await con.fetchrow(
                "UPDATE webauthn_challenges SET used = true "
                "WHERE token_hash = $1 AND NOT used AND expires_at > $2 "
                "RETURNING token_hash, sub, challenge, options_json, created_at, expires_at, used",
                token_hash,
                now,
            )
        return None if row is None else registration_from_row(row)

    async def chain_head(self) -> ChainHead:
        async with self._conn("chain_head") as con:
            row = await con.fetchrow("SELECT seq, entry_hash FROM chain_head WHERE id = 1")
        if row is None:
            raise StoreUnavailable("chain head missing: database not migrated")
        return ChainHead(seq=int(row[0]), entry_hash=bytes(row[1]))

    async def get_audit(self, event_id: str) -> AuditRecord | None:
        async def query(con: Any) -> Any:
            return await con.fetchrow(AUDIT_SELECT + " WHERE event_id = $1", event_id)

        row = await self._read("get_audit", query)
        return None if row is None else audit_record_from_row(row)

    async def list_audit(
        self, flt: AuditFilter, limit: int, cursor: str | None = None
    ) -> AuditPage:
        check_limit(limit)
        before = decode_cursor(cursor) if cursor is not None else None
        where, params = audit_where(flt, before, lambda n: f"${n}")
        # Only "$n" placeholders are interpolated; every value is a bound parameter.
        sql = AUDIT_SELECT + where + f" ORDER BY seq DESC LIMIT ${len(params) + 1}"

        async def query(con: Any) -> Any:
            return await con.fetch(sql, *params, limit + 1)

        rows = await self._read("list_audit", query)
        records = [audit_record_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(
            records=records, next_cursor=encode_cursor(records[-1].seq) if more else None
        )

    async def iter_audit(self, from_seq: int = 1) -> AsyncIterator[AuditRecord]:
        sql = AUDIT_SELECT + " WHERE seq >= $1 ORDER BY seq LIMIT $2"
        next_seq = from_seq
        while True:
            async with self._conn("iter_audit") as con:
                rows = await con.fetch(sql, next_seq, ITER_CHUNK)
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
        async with self._conn("upsert_webhook_subscription") as con:
            await con.execute(
                "INSERT INTO webhook_subscriptions (" + SUBSCRIPTION_COLUMNS + ") "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET "
                "url = excluded.url, events = excluded.events, "
                "secret_key_id = excluded.secret_key_id, secret_ct = excluded.secret_ct, "
                "source = excluded.source, deleted_at = NULL",
                *subscription_values(sub),
            )

    async def insert_webhook_subscription(self, sub: WebhookSubscription) -> None:
        try:
            async with self._conn("insert_webhook_subscription") as con:
                await con.execute(
                    "INSERT INTO webhook_subscriptions (" + SUBSCRIPTION_COLUMNS + ") "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    *subscription_values(sub),
                )
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise DuplicateKey(f"webhook subscription {sub.id!r} already exists") from exc

    async def get_webhook_subscription(self, sub_id: str) -> WebhookSubscription | None:
        async with self._conn("get_webhook_subscription") as con:
            row = await con.fetchrow(
                SUBSCRIPTION_SELECT + " WHERE id = $1 AND deleted_at IS NULL",
                sub_id,
            )
        return None if row is None else subscription_from_row(row)

    async def list_webhook_subscriptions(self) -> list[WebhookSubscription]:
        async with self._conn("list_webhook_subscriptions") as con:
            rows = await con.fetch(
                SUBSCRIPTION_SELECT + " WHERE deleted_at IS NULL ORDER BY created_at, id"
            )
        return [subscription_from_row(r) for r in rows]

    async def delete_webhook_subscription(self, sub_id: str, at: float) -> bool:
        async with self._conn("delete_webhook_subscription") as con:
            status = await con.execute(
                "UPDATE webhook_subscriptions SET deleted_at = $1 "
                "WHERE id = $2 AND deleted_at IS NULL",
                at,
                sub_id,
            )
        return bool(status == "UPDATE 1")

    async def fan_out_outbox(self, now: float, limit: int) -> int:
        async with self._conn("fan_out_outbox") as con:
            # The worker wakes after every burst of events; usually (always, while no
            # subscription is live) there is nothing to expand: one cheap read, not a
            # BEGIN/SELECT/COMMIT.
            if not await con.fetchval(_ANY_PENDING_OUTBOX):
                return 0
            return await self._fan_out(con, now, limit)

    async def _fan_out(self, con: Any, now: float, limit: int) -> int:
        async with con.transaction():
            # SKIP LOCKED: instances expand disjoint sets of rows instead of queueing.
            rows = await con.fetch(
                "SELECT id, event_id, event_type, created_at FROM outbox "
                "WHERE status = 'pending' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            if not rows:
                return 0
            subs = [
                subscription_from_row(r)
                for r in await con.fetch(SUBSCRIPTION_SELECT + " WHERE deleted_at IS NULL")
            ]
            deliveries = [
                (webhook_delivery_id(r[1], r[2], sub.id), r[0], sub.id, r[2])
                for r in rows
                for sub in matching_subscriptions(subs, r[2], float(r[3]))
            ]
            if deliveries:
                await con.executemany(
                    "INSERT INTO webhook_deliveries (id, outbox_id, subscription_id, "
                    "event_type, created_at, window_start, next_attempt_at) "
                    "VALUES ($1, $2, $3, $4, $5, $5, $5) ON CONFLICT DO NOTHING",
                    [(*d, now) for d in deliveries],
                )
            await con.execute(
                "UPDATE outbox SET status = 'delivered', delivered_at = $1 "
                "WHERE id = ANY($2::bigint[])",
                now,
                [r[0] for r in rows],
            )
        return len(rows)

    async def claim_due_deliveries(
        self, now: float, limit: int, lease_seconds: float, worker_id: str
    ) -> list[DeliveryTask]:
        # One statement (its own transaction): lease the due rows and return them with
        # their task data. The outer SELECT reads the snapshot from before the UPDATE,
        # which changes only lease columns, none of which it returns.
        async with self._conn("claim_due_deliveries") as con:
            rows = await con.fetch(
                _CLAIM_DUE_DELIVERIES, worker_id, now + lease_seconds, now, limit
            )
        return [task_from_row(r) for r in rows]

    async def _leased_update(self, what: str, sql: str, *params: Any) -> bool:
        async with self._conn(what) as con:
            status = await con.execute(sql, *params)
        return bool(status == "UPDATE 1")

    async def mark_delivered(
        self, delivery_id: str, worker_id: str, at: float, status_code: int
    ) -> bool:
        return await self._leased_update(
            "mark_delivered",
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, "
            "delivered_at = $1, last_status = $2, last_error = NULL, lease_owner = NULL, "
            "lease_until = NULL WHERE id = $3 AND lease_owner = $4 AND status = 'pending'",
            at,
            status_code,
            delivery_id,
            worker_id,
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
            "mark_failed",
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $1, "
            "last_status = $2, last_error = $3, lease_owner = NULL, lease_until = NULL "
            "WHERE id = $4 AND lease_owner = $5 AND status = 'pending'",
            next_attempt_at,
            status_code,
            error[:MAX_WEBHOOK_ERROR],
            delivery_id,
            worker_id,
        )

    async def mark_dead(
        self, delivery_id: str, worker_id: str, error: str, status_code: int | None
    ) -> bool:
        return await self._leased_update(
            "mark_dead",
            "UPDATE webhook_deliveries SET status = 'dead', attempts = attempts + 1, "
            "last_status = $1, last_error = $2, lease_owner = NULL, lease_until = NULL "
            "WHERE id = $3 AND lease_owner = $4 AND status = 'pending'",
            status_code,
            error[:MAX_WEBHOOK_ERROR],
            delivery_id,
            worker_id,
        )

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        async with self._conn("get_delivery") as con:
            row = await con.fetchrow(
                "SELECT " + DELIVERY_COLUMNS + DELIVERY_FROM + " WHERE d.id = $1", delivery_id
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
        sql = "SELECT " + DELIVERY_COLUMNS + DELIVERY_FROM + " WHERE d.subscription_id = $1"
        params: list[Any] = [subscription_id]
        if status is not None:
            params.append(status)
            sql += f" AND d.status = ${len(params)}"
        if cursor is not None:
            created_at, last_id = decode_delivery_cursor(cursor)
            params += [created_at, last_id]
            a, b = len(params) - 1, len(params)
            sql += f" AND (d.created_at < ${a} OR (d.created_at = ${a} AND d.id < ${b}))"
        params.append(limit + 1)
        sql += f" ORDER BY d.created_at DESC, d.id DESC LIMIT ${len(params)}"
        async with self._conn("list_deliveries") as con:
            rows = await con.fetch(sql, *params)
        deliveries = [delivery_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        last = deliveries[-1] if deliveries else None
        return DeliveryPage(
            deliveries=deliveries,
            next_cursor=encode_delivery_cursor(last.created_at, last.id) if more and last else None,
        )

    async def replay_delivery(self, delivery_id: str, now: float) -> WebhookDelivery | None:
        async with self._conn("replay_delivery") as con, con.transaction():
            await con.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, "
                "window_start = $1, lease_owner = NULL, lease_until = NULL "
                "WHERE id = $2 AND status IN ('dead', 'delivered')",
                now,
                delivery_id,
            )
            row = await con.fetchrow(
                "SELECT " + DELIVERY_COLUMNS + DELIVERY_FROM + " WHERE d.id = $1", delivery_id
            )
        return None if row is None else delivery_from_row(row)

    # --- end webhooks ------------------------------------------------------------------------------
    # --- Merkle log ------------------------------------------------------------------

    async def merkle_tree(self) -> CompactTree:
        async with self._conn("merkle_tree") as con:
            raw = await con.fetchval("SELECT merkle_frontier FROM chain_head WHERE id = 1")
        if raw is None:
            raise StoreUnavailable("chain head missing: database not migrated")
        return CompactTree.from_bytes(bytes(raw))

    async def perfect_roots(self, nodes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        wanted = list(dict.fromkeys(nodes))
        leaves = [idx + 1 for level, idx in wanted if level == 0]
        inner = [(level, idx) for level, idx in wanted if level > 0]
        found: dict[tuple[int, int], bytes] = {}
        # Primary only: a lagging replica could miss nodes of a checkpoint just signed.
        async with self._conn("perfect_roots") as con:
            if leaves:
                for row in await con.fetch(
                    "SELECT seq, leaf_hash FROM audit WHERE seq = ANY($1::bigint[])", leaves
                ):
                    if row[1] is not None:
                        found[(0, int(row[0]) - 1)] = bytes(row[1])
            if inner:
                for row in await con.fetch(
                    "SELECT n.level, n.idx, n.hash FROM merkle_nodes n JOIN unnest("
                    "$1::int[], $2::bigint[]) AS w(level, idx) "
                    "ON n.level = w.level AND n.idx = w.idx",
                    [lv for lv, _ in inner],
                    [ix for _, ix in inner],
                ):
                    found[(int(row[0]), int(row[1]))] = bytes(row[2])
        return found

    async def log_entries(self, start: int, end: int) -> list[LogEntry]:
        if start < 0 or end < start or end - start > MAX_LOG_ENTRIES:
            raise ValueError(f"need 0 <= start <= end <= start + {MAX_LOG_ENTRIES}")
        sql = AUDIT_SELECT.replace(" FROM audit", ", leaf_hash FROM audit")
        async with self._conn("log_entries") as con:
            rows = await con.fetch(sql + " WHERE seq > $1 AND seq <= $2 ORDER BY seq", start, end)
        return [
            LogEntry(audit_record_from_row(tuple(r)[:-1]), None if r[-1] is None else bytes(r[-1]))
            for r in rows
        ]

    async def save_checkpoint(self, checkpoint: CheckpointRecord) -> CheckpointRecord:
        c = checkpoint
        async with self._conn("save_checkpoint") as con, con.transaction():
            await con.execute(
                "INSERT INTO checkpoints (size, root, note, created_at, key_id) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (size) DO NOTHING",
                c.size,
                c.root,
                c.note,
                c.created_at,
                c.key_id,
            )
            row = await con.fetchrow(SELECT_CHECKPOINT + " WHERE size = $1", c.size)
        return checkpoint_from_row(row)

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        async with self._conn("latest_checkpoint") as con:
            row = await con.fetchrow(SELECT_CHECKPOINT + " ORDER BY size DESC LIMIT 1")
        return None if row is None else checkpoint_from_row(row)

    async def get_checkpoint(self, size: int) -> CheckpointRecord | None:
        async with self._conn("get_checkpoint") as con:
            row = await con.fetchrow(SELECT_CHECKPOINT + " WHERE size = $1", size)
        return None if row is None else checkpoint_from_row(row)

    async def log_key_history(self) -> list[LogKeyRecord]:
        async with self._conn("log_key_history") as con:
            rows = await con.fetch(SELECT_LOG_KEY + " ORDER BY created_at, key_id")
        return [log_key_from_row(r) for r in rows]

    async def add_log_key(self, record: LogKeyRecord) -> bool:
        r = record
        async with self._conn("add_log_key") as con:
            status = await con.execute(
                "INSERT INTO log_keys (key_id, public_key, created_at, rotated_from, "
                "rotation_note) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
                r.key_id,
                r.public_key,
                r.created_at,
                r.rotated_from,
                r.rotation_note,
            )
        return bool(status == "INSERT 0 1")

    # --- end Merkle log ------------------------------------------------------------------------


# --- Merkle log ----------------------------------------------------------------------
_INSERT_NODES = (
    "INSERT INTO merkle_nodes (level, idx, hash) "
    "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[])"
)


async def _rebuild_merkle(con: Any) -> int:
    """Recompute leaf hashes, nodes and frontier from the rows in seq order (backfill)."""
    await con.execute("DELETE FROM merkle_nodes")
    tree = CompactTree()
    last = 0
    while True:
        rows = await con.fetch(
            AUDIT_SELECT + " WHERE seq > $1 ORDER BY seq LIMIT $2", last, ITER_CHUNK
        )
        chunk = [audit_record_from_row(r) for r in rows]
        if not chunk:
            break
        leaves = [_merkle.record_leaf_hash(r) for r in chunk]
        await con.execute(
            "UPDATE audit SET leaf_hash = u.h FROM unnest($1::bigint[], $2::bytea[]) AS u(s, h) "
            "WHERE audit.seq = u.s",
            [r.seq for r in chunk],
            leaves,
        )
        tree, nodes = _merkle.extend_tree(tree, leaves)
        if nodes:
            await con.execute(_INSERT_NODES, *(list(c) for c in zip(*nodes, strict=True)))
        last = chunk[-1].seq
    await con.execute("UPDATE chain_head SET merkle_frontier = $1 WHERE id = 1", tree.to_bytes())
    return tree.size


# --- end Merkle log ---------------------------------------------------------------------------

# --- policy engine -------------------------------------------------------------------
_INSERT_POLICY_APPROVAL = (
    "INSERT INTO policy_approvals (tx_key, sub, proof_id, rule, roles, at) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tx_key, sub) DO NOTHING"
)


def _policy_approval_values(a: PolicyApproval) -> tuple[Any, ...]:
    return (a.tx_key, a.sub, a.proof_id, a.rule, list(a.roles), a.at)


# --- end policy engine -------------------------------------------------------------------------
