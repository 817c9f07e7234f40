"""Group commit: many concurrent ``append()`` calls share one database transaction.

One writer task drains the queue, taking whatever is queued when the previous commit
finishes (no artificial delay), up to ``max_batch`` items, and hands the batch to the
backend's ``commit`` function, which runs ONE transaction for it. The queue holds groups:
``submit`` queues a group of one, ``submit_many`` (``/verify/batch``) queues all of a
call's rows as one group, which is never split across transactions (a group larger than
``max_batch`` is committed whole, alone or with the groups that fit before it). Every caller's future is
resolved only after COMMIT, or failed with :class:`StoreUnavailable` if the transaction
rolled back. The writer task survives failures, so the store recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .base import (
    AppendEntry,
    AppendResult,
    ApprovalTransition,
    AuditDraft,
    OutboxEvent,
    PolicyApproval,
    StoreError,
    StoreUnavailable,
)

__all__ = ["GroupCommitter", "PendingAppend", "check_draft"]

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
    claim_digest: bytes | None
    outbox: Sequence[OutboxEvent]
    future: asyncio.Future[AppendResult] = field(repr=False)
    # an approval compare-and-set run in the batch's transaction with this row.
    approval: ApprovalTransition | None = None
    #: Policy engine: an N-of-M approval row written with the audit row.
    policy_approval: PolicyApproval | None = None


CommitFn = Callable[[list[PendingAppend]], Awaitable[list[AppendResult]]]
#: Optional: wait for the database's write turn before a batch is drained (see __init__).
TurnFn = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


class GroupCommitter:
    def __init__(
        self,
        commit: CommitFn,
        *,
        max_batch: int = 256,
        take_turn: TurnFn | None = None,
    ) -> None:
        """``take_turn`` (optional) waits until this process may write (e.g. a cross-process
        lock) and returns an async ``give_back`` for the case that nothing is committed.
        The batch is drained only after the turn is taken, so appends that arrive while
        another process commits join this batch: fewer, bigger durable commits."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._commit = commit
        self._take_turn = take_turn
        self._max_batch = max_batch
        self._queue: asyncio.Queue[list[PendingAppend]] | None = None
        #: A group taken from the queue that did not fit the last batch: it starts the next.
        self._carry: list[PendingAppend] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is not None:
            return
        self._closed = False
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="proof-messenger-group-commit"
        )

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Refuse new appends, let queued ones commit (up to ``drain_timeout``), then stop.

        Draining matters on shutdown: a caller whose batch is mid-transaction must hear
        the real outcome, not "closed" for a row that then commits anyway.
        """
        self._closed = True
        task, queue = self._task, self._queue
        if task is not None and queue is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), timeout=drain_timeout)
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        queue = self._queue
        carried, self._carry = self._carry, None
        for item in carried or ():
            if not item.future.done():
                item.future.set_exception(StoreUnavailable("store closed"))
        while queue is not None and not queue.empty():
            for item in queue.get_nowait():
                if not item.future.done():
                    item.future.set_exception(StoreUnavailable("store closed"))

    async def submit(
        self,
        draft: AuditDraft,
        claim_digest: bytes | None,
        outbox: Sequence[OutboxEvent],
        approval: ApprovalTransition | None = None,
        policy_approval: PolicyApproval | None = None,
    ) -> AppendResult:
        if self._closed or self._queue is None or self._task is None:
            raise StoreUnavailable("store is not open")
        check_draft(draft)
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(
            [PendingAppend(draft, claim_digest, tuple(outbox), future, approval, policy_approval)]
        )
        return await future

    async def submit_many(self, entries: Sequence[AppendEntry]) -> list[AppendResult]:
        """Append many rows as ONE queued group: one transaction, results in order.

        Costs one queue operation per call instead of one per row, and the rows of one
        ``/verify/batch`` call are contiguous in the chain. Each row keeps its own result
        (a lost replay claim writes nothing for that row only). Returns after the commit;
        a cancelled caller cancels every row not yet committed, as ``submit`` does.
        """
        if self._closed or self._queue is None or self._task is None:
            raise StoreUnavailable("store is not open")
        if not entries:
            return []
        create = asyncio.get_running_loop().create_future
        group: list[PendingAppend] = []
        for draft, claim_digest, outbox in entries:
            check_draft(draft)
            group.append(PendingAppend(draft, claim_digest, tuple(outbox), create()))
        self._queue.put_nowait(group)
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

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            carried, self._carry = self._carry, None
            groups = [carried if carried is not None else await queue.get()]
            give_back = None
            try:
                if self._take_turn is not None:
                    try:
                        give_back = await self._take_turn()
                    except StoreError as exc:
                        for group in groups:
                            self._fail(group, exc)
                        continue
                size = len(groups[0])
                # Whole groups only: one that does not fit starts the next batch.
                while size < self._max_batch and not queue.empty():
                    nxt = queue.get_nowait()
                    if size + len(nxt) > self._max_batch:
                        self._carry = nxt
                        break
                    groups.append(nxt)
                    size += len(nxt)
                # A caller that gave up before its turn gets nothing written.
                batch = [item for group in groups for item in group if not item.future.done()]
                if batch:
                    give_back = None  # the commit ends the turn, whatever happens
                    await self._commit_batch(batch)
            finally:
                if give_back is not None:
                    await give_back()
                for _ in groups:
                    queue.task_done()

    async def _commit_batch(self, batch: list[PendingAppend]) -> None:
        try:
            results = await self._commit(batch)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(StoreUnavailable("store closed during commit"))
            raise
        except StoreUnavailable as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:  # never let the writer task die
            # Not an availability problem (e.g. a duplicate event_id): the whole batch
            # rolled back; retry its items one by one so one bad draft cannot fail
            # everyone else's append.
            if len(batch) > 1:
                for item in batch:
                    await self._commit_batch([item])
                return
            error = (
                exc if isinstance(exc, StoreError) else StoreError(f"audit append failed: {exc!r}")
            )
            self._fail(batch, error)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[PendingAppend], exc: StoreError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)
