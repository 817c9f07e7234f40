"""read_body: bounded, timed, and only its own timer turns into a 408."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from proof_messenger.relay.http import read_body
from proof_messenger.relay.problems import HTTPProblem


def _request(messages: list[dict[str, Any]], *, stall: bool = False) -> Request:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/verify", "headers": []}
    return Request(scope, receive)


async def test_chunks_are_joined() -> None:
    req = _request(
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False},
        ]
    )
    assert await read_body(req, 100, 5) == b"abcd"


async def test_over_the_limit_is_413() -> None:
    req = _request([{"type": "http.request", "body": b"x" * 11, "more_body": False}])
    with pytest.raises(HTTPProblem) as err:
        await read_body(req, 10, 5)
    assert err.value.status == 413


async def test_disconnect_is_400() -> None:
    req = _request([{"type": "http.request", "body": b"x", "more_body": True}])
    with pytest.raises(HTTPProblem) as err:
        await read_body(req, 10, 5)
    assert err.value.status == 400


async def test_slow_body_is_408_and_the_task_is_not_left_cancelled() -> None:
    req = _request([{"type": "http.request", "body": b"x", "more_body": True}], stall=True)
    with pytest.raises(HTTPProblem) as err:
        await read_body(req, 10, 0.05)
    assert err.value.status == 408
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # still runnable: no stray cancellation


async def test_outside_cancellation_is_not_a_408() -> None:
    req = _request([], stall=True)
    reader = asyncio.create_task(read_body(req, 10, 30))
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_timer_is_cancelled_after_a_normal_read() -> None:
    req = _request([{"type": "http.request", "body": b"ok", "more_body": False}])
    assert await read_body(req, 10, 0.01) == b"ok"
    await asyncio.sleep(0.05)  # a leftover timer would cancel this task here
