"""Real processes for the policy/OIDC end-to-end tests: a local JWKS issuer and a relay.

The issuer is a tiny HTTP server on 127.0.0.1 serving OIDC discovery and a JWKS with
RS256 and ES256 keys; ``rotate()`` replaces the keys mid-test. The relay is
``python -m proof_messenger.cli serve`` on a free port with its own SQLite file,
master key and API key, using this worktree's code (PYTHONPATH=src).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proof_messenger.protocol import create_proof, generate_private_key, public_key_der
from proof_messenger.protocol.encoding import b64u_encode

SRC = Path(__file__).resolve().parents[2] / "src"
AUDIENCE = "payments.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk


def new_key(alg: str) -> SigningKey:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return SigningKey(f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)


@dataclass
class Issuer:
    url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    jwks_requests: int = 0
    _server: ThreadingHTTPServer | None = None

    def rotate(self) -> None:
        """Replace every key by fresh ones (new kids), as an IdP rotation would."""
        self.keys = [new_key("RS256"), new_key("ES256")]

    def key(self, alg: str) -> SigningKey:
        return next(k for k in self.keys if k.alg == alg)

    def token(
        self,
        sub: str,
        aud: str,
        *,
        alg: str = "RS256",
        key: SigningKey | None = None,
        ttl: int = 300,
        iss: str | None = None,
        **claims: Any,
    ) -> str:
        signer = key or self.key(alg)
        now = int(time.time())
        payload = {
            "iss": self.url if iss is None else iss,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "exp": now + ttl,
            **claims,
        }
        return jwt.encode(
            payload, signer.private, algorithm=signer.alg, headers={"kid": signer.kid}
        )


@contextmanager
def running_issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    issuer.rotate()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            body: dict[str, Any]
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"}
            elif self.path == "/jwks.json":
                issuer.jwks_requests += 1
                body = {"keys": [k.public_jwk() for k in issuer.keys]}
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    issuer._server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Relay:
    url: str
    api_key: str
    config: Path
    workdir: Path
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def headers(self, token: str | None = None, user_token: str | None = None) -> dict[str, str]:
        h = {"authorization": f"Bearer {token or self.api_key}", "content-type": "application/json"}
        if user_token is not None:
            h["x-user-token"] = user_token
        return h

    def register(self, sub: str) -> Any:
        """A fresh device key for ``sub``, registered with the relay."""
        key = generate_private_key()
        r = self.client.post(
            "/keys",
            headers=self.headers(),
            json={"sub": sub, "public_key": b64u_encode(public_key_der(key))},
        )
        assert r.status_code in (200, 201), r.text
        return key

    def verify(
        self, key: Any, sub: str, ctx: dict[str, Any], user_token: str | None = None, **kw: Any
    ) -> httpx.Response:
        proof = create_proof(key, ctx, aud=AUDIENCE, sub=sub, **kw)
        return self.client.post(
            "/verify", headers=self.headers(user_token=user_token), content=proof.to_json()
        )

    def log_text(self) -> str:
        return (self.workdir / "relay.log").read_text(errors="replace")


def _env(
    workdir: Path, port: int, db_url: str | None = None, master_key: Path | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(SRC),
        BIND_ADDRESS=f"127.0.0.1:{port}",
        AUDIT_DB_URL=db_url or f"sqlite:///{workdir / 'audit.db'}",
        PROOF_MESSENGER_MASTER_KEY_FILE=str(master_key or workdir / "master.key"),
        PROOF_MESSENGER_LOG_KEY_FILE=str(workdir / "log.key"),
        PROOF_MESSENGER_AUDIENCE=AUDIENCE,
    )
    env.pop("PROOF_MESSENGER_CONFIG", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def cli(
    workdir: Path, config: Path, *args: str, port: int = 1, **env: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proof_messenger.cli", *args, "--config", str(config)],
        env=_env(workdir, port, **env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def running_relay(
    workdir: Path,
    config: dict[str, Any],
    *,
    db_url: str | None = None,
    master_key: Path | None = None,
    api_key: str | None = None,
) -> Iterator[Relay]:
    """A relay subprocess; share ``db_url``/``master_key``/``api_key`` for a second instance."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "relay.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    env: dict[str, Any] = {"db_url": db_url, "master_key": master_key}
    if api_key is None:
        created = cli(
            workdir,
            cfg,
            "apikey",
            "create",
            "--name",
            "t",
            "--scopes",
            "verify,keys:write,audit:read,approvals",
            **env,
        )
        assert created.returncode == 0, created.stderr
        api_key = created.stdout.strip().splitlines()[-1].strip()
    log = (workdir / "relay.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "proof_messenger.cli", "serve", "--config", str(cfg)],
        env=_env(workdir, port, **env),
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    "relay exited at start:\n" + (workdir / "relay.log").read_text()
                )
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    "relay did not become healthy:\n" + (workdir / "relay.log").read_text()
                )
            time.sleep(0.1)
        yield Relay(url, api_key, cfg, workdir, process, client)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns a truthy value (bounded; not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


@contextmanager
def pg_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test, dropped afterwards."""
    import asyncio

    import asyncpg
    import pytest

    admin_dsn = os.environ.get("PM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"pm_test_{uuid.uuid4().hex[:16]}"

    async def admin(sql: str) -> None:
        con = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {admin_dsn}: {exc}")
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
