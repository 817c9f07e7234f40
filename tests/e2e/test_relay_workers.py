"""``serve`` with ``workers: 2``: gunicorn's master forks two uvicorn workers.

Which worker answered is read from prometheus_client's multiprocess files: each worker
writes its own ``<kind>_<pid>.db`` in PROMETHEUS_MULTIPROC_DIR (set here to a directory
the test owns), so the verifications counted per PID show that both workers verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from proof_messenger.protocol.intent import digest as intent_digest
from proof_messenger.protocol.intent import proof_id

from .conftest import audit_row
from .relay_harness import RelayProcess, Signer

CTX = {"type": "wire_transfer", "amount_minor": 1_250_000, "currency": "EUR", "to": "ACME"}
BOOTED = re.compile(rb'"Booting worker with pid: (\d+)"')


def two_worker_relay(tmp_path: Path) -> tuple[RelayProcess, Path]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    relay = RelayProcess(
        tmp_path / "relay",
        env={"PROOF_MESSENGER_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    return relay, metrics_dir


def verifications_by_pid(metrics_dir: Path) -> dict[int, float]:
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        # prometheus_client's own reader of its per-process files (untyped there).
        entries = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        for key, value, *_ in entries:
            if json.loads(key)[0] == "proof_messenger_verifications":
                counts[pid] = counts.get(pid, 0) + value
    return counts


def booted_pids(relay: RelayProcess) -> list[int]:
    return [int(p) for p in BOOTED.findall(relay.stdout_path().read_bytes())]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def kill(relay: RelayProcess) -> None:
    """After a failure: SIGKILL the master and its workers (a killed master's forked
    workers would otherwise live on, orphaned, on the listening socket)."""
    for pid in booted_pids(relay) if relay.starts else []:
        # Only a process still running in this relay's directory (a PID can be reused).
        with contextlib.suppress(OSError):
            if Path(os.readlink(f"/proc/{pid}/cwd")) == relay.workdir.resolve():
                os.kill(pid, signal.SIGKILL)
    relay.stop(signal.SIGKILL)


def audit_rows_of_proof(db_path: Path, pid: str) -> list[str]:
    """The event ids of the audit rows that name this proof id."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT event_id FROM audit WHERE proof_id = ?", (pid,))]
    finally:
        con.close()


def audit_count(db_path: Path) -> int:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        con.close()


async def verify_batch(
    relay: RelayProcess, signer: Signer, n: int, *, while_replacing: bool = False
) -> list[httpx.Response]:
    """``n`` concurrent verifications, each on its own connection (no keep-alive), so the
    kernel hands them to whichever worker accepts first.

    ``while_replacing``: a stopping worker closes the connections it has accepted but not
    read a request from yet (uvicorn's graceful shutdown; the same with uvicorn's own
    supervisor). Such a request was never processed: sent again, the same proof must be
    accepted (not refused as a replay). Any other failure fails the test."""
    limits = httpx.Limits(max_keepalive_connections=0)
    headers = {"authorization": f"Bearer {relay.api_key}", "content-type": "application/json"}
    proofs = [signer.proof(CTX).to_json() for _ in range(n)]
    async with httpx.AsyncClient(base_url=relay.base_url, limits=limits, timeout=60) as c:
        results = await asyncio.gather(
            *(c.post("/verify", content=p, headers=headers) for p in proofs),
            return_exceptions=True,
        )
        responses = []
        for proof, result in zip(proofs, results, strict=True):
            if isinstance(result, httpx.Response):
                responses.append(result)
                continue
            for _ in range(3):  # the retry may meet the other stopping worker
                if not (while_replacing and isinstance(result, httpx.TransportError)):
                    raise result
                try:
                    result = await c.post("/verify", content=proof, headers=headers)
                    break
                except httpx.TransportError as exc:
                    result = exc
            assert isinstance(result, httpx.Response), result
            responses.append(result)
        return responses


async def test_two_workers_verify_and_sighup_replaces_them(tmp_path: Path) -> None:
    relay, metrics_dir = two_worker_relay(tmp_path)
    relay.start()
    try:
        first = booted_pids(relay)
        assert len(first) == 2, relay.output()[-3000:]
        signer = Signer.new("workers-user", relay.audience)
        signer.register(relay)
        # Both workers verify: batches until each PID has counted verifications.
        deadline = time.monotonic() + 60
        while set(verifications_by_pid(metrics_dir)) != set(first):
            assert time.monotonic() < deadline, (verifications_by_pid(metrics_dir), first)
            for r in await verify_batch(relay, signer, 20):
                assert r.status_code == 200, r.text
                assert audit_row(relay.db_path, r.json()["audit_event_id"]) is not None
        # The aggregated /metrics sums both workers.
        total = sum(verifications_by_pid(metrics_dir).values())
        async with httpx.AsyncClient(base_url=relay.base_url, timeout=10) as c:
            metrics = (await c.get("/metrics")).text
        served = sum(
            float(ln.split()[-1])
            for ln in metrics.splitlines()
            if ln.startswith("proof_messenger_verifications_total{")
        )
        assert served == total
        # Both workers' group commits are summed too: one append per audit row here
        # (every proof is fresh, so no claim is lost).
        appended = sum(
            float(ln.split()[-1])
            for ln in metrics.splitlines()
            if ln.startswith("proof_messenger_audit_commit_rows_sum")
        )
        with contextlib.closing(sqlite3.connect(relay.db_path)) as con:
            assert appended == con.execute("SELECT count(*) FROM audit").fetchone()[0]

        # SIGHUP: the master forks two new workers and stops the old ones gracefully,
        # while requests keep being answered (or, never read by a stopping worker, can be
        # sent again).
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        answered = 0
        while len(booted_pids(relay)) < 4 or any(map(alive, first)):
            assert time.monotonic() < deadline, relay.output()[-3000:]
            for r in await verify_batch(relay, signer, 5, while_replacing=True):
                assert r.status_code == 200, r.text
                answered += 1
        assert answered > 0
        second = booted_pids(relay)[2:]
        assert not set(second) & set(first)
        assert relay.running
        # The new workers verify; the old workers' live gauges were folded away
        # (child_exit -> mark_process_dead).
        deadline = time.monotonic() + 60
        while not set(verifications_by_pid(metrics_dir)) & set(second):
            assert time.monotonic() < deadline, relay.output()[-3000:]
            for r in await verify_batch(relay, signer, 10):
                assert r.status_code == 200, r.text
        for pid in first:
            assert not list(metrics_dir.glob(f"gauge_live*_{pid}.db")), pid
        code = await asyncio.to_thread(relay.stop)
        assert code == 0, relay.output()[-3000:]
        assert relay.stderr_path().read_text() == ""
        for line in relay.stdout_path().read_text().splitlines():
            json.loads(line)  # one JSON object per line, gunicorn's messages included
    finally:
        kill(relay)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_drains_both_workers(tmp_path: Path, sig: signal.Signals) -> None:
    relay, _ = two_worker_relay(tmp_path)
    relay.start()
    try:
        signer = Signer.new("shutdown-user", relay.audience)
        signer.register(relay)
        proofs = [signer.proof({**CTX, "n": i}) for i in range(60)]
        assert relay.proc is not None
        before = audit_count(relay.db_path)
        async with relay.async_client() as c:
            tasks = [
                asyncio.create_task(
                    c.post(
                        "/verify",
                        content=p.to_json(),
                        headers={"content-type": "application/json"},
                    )
                )
                for p in proofs
            ]
            deadline = time.monotonic() + 60
            while "proof.verified" not in relay.stdout_path().read_text():
                assert time.monotonic() < deadline, "no verification finished"
                await asyncio.sleep(0.005)
            relay.proc.send_signal(sig)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        started = time.monotonic()
        code = await asyncio.to_thread(relay.stop)
        assert code == 0, relay.output()[-3000:]
        assert time.monotonic() - started < 20  # drained, not killed after the grace period
        responses = [r for r in results if isinstance(r, httpx.Response)]
        # A request still in the listen backlog, or accepted but not yet read, when the
        # workers stop listening has its connection closed unanswered (every HTTP server
        # does this; a client retries). What must never happen is a proof the relay
        # audited without answering: each such proof must have no audit row at all.
        unanswered = [
            (p, r)
            for p, r in zip(proofs, results, strict=True)
            if not isinstance(r, httpx.Response)
        ]
        for proof, error in unanswered:
            assert isinstance(error, httpx.TransportError), error
            pid = proof_id(intent_digest(proof.intent))
            assert not audit_rows_of_proof(relay.db_path, pid), f"{pid} audited, never answered"
        ok = [r for r in responses if r.status_code == 200]
        assert ok, "no request succeeded"
        for r in responses:
            assert r.status_code in (200, 503), r.text
        for r in ok:
            row = audit_row(relay.db_path, r.json()["audit_event_id"])
            assert row is not None and row["status"] == "accepted"
        # The proof-id look-up above finds the rows of the answered proofs (so its "no row"
        # for an unanswered one is not vacuous).
        for proof, result in zip(proofs, results, strict=True):
            if isinstance(result, httpx.Response) and result.status_code == 200:
                pid = proof_id(intent_digest(proof.intent))
                answered = result.json()["audit_event_id"]
                assert audit_rows_of_proof(relay.db_path, pid) == [answered]
        # Nothing audited that was not answered (the group commit drained, nothing extra).
        assert audit_count(relay.db_path) - before == len(ok)
        out = relay.stdout_path().read_text()
        assert out.count('"relay.stopped"') == 2
    finally:
        kill(relay)


async def test_sighup_with_an_invalid_policy_keeps_the_workers(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: everything\n    default: true\n")
    relay = RelayProcess(
        tmp_path / "relay",
        config={"workers": 2, "policy": {"file": str(policy), "reload_interval_seconds": 0}},
    )
    relay.start()
    try:
        assert relay.proc is not None
        headers = {"authorization": f"Bearer {relay.api_key}"}

        async def versions() -> set[str]:
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=relay.base_url, limits=limits) as c:
                got = await asyncio.gather(*(c.get("/policy", headers=headers) for _ in range(10)))
            return {r.json()["version"] for r in got}

        first = booted_pids(relay)
        (v0,) = await versions()
        # A broken policy: the master refuses the reload, the workers keep serving.
        policy.write_text("rules: [[[ broken\n")
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload refused" not in relay.stdout_path().read_text():
            assert time.monotonic() < deadline, relay.output()[-3000:]
            await asyncio.sleep(0.05)
        assert relay.running
        assert await versions() == {v0}
        assert booted_pids(relay) == first
        # Fixed: SIGHUP replaces the workers, which load the new policy.
        policy.write_text("rules:\n  - name: everything-else\n    default: true\n")
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while len(booted_pids(relay)) < 4 or any(map(alive, first)):
            assert time.monotonic() < deadline, relay.output()[-3000:]
            await asyncio.sleep(0.05)
        (v1,) = await versions()
        assert v1 != v0
        code = await asyncio.to_thread(relay.stop)
        assert code == 0, relay.output()[-3000:]
    finally:
        kill(relay)
