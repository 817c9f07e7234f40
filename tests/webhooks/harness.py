"""Real relay subprocesses and a local webhook receiver, for the webhook and SDK tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from proof_messenger.protocol import b64u_encode, create_proof
from proof_messenger.protocol.keys import PrivateKey, generate_private_key, public_key_der

SRC = Path(__file__).resolve().parents[2] / "src"
AUDIENCE = "payments.example.com"
ALL_SCOPES = "verify,keys:write,audit:read,webhooks,approvals"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy (generous timeout: slow shared CI machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Relay:
    """One ``proof-messenger serve`` process on a SQLite file in ``tmp``."""

    tmp: Path
    config: dict[str, Any] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "BIND_ADDRESS": f"127.0.0.1:{self.port}",
            "AUDIT_DB_URL": f"sqlite:///{self.tmp / 'relay.db'}",
            "PROOF_MESSENGER_AUDIENCE": AUDIENCE,
            "PROOF_MESSENGER_MASTER_KEY_FILE": str(self.tmp / "master.key"),
            "PROOF_MESSENGER_LOG_KEY_FILE": str(self.tmp / "log-signing.key"),
            "LOG_LEVEL": "info",
            **self.extra_env,
        }
        env.pop("PROOF_MESSENGER_CONFIG", None)
        return env

    def _cli(self, *args: str) -> list[str]:
        cmd = [sys.executable, "-m", "proof_messenger.cli", *args]
        if self.config is not None:
            path = self.tmp / "relay.yaml"
            path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
            cmd += ["--config", str(path)]
        return cmd

    def api_key(self, scopes: str = ALL_SCOPES, name: str = "test") -> str:
        out = subprocess.run(
            self._cli("apikey", "create", "--name", name, "--scopes", scopes),
            env=self.env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        return out.stdout.decode().strip().splitlines()[-1]

    def start(self, wait: bool = True) -> Relay:
        self.tmp.mkdir(parents=True, exist_ok=True)
        log = (self.tmp / "relay.log").open("ab")
        self.proc = subprocess.Popen(
            self._cli("serve"), env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                return httpx.get(self.url + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "relay /ready")

    def log(self) -> str:
        path = self.tmp / "relay.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@dataclass
class Device:
    """A software signing key registered for ``sub`` on a relay."""

    sub: str
    key: PrivateKey = field(default_factory=generate_private_key)

    def register(self, relay_url: str, api_key: str) -> str:
        der = public_key_der(self.key)
        r = httpx.post(
            relay_url + "/keys",
            json={"sub": self.sub, "public_key": b64u_encode(der)},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["kid"])

    def proof(self, ctx: dict[str, Any], **kw: Any) -> dict[str, Any]:
        kw.setdefault("aud", AUDIENCE)
        kw.setdefault("sub", self.sub)
        result: dict[str, Any] = create_proof(self.key, ctx, **kw).to_json_dict()
        return result


PAYMENT = {"type": "payment", "amount_minor": 1_250_000, "currency": "EUR", "to": "ACME"}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def delivery_id(self) -> str:
        return self.headers["x-proof-messenger-delivery"]

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to the first ``fail_first`` requests
    of each delivery id (or always, with ``always_fail``), then 200."""

    def __init__(self, fail_first: int = 0, port: int = 0) -> None:
        self.fail_first = fail_first
        self.always_fail = False
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer._lock:
                    seen = sum(
                        1
                        for r in outer.requests
                        if r.delivery_id == headers.get("x-proof-messenger-delivery")
                    )
                    status = 500 if outer.always_fail or seen < outer.fail_first else 200
                    outer.requests.append(Received(headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def accepted(self) -> list[Received]:
        return [r for r in self.snapshot() if r.status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
