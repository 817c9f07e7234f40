"""A real relay in a subprocess, for the security and reliability tests.

Small on purpose (the e2e harness lives elsewhere and may change): start ``proof-messenger
serve`` from this worktree's sources with its own port, SQLite file or PostgreSQL
database and master key; create API keys with the CLI; SIGKILL or stop it; read its
stdout log. Nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from proof_messenger.protocol import Proof, create_proof, public_key_der
from proof_messenger.protocol.encoding import b64u_encode
from proof_messenger.protocol.keys import PrivateKey
from proof_messenger.relay import apikeys

SRC = Path(__file__).resolve().parents[2] / "src"
AUDIENCE = "payments.example.com"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ALL_SCOPES = ",".join(apikeys.ALL_SCOPES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pg_available() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        return True
    return False


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (FORCE: a killed relay may linger)."""
    name = f"pm_sec_{uuid.uuid4().hex[:12]}"
    _psql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Relay:
    workdir: Path
    db_url: str
    config: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    api_key: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "relay.log"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "BIND_ADDRESS": f"127.0.0.1:{self.port}",
            "AUDIT_DB_URL": self.db_url,
            "PROOF_MESSENGER_AUDIENCE": AUDIENCE,
            "PROOF_MESSENGER_MASTER_KEY_FILE": str(self.workdir / "master.key"),
            "PROOF_MESSENGER_LOG_KEY_FILE": str(self.workdir / "log-signing.key"),
            "LOG_LEVEL": "info",
            **extra,
        }
        env.pop("PROOF_MESSENGER_CONFIG", None)
        env.pop("REDIS_URL", None)
        if self.config:
            import yaml

            path = self.workdir / "relay.yaml"
            path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
            env["PROOF_MESSENGER_CONFIG"] = str(path)
        return env

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "proof_messenger.cli", *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"proof-messenger {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def create_api_key(self, scopes: str = ALL_SCOPES, name: str = "sec") -> str:
        out = self.cli("apikey", "create", "--name", name, "--scopes", scopes)
        return next(line.strip() for line in out.splitlines() if line.strip().startswith("pmk_"))

    def start(self, timeout: float = 60.0) -> Relay:
        if not self.api_key:
            self.api_key = self.create_api_key()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proof_messenger.cli", "serve"],
            env=self.env(),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited early:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"relay not ready in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush - the crash the tests are about."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30, **kwargs)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def register(client: httpx.Client, key: PrivateKey, sub: str = "alice") -> str:
    der = public_key_der(key)
    r = client.post("/keys", json={"sub": sub, "public_key": b64u_encode(der)})
    assert r.status_code == 201, r.text
    kid: str = r.json()["kid"]
    return kid


def sign(
    key: PrivateKey, ctx: dict[str, Any] | None = None, sub: str = "alice", **kw: Any
) -> Proof:
    kw.setdefault("aud", AUDIENCE)
    return create_proof(
        key, ctx or {"type": "payment", "amount_minor": 100, "currency": "EUR"}, sub=sub, **kw
    )


def post_proof(client: httpx.Client, proof: Proof) -> httpx.Response:
    return client.post(
        "/verify", content=proof.to_json(), headers={"content-type": "application/json"}
    )


async def apost_proof(client: httpx.AsyncClient, proof: Proof) -> httpx.Response:
    return await client.post(
        "/verify", content=proof.to_json(), headers={"content-type": "application/json"}
    )


class TcpProxy:
    """A TCP forwarder we can cut and restore: 'the database is unavailable' without
    touching the shared PostgreSQL server other suites use."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.up = True
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._pipes.difference_update((writer, up_writer))

    def cut(self) -> None:
        """Refuse new connections and reset the open ones (like a failed-over server)."""
        self.up = False
        for w in list(self._pipes):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._pipes.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
