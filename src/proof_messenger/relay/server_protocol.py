"""One socket write per HTTP response: uvicorn's httptools protocol with the head held
until the first body chunk.

Stock uvicorn (``httptools_impl.RequestResponseCycle.send``) writes the status line and
headers on ``http.response.start`` and the body on ``http.response.body``: two
``transport.write`` calls per response, so two syscalls and two TCP segments, each of
which wakes the client. :class:`OneWriteHttpToolsProtocol` holds the head and writes it
together with the first body chunk: one system call and one client wake-up fewer per
response (measured on the relay's GET /health, one worker, wrk with 8 connections: server
plus client CPU per request 78 -> 65 us, median of 6 interleaved pairs). Its own cost is
about 15k instructions a request (the stand-in object, a ``call_soon``, the extra calls).

How, without copying uvicorn code: the protocol overrides ``_start_asgi_task`` (a private
uvicorn hook, called for every request, pipelined ones included) to give each request's
cycle a :class:`_OneWriteResponse` as its ``transport`` (the cycle object itself, its class
and methods stay uvicorn's: swapping its class made every uvicorn attribute access on it
slower, about 25k more instructions a request). uvicorn's own ``send`` still builds and
writes every byte; only the moment the head's bytes reach the socket changes. The hook is private, so
:func:`hook_problem` checks that the installed uvicorn still has it and calls it, and
:func:`http_protocol` (what ``serve`` hands uvicorn) falls back to uvicorn's stock
``"auto"`` with one warning if it does not.

On the wire the bytes and their order are exactly stock uvicorn's; only segmentation
(and, within one event-loop iteration, timing) differ:

- the head goes out in the same write as the first body chunk; a streaming response's
  later chunks are written as before, one write each;
- a response that writes no body bytes (a HEAD request) has its head written alone when
  it completes, before the connection's next request starts;
- the head is never held past the current event-loop iteration: if the app awaits
  something before its first body chunk (a stream whose first event takes time), the head
  is written alone as soon as the loop gets control, as promptly as stock uvicorn would;
- when uvicorn closes the connection (``Connection: close``, or the app raising after
  ``http.response.start`` but before its body), the held head is written first and the
  connection closed after it. For the exception, that is stock behaviour: the client gets
  the status line and headers, then the connection closes (a truncated response, which
  clients detect by its missing body), never a silently lost or half-buffered response;
- a client that disconnected before the head went out gets nothing (stock uvicorn would
  have written it to the dead connection).

Flow control is untouched: uvicorn's ``send`` still waits for ``flow.drain()`` while
writing is paused, and every write goes straight to the real transport.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, cast

import structlog

from .logs import import_without

#: Optional packages uvicorn imports when installed, for features ``serve`` does not use.
_HIDDEN_FROM_UVICORN = ("watchfiles",)


def import_uvicorn() -> None:
    """Import uvicorn with ``watchfiles`` hidden, once per process, before any relay module
    does.

    ``import uvicorn`` always imports ``uvicorn.supervisors``, which imports ``watchfiles``
    (its Rust extension and part of ``anyio``) when it is installed, for ``--reload``,
    which ``serve`` never uses: about 0.9 MB of RSS in every worker (measured on the
    worker after start-up, 52.3 -> 51.4 MB). Without it uvicorn keeps its stat-based
    reloader class instead (also unused). Called when this module is first imported:
    ``serve`` imports it before uvicorn on both of its paths (``uvicorn.run`` and
    gunicorn's uvicorn worker).
    """
    import_without("uvicorn", _HIDDEN_FROM_UVICORN)


import_uvicorn()

from uvicorn._types import ASGI3Application  # noqa: E402  (after import_uvicorn)
from uvicorn.protocols.http.httptools_impl import (  # noqa: E402
    HttpToolsProtocol,
    RequestResponseCycle,
)

__all__ = [
    "HTTP_PROTOCOL",
    "OneWriteHttpToolsProtocol",
    "hook_problem",
    "http_protocol",
]

#: The import string of the one-write protocol, as uvicorn's ``http`` setting takes it.
HTTP_PROTOCOL = "proof_messenger.relay.server_protocol:OneWriteHttpToolsProtocol"

log = structlog.get_logger("proof_messenger.http")

#: How an interim (1xx) response starts: uvicorn writes ``100 Continue`` before the head.
_INTERIM = b"HTTP/1.1 1"


class _OneWriteResponse:
    """One request's response path: holds uvicorn's head write until the first body chunk.

    It stands in for the cycle's transport (``cycle.transport``) and wraps its
    ``on_response`` callback; the cycle keeps its class and methods, so uvicorn's own code
    runs on an unchanged object. The first write of a response that is not an interim
    ``1xx`` (uvicorn's ``100 Continue``) is its head: uvicorn's ``send`` writes the status
    line and headers in one write, before any body byte. That write is held, and prepended
    to the next one, so nothing ever overtakes it: every other use of the transport
    (``close``, or any attribute not defined here) writes it first, so does the response's
    completion, and a callback scheduled when it is held writes it alone at the end of the
    event-loop iteration. ``is_closing`` is asked without releasing it (uvicorn's
    ``receive`` asks it).
    """

    __slots__ = ("_awaiting_head", "_held", "_loop", "_on_response", "_transport")

    def __init__(self, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = cycle.transport
        self._on_response = cycle.on_response
        self._loop = loop
        self._held: bytes | None = None
        self._awaiting_head = True
        cycle.transport = cast(asyncio.Transport, self)
        cycle.on_response = self.on_response

    def on_response(self) -> None:
        """The response is complete (uvicorn calls this after its last write, and before a
        pipelined request starts): a head still held (a HEAD request) is written now."""
        self.flush()
        self._on_response()

    # --- the transport, as the cycle sees it ---------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._awaiting_head and data[:10] != _INTERIM:
            self._awaiting_head = False
            self._held = bytes(data)  # the same object for bytes (uvicorn's head)
            # Never past this event-loop iteration (see the module docstring).
            self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self._transport.write(data)

    def flush(self) -> None:
        """Write the held bytes alone, unless the connection is gone (nobody to read them)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined above: release the head first, so that a
        # transport call uvicorn may add (writelines, write_eof, abort) cannot reorder bytes.
        self.flush()
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, one socket write per (non-streaming) response."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        _OneWriteResponse(cycle, self.loop)
        super()._start_asgi_task(cycle, app)


def hook_problem() -> str | None:
    """Why the installed uvicorn cannot run :class:`OneWriteHttpToolsProtocol`, or None.

    The protocol relies on ``HttpToolsProtocol._start_asgi_task(cycle, app)`` being called
    for every request, and on the cycle writing through ``self.transport`` and calling
    ``self.on_response`` on completion; a uvicorn release that renames or inlines them
    would silently bring back two writes per response (tests/relay/test_server_protocol.py
    fails then, and ``serve`` falls back to stock).
    """
    hook = getattr(HttpToolsProtocol, "_start_asgi_task", None)
    if not callable(hook):
        return "uvicorn's HttpToolsProtocol has no _start_asgi_task"
    params = list(inspect.signature(hook).parameters)
    if params != ["self", "cycle", "app"]:
        return f"uvicorn's HttpToolsProtocol._start_asgi_task takes {params}"
    for caller in ("on_headers_complete", "on_response_complete"):
        if "_start_asgi_task" not in getattr(HttpToolsProtocol, caller).__code__.co_names:
            return f"uvicorn's HttpToolsProtocol.{caller} no longer calls _start_asgi_task"
    for method, uses in (
        ("send", "transport"),
        ("send", "on_response"),
        ("run_asgi", "transport"),
    ):
        if uses not in getattr(RequestResponseCycle, method).__code__.co_names:
            return f"uvicorn's RequestResponseCycle.{method} no longer uses self.{uses}"
    return None


def http_protocol() -> str:
    """uvicorn's ``http`` setting for the relay: the one-write protocol, or stock ``"auto"``
    (httptools) with one warning log line if the installed uvicorn lacks the hook."""
    problem = hook_problem()
    if problem is None:
        return HTTP_PROTOCOL
    log.warning(
        "http.one_write_unavailable",
        detail=f"{problem}: using uvicorn's stock HTTP protocol (two writes per response)",
    )
    return "auto"
