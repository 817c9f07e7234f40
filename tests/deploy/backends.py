"""Tiny stdlib HTTP backends standing in for relay instances behind nginx."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Backend:
    name: str
    port: int
    seen: list[SeenRequest] = field(default_factory=list)
    # Set by the test once the client has read the first Server-Sent Event through the proxy.
    release_stream: threading.Event = field(default_factory=threading.Event)


def _handler_for(backend: Backend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests assert on what was seen, not on stderr."""

        def _record(self) -> SeenRequest:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = SeenRequest(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            backend.seen.append(seen)
            return seen

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Backend", backend.name)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._record()
            if self.path.endswith("/events"):
                self._stream_events()
                return
            self._reply(200, f"{backend.name} {self.path}".encode())

        def do_POST(self) -> None:
            seen = self._record()
            self._reply(200, f"{backend.name} {len(seen.body)}".encode())

        def _stream_events(self) -> None:
            # First event now; the second only after the test has read the first through nginx.
            # A buffering proxy would hold the first event back and the test would time out.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"event: status\ndata: pending\n\n")
            self.wfile.flush()
            backend.release_stream.wait(timeout=30)
            self.wfile.write(b"event: status\ndata: approved\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


@contextmanager
def http_backend(name: str) -> Iterator[Backend]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(Backend(name, 0)))
    backend = Backend(name, int(server.server_address[1]))
    server.RequestHandlerClass = _handler_for(backend)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"backend-{name}", daemon=True)
    thread.start()
    try:
        yield backend
    finally:
        backend.release_stream.set()
        server.shutdown()
        server.server_close()


@dataclass
class BrokenBackend:
    """Accepts a connection, reads the request, and closes without answering (a crashed relay)."""

    port: int
    requests: list[bytes] = field(default_factory=list)


@contextmanager
def broken_backend() -> Iterator[BrokenBackend]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    backend = BrokenBackend(int(listener.getsockname()[1]))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data:
                    backend.requests.append(data)

    thread = threading.Thread(target=serve, name="backend-broken", daemon=True)
    thread.start()
    try:
        yield backend
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
