"""A minimal launcher for real relay processes on PostgreSQL (used by the scale-out tests).

Each relay is `python -m proof_messenger.cli serve` in its own session (so a SIGKILL of the
process group takes its uvicorn workers down too, like a container kill), with the worktree's
`src` on PYTHONPATH. All relays of one test share ONE master key file and ONE database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from proof_messenger.audit.crypto import generate_master_key_file
from proof_messenger.protocol.encoding import b64u_encode
from proof_messenger.protocol.keys import PrivateKey, public_key_der

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC = REPO_ROOT / "src"
PG_ADMIN_DSN = os.environ.get("PM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AUDIENCE = "payments.example.com"


def _dsn_for(database: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """CREATE a uniquely named database, yield its URL, DROP it (WITH FORCE) afterwards."""
    name = f"pm_test_{uuid.uuid4().hex[:16]}"

    async def admin(sql: str) -> None:
        con = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _dsn_for(name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Cluster:
    """Shared environment of every relay in one test: database, key files, work directory."""

    db_url: str
    workdir: Path
    config: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.master_key_file = self.workdir / "master.key"
        if not self.master_key_file.exists():
            generate_master_key_file(self.master_key_file)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PROOF_MESSENGER_CONFIG", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        env.update(
            PYTHONPATH=str(SRC),
            AUDIT_DB_URL=self.db_url,
            PROOF_MESSENGER_AUDIENCE=AUDIENCE,
            PROOF_MESSENGER_MASTER_KEY_FILE=str(self.master_key_file),
            PROOF_MESSENGER_LOG_KEY_FILE=str(self.workdir / "log-signing.key"),
            LOG_LEVEL="warning",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `proof-messenger ARGS` with this cluster's environment (no --config needed:
        the environment names the database and the master key)."""
        command = [sys.executable, "-m", "proof_messenger.cli", *args]
        return subprocess.run(
            command,
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def create_api_key(self, scopes: str = "verify,keys:write,audit:read") -> str:
        done = self.cli("apikey", "create", "--name", "scaleout", "--scopes", scopes)
        if done.returncode != 0:
            raise RuntimeError(f"apikey create failed: {done.stderr}")
        return done.stdout.strip().splitlines()[-1]


@dataclass
class Relay:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (master and workers), as a crashed host would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        # Workers orphaned by a master that died first must not outlive the test.
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_relay(cluster: Cluster, name: str, port: int, **env: str) -> Relay:
    log_path = cluster.workdir / f"{name}.log"
    command = [sys.executable, "-m", "proof_messenger.cli", "serve"]
    if cluster.config is not None:
        command += ["--config", str(cluster.config)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            env=cluster.env(BIND_ADDRESS=f"127.0.0.1:{port}", **env),
            cwd=cluster.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Relay(name, port, proc, log_path)


def wait_ready(relays: list[Relay], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for relay in relays:
        while True:
            if relay.proc.poll() is not None:
                raise RuntimeError(
                    f"{relay.name} exited {relay.proc.returncode}:\n{relay.log_tail()}"
                )
            try:
                if httpx.get(relay.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{relay.name} not ready in {timeout} s:\n{relay.log_tail()}")
            time.sleep(0.1)


@contextmanager
def running_relays(cluster: Cluster, ports: list[int], **env: str) -> Iterator[list[Relay]]:
    relays: list[Relay] = []
    try:
        for i, port in enumerate(ports):
            relays.append(start_relay(cluster, f"relay{i}", port, **env))
        wait_ready(relays)
        yield relays
    finally:
        for relay in relays:
            relay.stop()


def register_key(
    client: httpx.Client, base_url: str, api_key: str, sub: str, key: PrivateKey
) -> str:
    response = client.post(
        base_url + "/keys",
        json={"sub": sub, "public_key": b64u_encode(public_key_der(key))},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"register key: {response.status_code} {response.text}")
    kid: str = response.json()["kid"]
    return kid
