"""ReadCoalescer (PostgreSQL store): concurrent point reads share a query, never a stale one."""

from __future__ import annotations

import asyncio

import pytest

from proof_messenger.store.base import StoreError, StoreUnavailable
from proof_messenger.store.postgres import ReadCoalescer

pytestmark = pytest.mark.asyncio


class FakeTable:
    """A dict behind a 'query' that takes one loop pass and records what it was asked."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.queries: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None
        self.sent = asyncio.Event()  # set when a query has been sent

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.queries.append(keys)
        self.sent.set()
        snapshot = {k: self.rows[k] for k in keys if k in self.rows}  # the query's snapshot
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return snapshot


async def test_reads_asked_together_share_one_query() -> None:
    table = FakeTable()
    table.rows = {"a": 1, "b": 2}
    reads = ReadCoalescer(table.fetch)
    got = await asyncio.gather(reads.get("a"), reads.get("b"), reads.get("a"), reads.get("zz"))
    assert list(got) == [1, 2, 1, None]
    assert table.queries == [["a", "b", "zz"]]


async def test_a_read_never_joins_a_query_already_sent() -> None:
    """A change committed after a query was sent but before a later read is seen by it:
    e.g. an API key revoked between two requests is refused on the second at once."""
    table = FakeTable()
    table.rows = {"k": 1}
    table.gate = asyncio.Event()
    reads = ReadCoalescer(table.fetch)
    first = asyncio.create_task(reads.get("k"))
    await table.sent.wait()  # the first query is in flight
    table.rows["k"] = 2  # "revoked" after that query took its snapshot
    second = asyncio.create_task(reads.get("k"))
    await asyncio.sleep(0.01)
    assert table.queries == [["k"]]  # the second read waits for its own query
    table.gate.set()
    assert await first == 1
    assert await second == 2
    assert table.queries == [["k"], ["k"]]


async def test_errors_reach_every_caller_and_the_next_query_runs() -> None:
    table = FakeTable()
    table.rows = {"a": 1}
    table.fail = StoreUnavailable("down")
    reads = ReadCoalescer(table.fetch)
    results = await asyncio.gather(reads.get("a"), reads.get("b"), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert results[0] is not results[1]  # one exception object per caller
    table.fail = ValueError("driver bug")
    (result,) = await asyncio.gather(reads.get("a"), return_exceptions=True)
    assert isinstance(result, StoreError)
    table.fail = None
    assert await reads.get("a") == 1


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    table = FakeTable()
    table.rows = {"a": 1}
    table.gate = asyncio.Event()
    reads = ReadCoalescer(table.fetch)
    gone = asyncio.create_task(reads.get("a"))
    stays = asyncio.create_task(reads.get("a"))
    await table.sent.wait()
    gone.cancel()
    table.gate.set()
    assert await stays == 1
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await reads.get("a") == 1
