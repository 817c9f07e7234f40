"""Group commit: many concurrent ``append()`` calls share one database transaction.

One writer task hands the backend's ``commit`` function a ``take`` callable; the backend
calls it once it may write and gets whatever is queued then (no artificial delay), up to
``max_batch`` items, and runs ONE transaction for it. The queue holds groups:
``submit`` queues a group of one, ``submit_many`` (``/verify/batch``) queues all of a
call's rows as one group, which is never split across transactions (a group larger than
``max_batch`` is committed whole, alone or with the groups that fit before it). Every caller's future is
resolved only after COMMIT, or failed with :class:`StoreUnavailable` if the transaction
rolled back. The writer task survives failures, so the store recovers by itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .base import (
    AppendEntry,
    AppendResult,
    ApprovalTransition,
    AuditDraft,
    CommitObserver,
    OutboxEvent,
    PolicyApproval,
    ReplayKey,
    StoreError,
    StoreUnavailable,
)

__all__ = ["CommitObserver", "GroupCommitter", "PendingAppend", "check_draft"]

_log = logging.getLogger(__name__)

_INT64 = 2**63
_STATUSES = frozenset({"accepted", "rejected", "info"})


def check_draft(draft: AuditDraft) -> None:
    """Reject a draft that could never be written, before it joins (and fails) a batch."""
    if not math.isfinite(draft.time) or draft.time < 0:
        raise ValueError("audit time must be a finite, non-negative number of seconds")
    if draft.status not in _STATUSES:
        raise ValueError(f"audit status must be one of {sorted(_STATUSES)}")
    if draft.amount_minor is not None and not -_INT64 <= draft.amount_minor < _INT64:
        raise ValueError("amount_minor does not fit in 64 bits")
    if not draft.event_id or not draft.event_type:
        raise ValueError("audit event_id and event_type must be non-empty")


@dataclass(slots=True)
class PendingAppend:
    draft: AuditDraft
    claim: ReplayKey | None
    outbox: Sequence[OutboxEvent]
    future: asyncio.Future[AppendResult] = field(repr=False)
    # an approval compare-and-set run in the batch's transaction with this row.
    approval: ApprovalTransition | None = None
    #: Policy engine: an N-of-M approval row written with the audit row.
    policy_approval: PolicyApproval | None = None


CommitFn = Callable[[Callable[[], list[PendingAppend]]], Awaitable[list[AppendResult]]]
"""``commit(take)``: once the backend may write (e.g. holds its cross-process write lock),
it calls ``take()`` for the batch, commits it in ONE transaction and returns one result
per row, in order. ``take()`` may return ``[]`` (every caller gave up, or the committer
stopped): then nothing is written and the result is ``[]``. ``take`` may be called on the
backend's writer thread."""


class GroupCommitter:
    def __init__(self, commit: CommitFn, *, max_batch: int = 256) -> None:
        """The batch is taken only when the backend is ready to write (``commit`` calls
        ``take``). For SQLite that is on the writer thread once the cross-process write
        lock is held: appends that arrive while another process commits join this batch
        (fewer, bigger durable commits), and a batch costs one thread hop, not two."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._commit = commit
        self._max_batch = max_batch
        #: Queued groups. The event loop appends; ``_take`` pops, possibly on the backend's
        #: writer thread (deque append and popleft are atomic; one ``_take`` at a time).
        self._pending: collections.deque[list[PendingAppend]] = collections.deque()
        #: The rows of the batch being committed, and the lock that keeps ``stop`` from
        #: failing rows while ``_take`` moves them from the queue to this list.
        self._current: list[PendingAppend] = []
        self._take_lock = threading.Lock()
        self._abandoned = False
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Told about every commit (see CommitObserver); the relay feeds its metrics.
        self.observer: CommitObserver | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self._closed = self._abandoned = False
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="proof-messenger-group-commit"
        )

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Refuse new appends, let queued ones commit (up to ``drain_timeout``), then stop.

        Draining matters on shutdown: a caller whose batch is mid-transaction must hear
        the real outcome, not "closed" for a row that then commits anyway.
        """
        self._closed = True
        task, idle = self._task, self._idle
        if task is not None and idle is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), timeout=drain_timeout)
        self._task = None
        with self._take_lock:  # a commit still running on a thread takes nothing more
            self._abandoned = True
            current, self._current = self._current, []
            left = [item for group in self._pending for item in group]
            self._pending.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail(current, StoreUnavailable("store closed during commit"))
        self._fail(left, StoreUnavailable("store closed"))

    async def submit(
        self,
        draft: AuditDraft,
        claim: ReplayKey | None,
        outbox: Sequence[OutboxEvent],
        approval: ApprovalTransition | None = None,
        policy_approval: PolicyApproval | None = None,
    ) -> AppendResult:
        self._check_open()
        check_draft(draft)
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue([PendingAppend(draft, claim, tuple(outbox), future, approval, policy_approval)])
        return await future

    async def submit_many(self, entries: Sequence[AppendEntry]) -> list[AppendResult]:
        """Append many rows as ONE queued group: one transaction, results in order.

        Costs one queue operation per call instead of one per row, and the rows of one
        ``/verify/batch`` call are contiguous in the chain. Each row keeps its own result
        (a lost replay claim writes nothing for that row only). Returns after the commit;
        a cancelled caller cancels every row not yet committed, as ``submit`` does.
        """
        self._check_open()
        if not entries:
            return []
        create = asyncio.get_running_loop().create_future
        group: list[PendingAppend] = []
        for draft, claim, outbox in entries:
            check_draft(draft)
            group.append(PendingAppend(draft, claim, tuple(outbox), create()))
        self._queue(group)
        try:
            # All futures of a group are resolved by the same commit: after the first
            # await the others are done, and awaiting a done future does not suspend.
            return [await item.future for item in group]
        except BaseException:
            for item in group:
                future = item.future
                if not future.done():
                    future.cancel()  # the caller gave up: write nothing more for it
                elif not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" warnings
            raise

    def _check_open(self) -> None:
        if self._closed or self._task is None:
            raise StoreUnavailable("store is not open")

    def _queue(self, group: list[PendingAppend]) -> None:
        assert self._wake is not None and self._idle is not None
        self._pending.append(group)
        self._idle.clear()
        self._wake.set()

    def _take(self) -> list[PendingAppend]:
        """The next batch: whole groups, the first one even if it exceeds ``max_batch``,
        more while they fit; rows whose caller gave up are left out."""
        with self._take_lock:
            pending, batch, size = self._pending, self._current, 0
            while pending and not self._abandoned:
                group = pending[0]
                if size and size + len(group) > self._max_batch:
                    break  # whole groups only: this one starts the next batch
                pending.popleft()
                size += len(group)
                batch.extend(item for item in group if not item.future.done())
                if size >= self._max_batch:
                    break
            return list(batch)

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        wake, idle, pending = self._wake, self._idle, self._pending
        while True:
            if not pending:
                idle.set()
                wake.clear()
                await wake.wait()
                continue
            await self._commit_next()

    async def _commit_next(self) -> None:
        self._current = []
        try:
            results, wait, duration = await self._timed_commit(self._take)
        except asyncio.CancelledError:
            raise  # stop() fails the rows of this batch
        except Exception as exc:  # never let the writer task die
            # Failed before taking (e.g. the write lock): the batch it would have taken fails.
            batch = self._current or self._take()
            self._current = []
            if isinstance(exc, StoreUnavailable) or len(batch) <= 1:
                self._fail(batch, _store_error(exc))
            else:
                await self._retry_one_by_one(batch)
            return
        batch, self._current = self._current, []
        self._resolve(batch, results)
        self._observe(len(batch), wait, duration)

    async def _timed_commit(
        self, take: Callable[[], list[PendingAppend]]
    ) -> tuple[list[AppendResult], float, float]:
        """``commit(take)``, with its wait and duration (see ``CommitObserver``)."""
        clock = time.perf_counter
        started = taken = clock()

        def timed_take() -> list[PendingAppend]:
            nonlocal taken
            taken = clock()
            return take()

        results = await self._commit(timed_take)
        return results, taken - started, clock() - taken

    def _observe(self, rows: int, wait: float, duration: float) -> None:
        observer = self.observer
        if observer is None or not rows:
            return
        try:
            observer(rows, wait, duration)
        except Exception:  # the rows are committed and answered whatever it does
            _log.exception("group commit observer failed")

    async def _retry_one_by_one(self, batch: list[PendingAppend]) -> None:
        """Not an availability problem (e.g. a duplicate event_id): the whole batch rolled
        back; each row alone, so one bad draft cannot fail everyone else's append."""
        for item in batch:
            if item.future.done():
                continue
            self._current = [item]  # what stop() fails if it cancels this commit

            def take(item: PendingAppend = item) -> list[PendingAppend]:
                return [] if self._abandoned else [item]

            try:
                results, wait, duration = await self._timed_commit(take)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fail([item], _store_error(exc))
            else:
                if results:  # [] only when stop() abandoned it (and failed it)
                    self._resolve([item], results)
                    self._observe(len(results), wait, duration)
            self._current = []

    @staticmethod
    def _resolve(batch: list[PendingAppend], results: list[AppendResult]) -> None:
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[PendingAppend], exc: StoreError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)


def _store_error(exc: Exception) -> StoreError:
    return exc if isinstance(exc, StoreError) else StoreError(f"audit append failed: {exc!r}")
