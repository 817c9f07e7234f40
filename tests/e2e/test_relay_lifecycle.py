"""The relay as a process: quickstart with curl, restart, tampering, shutdown, settings.

Each test runs its own relay (these tests stop, restart or misconfigure it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import audit_row
from .relay_harness import RelayProcess, Signer, cli_argv, running_relay

CTX = {"type": "wire_transfer", "amount_minor": 1_250_000, "currency": "EUR", "to": "ACME"}


def test_quickstart_serve_sign_curl_audit_list(tmp_path: Path) -> None:
    """Issue 3's 'done means': serve, sign with the CLI, send with curl, audit list, replay."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is required for the quickstart test")
    with running_relay(tmp_path / "relay") as relay:
        keygen = relay.cli("keygen", "--out", "alice.pem")
        assert keygen.returncode == 0, keygen.stderr
        kid = keygen.stdout.strip()
        der_b64 = _der_b64_from_pem(relay.workdir / "alice.pub.pem")
        (relay.workdir / "key.json").write_text(json.dumps({"sub": "alice", "public_key": der_b64}))
        (relay.workdir / "ctx.json").write_text(json.dumps(CTX))
        auth = f"Authorization: Bearer {relay.api_key}"
        registered = _curl(curl, relay, "/keys", "key.json", auth)
        assert json.loads(registered)["kid"] == kid

        signed = relay.cli(
            "sign",
            "--key",
            "alice.pem",
            "--context",
            "ctx.json",
            "--aud",
            relay.audience,
            "--sub",
            "alice",
        )
        assert signed.returncode == 0, signed.stderr
        (relay.workdir / "proof.json").write_text(signed.stdout)

        first = json.loads(_curl(curl, relay, "/verify", "proof.json", auth))
        assert first["valid"] is True and first["context"] == CTX

        listed = relay.cli("audit", "list", env={"COLUMNS": "250"})
        assert listed.returncode == 0, listed.stderr
        assert "proof.verified" in listed.stdout and "alice" in listed.stdout
        as_json = relay.cli("audit", "list", "--json", "--type", "proof.verified")
        assert json.loads(as_json.stdout.splitlines()[0])["event_id"] == first["audit_event_id"]

        second = json.loads(_curl(curl, relay, "/verify", "proof.json", auth, expect=409))
        assert second["code"] == "replayed" and second["proof_id"] == first["proof_id"]


def _der_b64_from_pem(path: Path) -> str:
    from proof_messenger.protocol import b64u_encode, load_public_key, public_key_der

    return b64u_encode(public_key_der(load_public_key(path.read_bytes())))


def _curl(
    curl: str, relay: RelayProcess, path: str, body_file: str, auth: str, expect: int = 0
) -> str:
    result = subprocess.run(
        [
            curl,
            "-sS",
            "-w",
            "\n%{http_code}",
            "--json",
            f"@{body_file}",
            "-H",
            auth,
            f"{relay.base_url}{path}",
        ],
        cwd=relay.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    if expect:
        assert int(status) == expect, body
    else:
        assert int(status) in (200, 201), body
    return body


def test_restart_keeps_keys_audit_and_replay_store(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    try:
        signer = Signer.new("restart-user", relay.audience)
        signer.register(relay)
        proof = signer.proof(CTX)
        accepted = relay.post_proof(proof)
        assert accepted.status_code == 200
        relay.restart()
        with relay.client() as c:
            assert c.get(f"/keys/{signer.kid}").json()["status"] == "active"
            event = c.get(f"/audit/{accepted.json()['audit_event_id']}").json()
        assert event["context"] == CTX  # the master key survived too
        replay = relay.post_proof(proof)
        assert replay.status_code == 409 and replay.json()["code"] == "replayed"
        assert relay.post_proof(signer.proof(CTX)).status_code == 200
        assert relay.cli("audit", "verify").returncode == 0
    finally:
        assert relay.stop() == 0


def test_audit_verify_names_an_altered_row(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    try:
        signer = Signer.new("tamper-user", relay.audience)
        signer.register(relay)
        ids = [relay.post_proof(signer.proof(CTX)).json()["audit_event_id"] for _ in range(3)]
    finally:
        relay.stop()
    intact = relay.cli("audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert "intact" in intact.stdout
    victim = audit_row(relay.db_path, ids[1])
    assert victim is not None
    con = sqlite3.connect(relay.db_path)
    with con:
        con.execute("UPDATE audit SET amount_minor = 1 WHERE event_id = ?", (ids[1],))
    con.close()
    tampered = relay.cli("audit", "verify")
    assert tampered.returncode == 1
    assert f"seq {victim['seq']}" in tampered.stderr, tampered.stderr


async def test_sigterm_drains_in_flight_verifications(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    signer = Signer.new("shutdown-user", relay.audience)
    signer.register(relay)
    proofs = [signer.proof({**CTX, "n": i}) for i in range(50)]
    assert relay.proc is not None
    async with relay.async_client() as c:
        tasks = [
            asyncio.create_task(
                c.post("/verify", content=p.to_json(), headers={"content-type": "application/json"})
            )
            for p in proofs
        ]
        # Signal once the relay has answered at least one of them: the rest are in flight.
        deadline = time.monotonic() + 60
        while "proof.verified" not in relay.stdout_path().read_text():
            assert time.monotonic() < deadline, "no verification finished"
            await asyncio.sleep(0.005)
        relay.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    code = await asyncio.to_thread(relay.stop)
    assert code == 0, relay.output()[-3000:]
    ok = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    assert ok, "no request succeeded"
    for r in results:
        if isinstance(r, httpx.Response):
            assert r.status_code in (200, 503), r.text
    for r in ok:
        row = audit_row(relay.db_path, r.json()["audit_event_id"])
        assert row is not None and row["status"] == "accepted"
    assert "relay.stopped" in relay.stdout_path().read_text()


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    config = {"limits": {"rate_limit_per_second": 5, "rate_limit_burst": 5}}
    with running_relay(tmp_path / "relay", config=config) as relay, relay.client() as c:
        statuses = []
        limited = None
        for _ in range(40):
            r = c.get("/keys")
            statuses.append(r.status_code)
            if r.status_code == 429:
                limited = r
                break
        assert statuses[:5] == [200] * 5
        assert limited is not None, statuses
        assert limited.json()["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # another API key has its own bucket
        other = relay.create_api_key("keys:read", name="other")
        with relay.client(other) as c2:
            assert c2.get("/keys").status_code == 200


@pytest.mark.parametrize(
    ("env", "config", "named"),
    [
        ({"PROOF_MESSENGER_AUDIENCE": "bad audience!"}, None, "PROOF_MESSENGER_AUDIENCE"),
        ({"BIND_ADDRESS": "nonsense"}, None, "BIND_ADDRESS"),
        ({}, {"limits": {"rate_limit_per_scond": 5}}, "limits.rate_limit_per_scond"),
        ({}, {"bogus_top_level": 1}, "bogus_top_level"),
        ({"LOG_LEVEL": "loud"}, None, "LOG_LEVEL"),
        ({"AUDIT_DB_URL": "mysql://x"}, None, "AUDIT_DB_URL"),
        (
            {},
            {
                "webhooks": {
                    "subscriptions": [
                        {"url": "ftp://x", "events": ["proof.verified"], "secret": "s" * 32}
                    ]
                }
            },
            "webhooks.subscriptions[0].url",
        ),
        ({}, {"policy": {"rules": [{"name": "r", "max_amount": "lots"}]}}, "policy.rules[0]"),
    ],
)
def test_invalid_setting_stops_startup_with_exit_2(
    tmp_path: Path, env: dict[str, str], config: dict[str, object] | None, named: str
) -> None:
    relay = RelayProcess(tmp_path / "relay", config=config)
    result = subprocess.run(
        cli_argv("serve"),
        cwd=relay.workdir,
        env={**relay.process_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in " ".join(result.stderr.split()), result.stderr
    assert "invalid configuration" in result.stderr
    # A refused configuration creates nothing: no database, no keys.
    created = [relay.db_path, relay.master_key_file, relay.workdir / "log-signing.key"]
    assert [p.name for p in created if p.exists()] == []


def test_health_check_and_db_upgrade(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay")
    upgraded = relay.cli("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith("applied ")
    again = relay.cli("db", "upgrade")
    assert again.returncode == 0 and again.stdout.strip() == "database is up to date"

    down = relay.cli("serve", "--health-check", "--timeout", "2")
    assert down.returncode == 1
    assert "unhealthy" in down.stderr
    relay.start()
    try:
        up = relay.cli("serve", "--health-check")
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == "healthy"
    finally:
        assert relay.stop() == 0
