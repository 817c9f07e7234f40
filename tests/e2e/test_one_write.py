"""``serve`` (one worker, and gunicorn's two) answers each response in one TCP segment.

The relay's HTTP protocol (relay/server_protocol.py) writes a response's status line and
headers together with its body, in one socket write; stock uvicorn writes them apart. A
write smaller than the loopback MSS (64 KiB) is always one TCP segment, so the client
socket's count of data segments received (Linux ``TCP_INFO``, ``tcpi_data_segs_in``) is
exactly one per response here, whatever the timing; with stock uvicorn's two writes it is
two (rarely one, if the kernel coalesced them: this test could then pass by chance, never
fail by chance). The responses are read with a raw socket and checked byte for byte.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import pytest

from .relay_harness import RelayProcess

#: Offset of ``tcpi_data_segs_in`` in ``struct tcp_info`` (linux/tcp.h, since Linux 4.6).
DATA_SEGS_IN = 152

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="TCP_INFO's data segment count is Linux's"
)


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < DATA_SEGS_IN + 4:
        pytest.skip("this kernel's TCP_INFO has no data segment count")
    count: int = struct.unpack_from("=I", info, DATA_SEGS_IN)[0]
    return count


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[bytes, bytes]:
    """One response's head and body (``Content-Length`` bytes; none for HEAD)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    length = 0 if head_only else int(fields[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert len(body) == length, "more bytes than the response holds"
    return head, body


def check_responses(relay: RelayProcess) -> None:
    requests = [
        (b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n", False, b"200 OK"),
        (b"GET /no-such-route HTTP/1.1\r\nHost: relay\r\n\r\n", False, b"404 Not Found"),
        (b"HEAD /health HTTP/1.1\r\nHost: relay\r\n\r\n", True, b"200 OK"),
        (b"GET /health HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n", False, b"200 OK"),
    ]
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        for request, head_only, status in requests:
            before = data_segments_in(sock)
            sock.sendall(request)
            head, body = read_response(sock, head_only)
            assert head.startswith(b"HTTP/1.1 " + status + b"\r\n"), head
            assert data_segments_in(sock) - before == 1, (request, head)
            if head_only:
                assert body == b""
            elif status == b"200 OK":
                assert json.loads(body)["status"] == "ok"
            else:
                assert json.loads(body)["status"] == 404  # problem+json
        assert b"connection: close" in head.lower()
        assert sock.recv(1) == b""  # closed after the last response, nothing more


@pytest.mark.parametrize("workers", [1, 2])
def test_each_response_is_one_segment(tmp_path: Path, workers: int) -> None:
    relay = RelayProcess(tmp_path / "relay", env={"PROOF_MESSENGER_WORKERS": str(workers)})
    relay.start()
    try:
        check_responses(relay)
        check_responses(relay)  # with two workers, likely the other one too
    finally:
        relay.stop()
