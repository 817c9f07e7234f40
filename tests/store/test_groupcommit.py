"""GroupCommitter batching: a pause between commits only while there is load."""

from __future__ import annotations

import asyncio

import pytest

from proof_messenger.store.base import AppendResult
from proof_messenger.store.groupcommit import GroupCommitter, PendingAppend
from tests.store.conftest import make_draft


class Recorder:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate: asyncio.Event | None = None

    async def commit(self, batch: list[PendingAppend]) -> list[AppendResult]:
        self.batches.append(len(batch))
        if self.gate is not None:
            await self.gate.wait()
        return [AppendResult(record=None) for _ in batch]


async def test_a_lone_caller_is_not_delayed() -> None:
    rec = Recorder()
    gc = GroupCommitter(rec.commit, min_interval=0.9)  # five pauses would time out
    gc.start()
    try:
        for i in range(5):
            await asyncio.wait_for(gc.submit(make_draft(i), None, ()), timeout=0.5)
        assert rec.batches == [1, 1, 1, 1, 1]
    finally:
        await gc.stop()


async def test_under_load_the_pause_gathers_one_bigger_batch() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    gc = GroupCommitter(rec.commit, min_interval=0.3)
    gc.start()
    try:
        first = asyncio.ensure_future(gc.submit(make_draft(0), None, ()))
        await asyncio.sleep(0.01)  # the first commit is running (held at the gate)
        second = [asyncio.ensure_future(gc.submit(make_draft(i), None, ())) for i in range(5)]
        await asyncio.sleep(0.01)
        rec.gate.set()  # the first commit ends with rows queued: load
        await first
        await asyncio.sleep(0.05)  # inside the pause: these join the same batch
        third = [asyncio.ensure_future(gc.submit(make_draft(i), None, ())) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*second, *third), timeout=10)
        assert rec.batches == [1, 10]
    finally:
        await gc.stop()


def test_interval_is_validated() -> None:
    async def commit(batch: list[PendingAppend]) -> list[AppendResult]:
        return []

    with pytest.raises(ValueError, match="min_interval"):
        GroupCommitter(commit, min_interval=-1)
