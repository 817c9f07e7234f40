"""A real relay subprocess (SQLite file, own keys, free port) and the CLI, for log E2E tests."""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from proof_messenger.audit.chain import seal
from proof_messenger.protocol.keys import generate_private_key, public_key_der
from proof_messenger.protocol.sign import create_proof
from proof_messenger.store._common import AUDIT_COLUMNS, AUDIT_SELECT, audit_row_values
from proof_messenger.store._merkle import record_leaf_hash
from proof_messenger.store.base import AuditDraft
from proof_messenger.store.sqlite import _rebuild_merkle_sync

SRC = Path(__file__).resolve().parents[2] / "src"
AUD = "payments.example.com"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Relay:
    root: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    api_key: str = ""

    @property
    def db(self) -> Path:
        return self.root / "relay.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        return self.root / "log-signing.key"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "BIND_ADDRESS": f"127.0.0.1:{self.port}",
            "AUDIT_DB_URL": f"sqlite:///{self.db}",
            "PROOF_MESSENGER_AUDIENCE": AUD,
            "PROOF_MESSENGER_MASTER_KEY_FILE": str(self.root / "master.key"),
            "PROOF_MESSENGER_LOG_KEY_FILE": str(self.key_file),
            "PROOF_MESSENGER_API_KEY": self.api_key,
            "LOG_LEVEL": "warning",
        }

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "proof_messenger.cli", *args],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed: {result.stdout}\n{result.stderr}")
        return result

    def create_api_key(self) -> None:
        out = self.cli(
            "apikey",
            "create",
            "--name",
            "t",
            "--scopes",
            "verify,keys:write,audit:read",
            check=True,
        )
        token = next(w for w in out.stdout.split() if w.startswith("pmk_"))
        self.api_key = token

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proof_messenger.cli", "serve"],
            env=self.env(),
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"relay-{uuid.uuid4().hex[:6]}.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("relay did not become ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    def approve(self, n: int) -> list[dict[str, Any]]:
        """Register a device key and get ``n`` proofs accepted; returns the /verify answers."""
        key = generate_private_key()
        der = base64.urlsafe_b64encode(public_key_der(key)).rstrip(b"=").decode()
        with self.http() as http:
            r = http.post("/keys", json={"sub": "alice", "public_key": der})
            assert r.status_code in (200, 201), r.text
            answers = []
            for i in range(n):
                ctx = {"type": "wire_transfer", "amount_minor": 1_250_000 + i, "currency": "EUR"}
                proof = create_proof(key, ctx, aud=AUD, sub="alice")
                r = http.post(
                    "/verify",
                    content=proof.to_json(),
                    headers={"content-type": "application/json"},
                )
                assert r.status_code == 200, r.text
                answers.append(r.json())
        return answers

    # --- what a dishonest operator with database access can do ----------------------------------

    def rewrite_history(self, how: str) -> None:
        """Rewrite the rows, re-seal the hash chain and rebuild the Merkle tree consistently.

        The operator also deletes the signed checkpoints; only clients remember them.
        """
        con = sqlite3.connect(self.db, isolation_level=None)
        try:
            from proof_messenger.store._common import audit_record_from_row

            records = [
                audit_record_from_row(r) for r in con.execute(AUDIT_SELECT + " ORDER BY seq")
            ]
            drafts: list[AuditDraft] = [r.draft for r in records]
            if how == "alter":
                d = drafts[1]
                drafts[1] = AuditDraft(
                    **{**{s: getattr(d, s) for s in AuditDraft.__slots__}, "amount_minor": 1}
                )
            elif how == "delete":
                del drafts[1]
            elif how == "insert":
                d = drafts[1]
                extra = {s: getattr(d, s) for s in AuditDraft.__slots__}
                drafts.insert(1, AuditDraft(**{**extra, "event_id": "evt-forged"}))
            elif how == "reorder":
                drafts[1], drafts[2] = drafts[2], drafts[1]
            else:  # pragma: no cover
                raise ValueError(how)
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM outbox")
            con.execute("DELETE FROM audit")
            prev = bytes(32)
            cols = ", ".join((*AUDIT_COLUMNS, "leaf_hash"))
            marks = ", ".join("?" * (len(AUDIT_COLUMNS) + 1))
            for i, draft in enumerate(drafts, start=1):
                rec = seal(i, prev, draft)
                con.execute(
                    f"INSERT INTO audit ({cols}) VALUES ({marks})",
                    (*audit_row_values(rec), record_leaf_hash(rec)),
                )
                prev = rec.entry_hash
            con.execute(
                "UPDATE chain_head SET seq = ?, entry_hash = ? WHERE id = 1", (len(drafts), prev)
            )
            _rebuild_merkle_sync(con)
            con.execute("DELETE FROM checkpoints")
            con.execute("COMMIT")
        finally:
            con.close()

    def alter_row_only(self, seq: int) -> None:
        """Edit one row's amount in place (no chain or tree recomputation)."""
        con = sqlite3.connect(self.db, isolation_level=None)
        try:
            con.execute("UPDATE audit SET amount_minor = 1 WHERE seq = ?", (seq,))
        finally:
            con.close()
