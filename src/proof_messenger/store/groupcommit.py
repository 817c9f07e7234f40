"""Group commit: many concurrent ``append()`` calls share one database transaction.

One writer task drains the queue, taking whatever is queued when the previous commit
finishes (no artificial delay), up to ``max_batch`` items, and hands the batch to the
backend's ``commit`` function, which runs ONE transaction for it. Every caller's future is
resolved only after COMMIT, or failed with :class:`StoreUnavailable` if the transaction
rolled back. The writer task survives failures, so the store recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .base import AppendResult, AuditDraft, OutboxEvent, StoreError, StoreUnavailable

__all__ = ["GroupCommitter", "PendingAppend"]


@dataclass(slots=True)
class PendingAppend:
    draft: AuditDraft
    claim_digest: bytes | None
    outbox: Sequence[OutboxEvent]
    future: asyncio.Future[AppendResult] = field(repr=False)


CommitFn = Callable[[list[PendingAppend]], Awaitable[list[AppendResult]]]


class GroupCommitter:
    def __init__(self, commit: CommitFn, *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._commit = commit
        self._max_batch = max_batch
        self._queue: asyncio.Queue[PendingAppend] | None = None
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

    async def stop(self) -> None:
        """Stop the writer; callers still queued get StoreUnavailable."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        queue = self._queue
        while queue is not None and not queue.empty():
            item = queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(StoreUnavailable("store closed"))

    async def submit(
        self,
        draft: AuditDraft,
        claim_digest: bytes | None,
        outbox: Sequence[OutboxEvent],
    ) -> AppendResult:
        if self._closed or self._queue is None or self._task is None:
            raise StoreUnavailable("store is not open")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingAppend(draft, claim_digest, tuple(outbox), future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            # A caller that gave up before its turn gets nothing written.
            batch = [item for item in batch if not item.future.done()]
            if batch:
                await self._commit_batch(batch)

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
        except StoreError as exc:
            # Not an availability problem (e.g. a duplicate event_id): isolate the
            # offending item so one bad caller cannot fail everyone else's append.
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            for item in batch:
                await self._commit_batch([item])
            return
        except Exception as exc:  # never let the writer task die
            self._fail(batch, StoreUnavailable(f"audit append failed: {exc!r}"))
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[PendingAppend], exc: StoreError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)
