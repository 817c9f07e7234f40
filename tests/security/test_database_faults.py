"""The database goes away, goes read-only or fills up: clear 503s, never a false 200, no
lost audit row, no corruption, and service comes back by itself.

PostgreSQL: the relay reaches the shared server through a TCP proxy the test cuts and
restores (the server itself is never stopped: other suites use it). SQLite: the data
directory is bind-mounted read-only, or lives on a 2 MiB tmpfs that the test fills.
Mounting needs root; without it those tests skip and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .faults import Ledger, settle, verified_rows, wait_until
from .figures import record
from .relay import Relay, apost_proof, new_key, pg_available, pg_database, register, sign

FAST_LIMITS = {"rate_limit_per_second": 100000.0, "rate_limit_burst": 100000}


async def ready_is(client: httpx.AsyncClient, status: int) -> bool:
    return (await client.get("/ready")).status_code == status


async def send(client: httpx.AsyncClient, key: object, ledger: Ledger, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        proof = sign(key)  # type: ignore[arg-type]
        from .faults import proof_id

        pid = proof_id(proof)
        ledger.proofs[pid] = proof
        r = await apost_proof(client, proof)
        ledger.answers[pid] = r.status_code
        statuses.append(r.status_code)
        if r.status_code >= 500:
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["code"] == "store_unavailable", body
            assert r.headers.get("retry-after")
    return statuses


# --- PostgreSQL unavailable ----------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_outage_is_503_then_recovers(tmp_path: Path) -> None:
    if not pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    from .relay import TcpProxy

    proxy = await TcpProxy(5432).start()
    with pg_database() as direct_url:
        url = direct_url.replace(":5432/", f":{proxy.port}/")
        relay = Relay(
            tmp_path,
            url,
            config={"limits": FAST_LIMITS, "database": {"connection_timeout": 2.0}},
        )
        try:
            await asyncio.to_thread(relay.start)
            ledger = Ledger()
            key = new_key()
            async with relay.async_client() as client:
                r = await client.post("/keys", json=_key_body(key))
                assert r.status_code == 201
                assert set(await send(client, key, ledger, 5)) == {200}
                outages = 2
                during: list[int] = []
                for _ in range(outages):
                    proxy.cut()
                    await wait_until(lambda: ready_is(client, 503), 60)
                    during += await send(client, key, ledger, 5)
                    assert 200 not in during, "a proof was accepted while the database was down"
                    assert (await client.get("/health")).status_code == 200  # alive, not ready
                    proxy.restore()
                    await wait_until(lambda: ready_is(client, 200), 60)
                    after = await send(client, key, ledger, 5)
                    assert set(after) == {200}, after
                outcomes = await settle(client, ledger)
            rows = await verified_rows(direct_url)
            assert all(rows[pid] == 1 for pid in ledger.accepted())
            assert set(rows) == set(ledger.proofs) and all(n == 1 for n in rows.values())
            await asyncio.to_thread(relay.cli, "audit", "verify")
        finally:
            relay.stop()
            await proxy.close()
    record(
        "database outage (postgresql, TCP proxy cut)",
        f"{outages} outages; {len(during)} proofs sent while down: all 503 store_unavailable "
        f"(0 false 200); /ready 503 then 200 by itself; resubmitted after: {outcomes[200]} x 200, "
        f"{outcomes[409]} x 409; audit rows lost: 0",
    )


def _key_body(key: object) -> dict[str, str]:
    from proof_messenger.protocol import b64u_encode, public_key_der

    return {"sub": "alice", "public_key": b64u_encode(public_key_der(key))}  # type: ignore[arg-type]


# --- SQLite read-only and disk full --------------------------------------------------------------
def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=30)


def _can_mount(path: Path) -> str | None:
    if os.geteuid() != 0:
        return "mounting needs root"
    try:
        _mount("--bind", str(path), str(path))
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"bind mounts are not permitted here: {exc}"
    _umount(path)
    return None


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
        yield
    finally:
        _umount(path)


@pytest.mark.slow
async def test_sqlite_read_only_database_is_a_clear_error_without_corruption(
    tmp_path: Path,
) -> None:
    """A database on a read-only filesystem (e.g. remounted ro after I/O errors).

    A running relay's open write handles keep a bind mount from going read-only (the
    kernel refuses with EBUSY), so the fault is injected between runs: the relay must
    refuse to start with an error that says why, and the data must be intact after.
    """
    data = tmp_path / "data"
    data.mkdir()
    reason = _can_mount(data)
    if reason:
        pytest.skip(reason)
    relay = Relay(tmp_path, f"sqlite:///{data / 'audit.db'}", config={"limits": FAST_LIMITS})
    await asyncio.to_thread(relay.start)
    ledger = Ledger()
    key = new_key()
    try:
        with relay.client() as c:
            register(c, key)
        async with relay.async_client() as client:
            assert set(await send(client, key, ledger, 5)) == {200}
    finally:
        relay.stop()
    with read_only(data):
        with pytest.raises(RuntimeError) as info:
            await asyncio.to_thread(relay.start, 60.0)
        message = str(info.value).lower()
        assert "read-only" in message, message[-2000:]
        relay.kill()
    await asyncio.to_thread(relay.start)
    try:
        async with relay.async_client() as client:
            assert set(await send(client, key, ledger, 5)) == {200}
            await settle(client, ledger)
        rows = await verified_rows(relay.db_url)
        assert set(rows) == set(ledger.proofs) and all(n == 1 for n in rows.values())
        await asyncio.to_thread(relay.cli, "audit", "verify")
    finally:
        relay.stop()
    record(
        "read-only database (sqlite, bind mount ro)",
        "the relay refuses to start and names the read-only database; after remounting rw "
        "the data is intact, the chain verifies; lost: 0",
    )


@pytest.mark.slow
async def test_sqlite_disk_full_is_503_without_corruption(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    reason = _can_mount(data)
    if reason:
        pytest.skip(reason)
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data))
    relay = Relay(tmp_path, f"sqlite:///{data / 'audit.db'}", config={"limits": FAST_LIMITS})
    try:
        await asyncio.to_thread(relay.start)
        ledger = Ledger()
        key = new_key()
        with relay.client() as c:
            register(c, key)
        filler = data / "filler"
        async with relay.async_client() as client:
            assert set(await send(client, key, ledger, 5)) == {200}
            # Fill the disk, leaving a few KiB, then write until the relay runs out.
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            statuses: list[int] = []
            for _ in range(40):
                statuses += await send(client, key, ledger, 5)
                if 503 in statuses:
                    break
            assert 503 in statuses, "the disk never filled up"
            full = [s for s in statuses if s != 200]
            assert set(full) == {503}, statuses
            filler.unlink()
            await wait_until(lambda: ready_is(client, 200), 60)
            after = await send(client, key, ledger, 5)
            assert set(after) == {200}, after
            await settle(client, ledger)
        rows = await verified_rows(relay.db_url)
        assert set(rows) == set(ledger.proofs) and all(n == 1 for n in rows.values())
        await asyncio.to_thread(relay.cli, "audit", "verify")
    finally:
        relay.stop()
        _umount(data)
    record(
        "disk full (sqlite on a 4 MiB tmpfs)",
        f"{len(full)} answers while full: all 503 store_unavailable (0 false 200); "
        "recovered without restart after space was freed; every accepted proof audited "
        "exactly once; chain verifies; lost: 0",
    )
