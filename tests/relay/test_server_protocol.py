"""The one-write HTTP protocol (relay/server_protocol.py) against uvicorn's stock one.

Each case drives both protocols with the same request through a fake transport that
records every ``write`` and ``close``, and checks that the bytes on the wire are exactly
stock uvicorn's (same bytes, same order, closed alike) while the number of writes is the
one-write protocol's: head and first body chunk together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from uvicorn import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proof_messenger.protocol import b64u_encode, create_proof, generate_private_key, public_key_der
from proof_messenger.relay import apikeys
from proof_messenger.relay.app import create_app
from proof_messenger.relay.config import Settings
from proof_messenger.relay.server_protocol import (
    HTTP_PROTOCOL,
    OneWriteHttpToolsProtocol,
    hook_problem,
    http_protocol,
)
from proof_messenger.store.base import ApiKeyRecord

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
GET = b"GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n"
JSON = b'{"valid":true}'
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"14")]
CLOSED = "<close>"


@dataclass
class FakeTransport:
    """Records writes and the close, in order; writes after the close are kept apart (a
    real transport drops them) and fail the test (``Connection.settle``)."""

    events: list[bytes | str] = field(default_factory=list)
    closed: bool = False
    read_paused: bool = False
    after_close: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        if self.closed:
            self.after_close.append(bytes(data))
        else:
            self.events.append(bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.append(CLOSED)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    @property
    def writes(self) -> list[bytes]:
        return [e for e in self.events if isinstance(e, bytes)]

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)


@dataclass
class Connection:
    protocol: HttpToolsProtocol
    transport: FakeTransport
    state: ServerState

    async def settle(self) -> None:
        """Run until every request task (pipelined ones too) and queued callback is done."""
        for _ in range(100):
            tasks = list(self.state.tasks)
            if not tasks:
                break
            await asyncio.wait(tasks, timeout=10)
        for _ in range(3):
            await asyncio.sleep(0)
        assert self.transport.after_close == []


def connect(app: ASGIApp, protocol_class: type[HttpToolsProtocol]) -> Connection:
    config = Config(app=app, http=protocol_class, ws="none", lifespan="off", log_config=None)
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return Connection(protocol, transport, state)


async def exchange(app: ASGIApp, request: bytes, cls: type[HttpToolsProtocol]) -> FakeTransport:
    conn = connect(app, cls)
    conn.protocol.data_received(request)
    await conn.settle()
    return conn.transport


async def both(app: ASGIApp, request: bytes = GET) -> FakeTransport:
    """The one-write protocol's transport, after checking its wire is stock uvicorn's."""
    stock = await exchange(app, request, HttpToolsProtocol)
    ours = await exchange(app, request, OneWriteHttpToolsProtocol)
    assert ours.wire == stock.wire
    assert ours.closed == stock.closed
    # A close, if any, comes after the last write in both.
    assert (ours.events[-1:] == [CLOSED]) == (stock.events[-1:] == [CLOSED])
    return ours


async def drain_request(receive: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


def responder(
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
) -> ASGIApp:
    """An app answering ``status`` with ``headers`` and the body ``chunks``."""
    parts = [JSON] if chunks is None else chunks
    if headers is None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(sum(map(len, parts))).encode()),
        ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await drain_request(receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(parts):
            more = i < len(parts) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


# --- the private hook ------------------------------------------------------------------------


def test_the_installed_uvicorn_has_the_hook() -> None:
    """Fails when a uvicorn upgrade renames or inlines ``_start_asgi_task``: the relay
    would then fall back to two writes per response (see http_protocol)."""
    assert hook_problem() is None
    assert http_protocol() == HTTP_PROTOCOL
    config = Config(app=responder(), http=http_protocol(), ws="none", log_config=None)
    config.load()
    assert config.http_protocol_class is OneWriteHttpToolsProtocol


def test_without_the_hook_the_relay_falls_back_to_stock_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "_start_asgi_task")
    assert hook_problem() == "uvicorn's HttpToolsProtocol has no _start_asgi_task"
    with capture_logs() as logs:
        assert http_protocol() == "auto"
    assert len(logs) == 1
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["event"] == "http.one_write_unavailable"
    assert "no _start_asgi_task" in logs[0]["detail"]


def test_a_hook_no_longer_called_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    def on_response_complete(self: HttpToolsProtocol) -> None:
        pass  # a uvicorn that would start pipelined requests some other way

    monkeypatch.setattr(HttpToolsProtocol, "on_response_complete", on_response_complete)
    assert hook_problem() == (
        "uvicorn's HttpToolsProtocol.on_response_complete no longer calls _start_asgi_task"
    )


def test_a_changed_hook_signature_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    def _start_asgi_task(self: HttpToolsProtocol, cycle: Any) -> None:
        pass

    monkeypatch.setattr(HttpToolsProtocol, "_start_asgi_task", _start_asgi_task)
    assert hook_problem() == "uvicorn's HttpToolsProtocol._start_asgi_task takes ['self', 'cycle']"


def test_uvicorns_module_globals_are_untouched() -> None:
    assert httptools_impl.RequestResponseCycle.__module__ == httptools_impl.__name__
    assert httptools_impl.HttpToolsProtocol is HttpToolsProtocol


# --- one write, same bytes -------------------------------------------------------------------


async def test_a_json_response_is_one_write_holding_head_and_body() -> None:
    stock = await exchange(responder(), GET, HttpToolsProtocol)
    assert len(stock.writes) == 2  # what this protocol is for
    ours = await both(responder())
    assert len(ours.writes) == 1
    (write,) = ours.writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 14\r\n" in write
    assert write.endswith(b"\r\n\r\n" + JSON)
    assert not ours.closed


async def test_a_streamed_response_coalesces_only_the_first_chunk() -> None:
    # No content-length: uvicorn uses chunked encoding.
    app = responder(headers=[(b"content-type", b"text/plain")], chunks=[b"one", b"two", b"3"])
    ours = await both(app)
    assert len(ours.writes) == 3
    first, second, last = ours.writes
    assert b"transfer-encoding: chunked\r\n" in first
    assert first.endswith(b"\r\n\r\n3\r\none\r\n")
    assert second == b"3\r\ntwo\r\n"
    assert last == b"1\r\n3\r\n0\r\n\r\n"


async def test_explicit_chunked_encoding() -> None:
    app = responder(headers=[(b"transfer-encoding", b"chunked")], chunks=[b"abc"])
    ours = await both(app)
    assert len(ours.writes) == 1
    assert ours.wire.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


async def test_a_head_request_writes_the_head_alone() -> None:
    ours = await both(responder(), b"HEAD / HTTP/1.1\r\nHost: relay.test\r\n\r\n")
    assert len(ours.writes) == 1
    assert ours.wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ours.wire.endswith(b"content-length: 14\r\n\r\n")


async def test_a_streamed_head_response_writes_its_head_within_the_iteration() -> None:
    started = asyncio.Event()
    go_on = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        started.set()
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"y"})

    conn = connect(app, OneWriteHttpToolsProtocol)
    conn.protocol.data_received(b"HEAD / HTTP/1.1\r\nHost: relay.test\r\n\r\n")
    await started.wait()
    assert len(conn.transport.writes) == 1  # the head, alone, while the app waits
    go_on.set()
    await conn.settle()
    assert len(conn.transport.writes) == 1


async def test_a_head_response_goes_out_before_the_next_pipelined_request_starts() -> None:
    seen: list[int] = []
    conn: Connection

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(len(conn.transport.writes))  # what the client has got when this starts
        await responder()(scope, receive, send)

    head = b"HEAD / HTTP/1.1\r\nHost: relay.test\r\n\r\n"
    conn = connect(app, OneWriteHttpToolsProtocol)
    conn.protocol.data_received(head + GET)
    await conn.settle()
    assert seen == [0, 1]
    assert len(conn.transport.writes) == 2
    assert conn.transport.writes[0].endswith(b"content-length: 14\r\n\r\n")
    assert conn.transport.writes[1].endswith(JSON)
    stock = await exchange(responder(), head + GET, HttpToolsProtocol)
    assert conn.transport.wire == stock.wire


async def test_an_empty_body() -> None:
    ours = await both(responder(chunks=[b""]))
    assert len(ours.writes) == 1
    assert ours.wire.endswith(b"content-length: 0\r\n\r\n")


@pytest.mark.parametrize("status", [204, 304])
async def test_responses_without_a_body(status: int) -> None:
    ours = await both(responder(status, headers=[(b"etag", b'"1"')], chunks=[b""]))
    assert len(ours.writes) == 1
    assert ours.wire.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"transfer-encoding" not in ours.wire


async def test_connection_close_from_the_client_closes_after_the_one_write() -> None:
    request = b"GET / HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n"
    ours = await both(responder(), request)
    assert len(ours.writes) == 1
    assert b"connection: close\r\n" in ours.wire
    assert ours.events[-1] == CLOSED and len(ours.events) == 2


async def test_connection_close_from_the_app_closes_after_the_one_write() -> None:
    headers = [(b"content-length", b"14"), (b"connection", b"close")]
    ours = await both(responder(headers=headers))
    assert ours.events[-1] == CLOSED and len(ours.events) == 2
    assert ours.wire.endswith(JSON)


async def test_http_1_0_without_keep_alive_closes_after_the_one_write() -> None:
    ours = await both(responder(), b"GET / HTTP/1.0\r\n\r\n")
    assert len(ours.events) == 2 and ours.events[-1] == CLOSED


async def test_pipelined_requests_each_get_one_write() -> None:
    second = b"GET /2 HTTP/1.1\r\nHost: relay.test\r\n\r\n"
    ours = await both(responder(), GET + second)
    assert len(ours.writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200 OK") and w.endswith(JSON) for w in ours.writes)


async def test_expect_100_continue_goes_out_before_the_head() -> None:
    request = (
        b"POST / HTTP/1.1\r\nHost: relay.test\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    ours = await both(responder(), request)
    assert ours.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(ours.writes) == 2 and ours.writes[1].endswith(JSON)


async def test_an_app_error_before_the_response_is_one_500_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    ours = await both(app)
    assert len(ours.writes) == 1
    assert ours.wire.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert ours.wire.endswith(b"Internal Server Error") and ours.events[-1] == CLOSED


async def test_an_app_error_after_the_head_writes_it_then_closes_like_stock() -> None:
    """Stock uvicorn has written the head when the app raises, then closes the connection:
    the client gets a head without its body. The held head is written the same way, and
    the connection closed after it (never left buffered, never silently dropped)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        raise RuntimeError("boom")

    ours = await both(app)
    assert len(ours.writes) == 1
    assert ours.wire.startswith(b"HTTP/1.1 200 OK\r\n") and ours.wire.endswith(b"\r\n\r\n")
    assert ours.events[-1] == CLOSED


async def test_a_body_longer_than_its_content_length_writes_the_head_then_closes() -> None:
    headers = [(b"content-length", b"2")]
    ours = await both(responder(headers=headers, chunks=[b"too long"]))
    assert ours.wire.endswith(b"content-length: 2\r\n\r\n") and ours.events[-1] == CLOSED


async def test_the_head_is_not_held_past_the_event_loop_iteration() -> None:
    """A response whose first chunk takes time (an event stream) shows its head at once."""
    started = asyncio.Event()
    go_on = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"event", "more_body": False})

    conn = connect(app, OneWriteHttpToolsProtocol)
    conn.protocol.data_received(GET)
    await started.wait()
    assert len(conn.transport.writes) == 1
    assert conn.transport.wire.endswith(b"transfer-encoding: chunked\r\n\r\n")
    go_on.set()
    await conn.settle()
    assert conn.transport.writes[1] == b"5\r\nevent\r\n0\r\n\r\n"
    stock = await exchange(responder(chunks=[b"event"], headers=[]), GET, HttpToolsProtocol)
    assert conn.transport.wire == stock.wire


async def test_a_client_gone_before_the_head_went_out_gets_nothing_written() -> None:
    conn: Connection
    app_done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        conn.protocol.connection_lost(None)  # the client goes away in the same iteration
        await send({"type": "http.response.body", "body": JSON})
        assert (await receive())["type"] == "http.disconnect"
        app_done.set()

    conn = connect(app, OneWriteHttpToolsProtocol)
    conn.protocol.data_received(GET)
    await conn.settle()
    assert app_done.is_set()
    assert conn.transport.events == [CLOSED]


async def test_a_client_gone_while_the_app_works_gets_nothing() -> None:
    app_done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await drain_request(receive)
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": JSON})
        app_done.set()

    conn = connect(app, OneWriteHttpToolsProtocol)
    conn.protocol.data_received(GET)
    await asyncio.sleep(0)
    conn.protocol.connection_lost(None)
    await conn.settle()
    assert app_done.is_set()
    assert conn.transport.events == [CLOSED]


async def test_flow_control_still_holds_the_response_until_the_transport_drains() -> None:
    conn = connect(responder(), OneWriteHttpToolsProtocol)
    conn.protocol.pause_writing()  # the transport's buffer is above its high-water mark
    conn.protocol.data_received(GET)
    for _ in range(10):
        await asyncio.sleep(0)
    assert conn.transport.writes == []  # send() waits in flow.drain()
    conn.protocol.resume_writing()
    await conn.settle()
    assert len(conn.transport.writes) == 1 and conn.transport.wire.endswith(JSON)


# --- the relay's app -------------------------------------------------------------------------


async def test_the_relay_answers_a_verification_in_one_write(tmp_path: Path) -> None:
    """The relay's middleware chain sends the head and body back to back: a real /verify
    (store, group commit, audit) goes out in one write."""
    aud = "payments.example.com"
    settings = replace(
        Settings(
            audience=aud,
            master_key_file=str(tmp_path / "master.key"),
            log_key_file=str(tmp_path / "log.key"),
        ),
        database=replace(Settings().database, url=f"sqlite:///{tmp_path / 'relay.db'}"),
    )
    application = create_app(settings, extensions=[])
    async with application.router.lifespan_context(application):
        key_id, api_key = apikeys.generate_api_key()
        await application.state.relay.store.insert_api_key(
            ApiKeyRecord(
                id=key_id,
                name="test",
                secret_hash=apikeys.hash_api_key(api_key),
                scopes=("verify", "keys:write"),
                created_at=time.time(),
            )
        )
        key = generate_private_key()

        def post(path: str, body: bytes) -> bytes:
            return (
                f"POST {path} HTTP/1.1\r\nHost: relay.test\r\n"
                f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        register = b'{"sub":"alice","public_key":"%s"}' % b64u_encode(public_key_der(key)).encode()
        proof = create_proof(key, {"type": "wire_transfer"}, aud=aud, sub="alice", ttl=60)
        request = post("/keys", register) + post("/verify", proof.to_json().encode())
        transport = await exchange(application, request, OneWriteHttpToolsProtocol)
    assert len(transport.writes) == 2, transport.writes
    created, verified = transport.writes
    assert created.startswith(b"HTTP/1.1 201 ")
    assert verified.startswith(b"HTTP/1.1 200 OK\r\n") and b'"valid":true' in verified
    assert not transport.closed


async def test_an_invalid_header_writes_nothing_and_closes_like_stock() -> None:
    ours = await both(responder(headers=[(b"x-bad", b"a\nb")]))
    assert ours.events == [CLOSED]


async def test_a_completed_head_response_is_written_before_a_bad_next_request_is_answered() -> None:
    """uvicorn answers an unparseable request with a 400 written straight to the socket
    (not through a cycle): a head still held would come after it, or be lost."""
    conn: Connection

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await responder()(scope, receive, send)
        conn.protocol.data_received(b"NOT HTTP\r\n\r\n")  # in the same iteration

    head = b"HEAD / HTTP/1.1\r\nHost: relay.test\r\n\r\n"
    wires = []
    for cls in (HttpToolsProtocol, OneWriteHttpToolsProtocol):
        conn = connect(app, cls)
        conn.protocol.data_received(head)
        await conn.settle()
        wires.append(conn.transport.wire)
        assert conn.transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert conn.transport.writes[1].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert wires[0] == wires[1]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
async def test_a_body_of_another_buffer_type(kind: Callable[[bytes], Any]) -> None:
    ours = await both(responder(chunks=[kind(JSON)]))
    assert len(ours.writes) == 1 and ours.wire.endswith(JSON)


async def test_an_event_stream_shows_its_head_and_first_event_while_it_waits() -> None:
    """Like the approval events (StreamingResponse): the head and the first chunk go out at
    once, while the stream waits for its next event; the wire is stock uvicorn's."""
    from starlette.responses import StreamingResponse

    async def run(cls: type[HttpToolsProtocol]) -> FakeTransport:
        waiting = asyncio.Event()
        go_on = asyncio.Event()

        async def events() -> Any:
            yield b"retry: 2000\n\n"
            waiting.set()
            await go_on.wait()
            yield b"event: status\ndata: {}\n\n"

        async def app(scope: Any, receive: Any, send: Any) -> None:
            response = StreamingResponse(events(), media_type="text/event-stream")
            await response(scope, receive, send)

        conn = connect(app, cls)
        conn.protocol.data_received(GET)
        await waiting.wait()
        for _ in range(3):
            await asyncio.sleep(0)
        assert conn.transport.wire.endswith(b"\r\n\r\nd\r\nretry: 2000\n\n\r\n")
        go_on.set()
        await conn.settle()
        assert conn.transport.wire.endswith(b"0\r\n\r\n")
        return conn.transport

    stock = await run(HttpToolsProtocol)
    ours = await run(OneWriteHttpToolsProtocol)
    assert ours.wire == stock.wire
    assert len(stock.writes) == 4 and len(ours.writes) == 3
