"""Request helpers shared by routes: bounded body reading, content types, JSON models."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from .problems import HTTPProblem

__all__ = [
    "FastRequest",
    "IndexedHeaders",
    "decode_model",
    "is_cbor",
    "query_int",
    "query_one",
    "read_body",
    "resource",
    "wants_cbor",
]

T = TypeVar("T")
CBOR = "application/cbor"


class IndexedHeaders(Headers):
    """Starlette's ``Headers`` with lookups through a dict built once.

    ``Headers.get`` is ``Mapping.get``: a Python call to ``__getitem__``, which scans
    the header list and raises ``KeyError`` for an absent header; ``/verify`` looks up
    six headers (most of them absent), so it pays that scan six times. Here the names
    are indexed once, with Starlette's semantics kept exactly: a name is looked up as
    ``name.lower()`` in Latin-1 against the raw names as sent (ASGI servers give them in
    lower case), the FIRST of repeated headers is the one returned (as ``__getitem__``
    returns), and everything else (``getlist``, ``items``, ``raw``...) is Starlette's.
    """

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        # dict() keeps the last value of a repeated name; reversed, that is the first.
        self._index: dict[bytes, bytes] = dict(reversed(self._list))

    def __getitem__(self, key: str) -> str:
        value = self._index.get(key.lower().encode("latin-1"))
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return key.lower().encode("latin-1") in self._index

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(key.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")


class FastRequest(Request):
    """The request of the fast path (``RelayApp``): ``headers`` are ``IndexedHeaders``."""

    @property
    def headers(self) -> Headers:
        headers: Headers | None = self.__dict__.get("_headers")
        if headers is None:
            headers = self._headers = IndexedHeaders(self.scope)
        return headers


async def read_body(request: Request, limit: int, seconds: float) -> bytes:
    """Read at most ``limit`` bytes within ``seconds`` (slow bodies get 408)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPProblem(400, "malformed_request", "Bad Content-Length")
        if int(declared) > limit:
            raise HTTPProblem(
                413,
                "payload_too_large",
                "Request body too large",
                f"the body is {declared} bytes; the limit is {limit}",
            )
    # A timer that cancels this task, rather than ``asyncio.timeout`` (a context manager
    # that costs about as much as parsing the envelope): every /verify pays for it.
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await _receive_all(request, limit)
    except asyncio.CancelledError:
        # Ours only if the timer fired and nobody else asked to cancel the task too.
        if expired and task.uncancel() == 0:
            raise HTTPProblem(
                408,
                "request_timeout",
                "Request timeout",
                f"the request body did not arrive within {seconds:g} s",
                headers={"Connection": "close"},
            ) from None
        raise
    except ClientDisconnect as exc:
        raise HTTPProblem(400, "malformed_request", "Client disconnected") from exc
    finally:
        handle.cancel()


async def _receive_all(request: Request, limit: int) -> bytes:
    """The body from the ASGI ``receive`` channel (what ``Request.stream()`` does, without
    an async generator per request)."""
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            body: bytes = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise HTTPProblem(
                    413,
                    "payload_too_large",
                    "Request body too large",
                    f"the limit is {limit} bytes",
                )
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    request._stream_consumed = True  # as Request.stream() leaves it
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def is_cbor(request: Request) -> bool:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype == CBOR:
        return True
    if ctype in ("application/json", ""):
        return False
    raise HTTPProblem(
        415,
        "unsupported_media_type",
        "Unsupported media type",
        "send application/json or application/cbor",
    )


def wants_cbor(request: Request) -> bool:
    return CBOR in request.headers.get("accept", "")


def decode_model(data: bytes, model: type[T]) -> T:
    """Decode a JSON request body into a msgspec Struct; errors become 400 problems."""
    try:
        return msgspec.json.decode(data, type=model)
    except msgspec.ValidationError as exc:
        raise HTTPProblem(400, "invalid_request", "Invalid request", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise HTTPProblem(400, "malformed_request", "Malformed JSON", str(exc)) from exc


def query_one(request: Request, name: str) -> str | None:
    """The query parameter ``name``, refused when repeated: ``?limit=1&limit=500`` has no
    single meaning (proxies and frameworks disagree on first or last), so it is a 400."""
    if not request.scope.get("query_string"):
        return None  # most requests have no query at all: skip parsing one
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise HTTPProblem(
            400, "invalid_request", "Invalid query", f"{name} is given more than once"
        )
    return values[0] if values else None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = query_one(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise HTTPProblem(
            400, "invalid_request", "Invalid query", f"{name} must be an integer"
        ) from exc
    if not low <= value <= high:
        raise HTTPProblem(400, "invalid_request", "Invalid query", f"{name} must be {low}-{high}")
    return value


Endpoint = Callable[[Request], Awaitable[Response]]


def resource(path: str, **handlers: Endpoint) -> Route:
    """One route for all methods of a path (``resource("/keys", GET=..., POST=...)``).

    Starlette answers 405 per route, so separate routes for one path would each list only
    their own method in ``Allow``; one route dispatching on the method lists them all.
    """
    by_method = {method.upper(): handler for method, handler in handlers.items()}

    async def endpoint(request: Request) -> Response:
        return await by_method[request.method](request)

    endpoint.__name__ = "_".join(h.__name__ for h in by_method.values())
    return Route(path, endpoint, methods=list(by_method))
