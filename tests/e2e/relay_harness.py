"""Run a real relay as a subprocess, for end-to-end tests (reusable by other suites).

The relay is started exactly as an operator would start it -
``python -m proof_messenger.cli serve`` - in its own temporary directory, with its
settings in environment variables (and optionally a YAML file), its stdout/stderr
captured to files, and an API key created through the CLI. Everything points at the
code under test: ``PYTHONPATH`` is the ``src`` directory that holds the imported
``proof_messenger`` package, so a worktree's tests exercise that worktree's relay.

Typical use::

    relay = RelayProcess(tmp_path, audience="payments.example.com")
    relay.start()                         # waits for /ready, creates relay.api_key
    signer = Signer.new("alice")
    signer.register(relay)                # POST /keys
    proof = signer.proof({"type": "wire_transfer", "amount_minor": 100})
    r = relay.post_proof(proof)           # POST /verify
    relay.restart()                       # same directory, database and port
    code = relay.stop(signal.SIGTERM)     # exit status of the relay

``relay.cli("audit", "verify")`` runs any CLI command with the same environment and
config file. For PostgreSQL pass ``database_url="postgresql://..."``; for extra
settings pass ``config={...}`` (written as YAML) or ``env={...}``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

import proof_messenger
from proof_messenger.protocol import (
    Proof,
    b64u_encode,
    create_proof,
    generate_private_key,
    kid_for,
    public_key_der,
)
from proof_messenger.protocol.keys import PrivateKey

__all__ = [
    "ALL_SCOPES",
    "SRC_DIR",
    "RelayProcess",
    "RelayStartError",
    "Signer",
    "free_port",
    "running_relay",
]

#: The directory holding the imported ``proof_messenger`` package (the code under test).
SRC_DIR = Path(proof_messenger.__file__).resolve().parents[1]
ALL_SCOPES = "verify,keys:write,audit:read"
DEFAULT_AUDIENCE = "payments.example.com"


class RelayStartError(RuntimeError):
    """The relay exited or never became ready; the message carries its output."""


def free_port() -> int:
    """A port that was free a moment ago (the relay binds it shortly after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "proof_messenger.cli", *args]


@dataclass
class RelayProcess:
    """One relay instance: its directory, settings, process and an API key.

    ``workdir`` holds the SQLite database (``relay.db``), the master key, the optional
    ``relay.yaml`` and the captured ``stdout-N.log``/``stderr-N.log`` (N counts starts).
    """

    workdir: Path
    audience: str = DEFAULT_AUDIENCE
    config: Mapping[str, Any] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    database_url: str | None = None
    log_level: str = "info"
    api_key_scopes: str = ALL_SCOPES
    port: int = field(default_factory=free_port)
    ready_timeout: float = 60.0

    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    api_key: str | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)
    _files: list[Any] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.db_path}"
        if self.config is not None:
            self.config_path.write_text(yaml.safe_dump(dict(self.config)), encoding="utf-8")

    # --- paths and environment ---------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.workdir / "relay.db"

    @property
    def config_path(self) -> Path:
        return self.workdir / "relay.yaml"

    @property
    def master_key_file(self) -> Path:
        return self.workdir / "master.key"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process_env(self) -> dict[str, str]:
        """The environment the relay and CLI run with (settings + PYTHONPATH)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PROOF_MESSENGER_", "PROMETHEUS_MULTIPROC"))
            and k not in ("BIND_ADDRESS", "AUDIT_DB_URL", "LOG_LEVEL", "REDIS_URL")
        }
        env.update(
            {
                "PYTHONPATH": str(SRC_DIR),
                "BIND_ADDRESS": f"127.0.0.1:{self.port}",
                "AUDIT_DB_URL": str(self.database_url),
                "PROOF_MESSENGER_AUDIENCE": self.audience,
                "PROOF_MESSENGER_MASTER_KEY_FILE": str(self.master_key_file),
                "PROOF_MESSENGER_LOG_KEY_FILE": str(self.workdir / "log-signing.key"),
                "LOG_LEVEL": self.log_level,
            }
        )
        if self.config is not None:
            env["PROOF_MESSENGER_CONFIG"] = str(self.config_path)
        env.update(self.env)
        return env

    # --- CLI ---------------------------------------------------------------------------------
    def cli(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``proof-messenger ARGS`` with the relay's environment (and config file).

        ``env`` adds or overrides variables, e.g. ``{"COLUMNS": "200"}`` for wide tables.
        """
        return subprocess.run(
            cli_argv(*args),
            cwd=self.workdir,
            env={**self.process_env, **(env or {})},
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def create_api_key(self, scopes: str = ALL_SCOPES, name: str = "e2e") -> str:
        result = self.cli("apikey", "create", "--name", name, "--scopes", scopes)
        if result.returncode != 0:
            raise RuntimeError(f"apikey create failed: {result.stderr}")
        return result.stdout.strip().splitlines()[-1]

    # --- process -----------------------------------------------------------------------------
    def start(self, *, wait: bool = True) -> RelayProcess:
        """Start ``serve``; with ``wait``, block until /ready answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        out = open(self.stdout_path(), "wb")  # noqa: SIM115 - closed in stop()
        err = open(self.stderr_path(), "wb")  # noqa: SIM115
        self._files = [out, err]
        self.proc = subprocess.Popen(
            cli_argv("serve"),
            cwd=self.workdir,
            env=self.process_env,
            stdout=out,
            stderr=err,
        )
        if wait:
            self.wait_ready()
            if self.api_key is None:
                self.api_key = self.create_api_key(self.api_key_scopes)
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RelayStartError(
                    f"relay exited with {self.proc.returncode}:\n{self.output()[-4000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RelayStartError(f"relay not ready after {self.ready_timeout} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status (kills on timeout)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fh in self._files:
            fh.close()
        self._files = []
        return self.proc.returncode

    def restart(self) -> RelayProcess:
        """SIGTERM, then start again on the same port, directory and database."""
        code = self.stop()
        if code != 0:
            raise RelayStartError(f"relay exited with {code} on SIGTERM:\n{self.output()}")
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stdout_path(self, start: int | None = None) -> Path:
        return self.workdir / f"stdout-{start or self.starts}.log"

    def stderr_path(self, start: int | None = None) -> Path:
        return self.workdir / f"stderr-{start or self.starts}.log"

    def output(self) -> str:
        """Everything the relay printed so far, over all its starts."""
        parts = []
        for n in range(1, self.starts + 1):
            for path in (self.stdout_path(n), self.stderr_path(n)):
                if path.exists():
                    parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    # --- HTTP --------------------------------------------------------------------------------
    def headers(self, api_key: str | None = None, **extra: str) -> dict[str, str]:
        key = api_key if api_key is not None else self.api_key
        return {"authorization": f"Bearer {key}", **extra}

    def client(self, api_key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(api_key), timeout=timeout)

    def async_client(self, api_key: str | None = None, timeout: float = 60.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers(api_key), timeout=timeout
        )

    def post_proof(self, proof: Proof, *, cbor: bool = False, **kwargs: Any) -> httpx.Response:
        """POST /verify with the JSON (or CBOR) envelope."""
        with self.client() as c:
            if cbor:
                return c.post(
                    "/verify",
                    content=proof.to_cbor(),
                    headers={"content-type": "application/cbor", **kwargs.pop("headers", {})},
                    **kwargs,
                )
            return c.post(
                "/verify",
                content=proof.to_json(),
                headers={"content-type": "application/json", **kwargs.pop("headers", {})},
                **kwargs,
            )


@contextlib.contextmanager
def running_relay(workdir: Path, **options: Any) -> Iterator[RelayProcess]:
    """A started relay, stopped (SIGTERM, then kill) when the block ends."""
    relay = RelayProcess(workdir, **options)
    try:
        relay.start()
        yield relay
    finally:
        relay.stop()


@dataclass
class Signer:
    """A user with an ES256 device key: registers it and signs proofs."""

    sub: str
    key: PrivateKey
    audience: str = DEFAULT_AUDIENCE

    @classmethod
    def new(cls, sub: str, audience: str = DEFAULT_AUDIENCE) -> Signer:
        return cls(sub, generate_private_key(), audience)

    @property
    def kid(self) -> str:
        return kid_for(self.key)

    @property
    def public_key_b64(self) -> str:
        return b64u_encode(public_key_der(self.key))

    def register(self, relay: RelayProcess, sub: str | None = None) -> httpx.Response:
        with relay.client() as c:
            r = c.post("/keys", json={"sub": sub or self.sub, "public_key": self.public_key_b64})
        if r.status_code != 201:
            raise AssertionError(f"key registration failed: {r.status_code} {r.text}")
        return r

    def proof(
        self,
        ctx: Mapping[str, Any] | None = None,
        *,
        aud: str | None = None,
        sub: str | None = None,
        now: float | None = None,
        ttl: int = 300,
    ) -> Proof:
        context = dict(ctx) if ctx is not None else {"type": "wire_transfer", "amount_minor": 1}
        return create_proof(
            self.key,
            context,
            aud=aud or self.audience,
            sub=sub or self.sub,
            ttl=ttl,
            now=now,
        )
