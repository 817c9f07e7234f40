"""SIGKILL the relay under load (SQLite and PostgreSQL), restart it, and check the books.

After each kill and restart: every proof answered 200 has exactly one ``proof.verified``
row, the hash chain verifies (``proof-messenger audit verify``), every row's encrypted
context decrypts (nothing half-written is visible), no proof is accepted
twice (every proof ever sent is resubmitted: 409 if it was accepted, 200 only if it
never was), and every in-doubt proof (no answer) settles to exactly one accepted row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from .faults import Ledger, load, settle, verified_rows
from .figures import record
from .relay import Relay, new_key, pg_available, pg_database, register

KILLS = 3


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    if not pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with pg_database() as url:
        yield url


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing(db_url: str, tmp_path: Path) -> None:
    backend = db_url.split(":", 1)[0]
    relay = Relay(
        tmp_path,
        db_url,
        config={"limits": {"rate_limit_per_second": 100000.0, "rate_limit_burst": 100000}},
    )
    await asyncio.to_thread(relay.start)
    ledger = Ledger()
    key = new_key()
    try:
        with relay.client() as c:
            register(c, key)
        for _ in range(KILLS):
            async with relay.async_client() as client:
                stop = asyncio.Event()
                runner = asyncio.create_task(load(client, key, ledger, stop))
                # Kill once the relay has accepted a good number of proofs in this round.
                target = len(ledger.accepted()) + 60
                deadline = asyncio.get_running_loop().time() + 120
                while len(ledger.accepted()) < target:
                    await asyncio.sleep(0.02)
                    assert not runner.done(), runner.exception()
                    assert asyncio.get_running_loop().time() < deadline, ledger.codes
                await asyncio.to_thread(relay.kill)
                stop.set()
                await runner
            await asyncio.to_thread(relay.start)
            rows = await verified_rows(db_url, relay.workdir / "master.key")
            lost = [pid for pid in ledger.accepted() if rows[pid] != 1]
            assert not lost, f"{len(lost)} proofs answered 200 are not audited exactly once"
            await asyncio.to_thread(relay.cli, "audit", "verify")
        in_doubt = len(ledger.in_doubt())
        answered_before = len(ledger.accepted())
        async with relay.async_client() as client:
            outcomes = await settle(client, ledger)
        rows = await verified_rows(db_url, relay.workdir / "master.key")
        # Exactly one accepted row per proof: nothing twice, and in-doubt ones settled.
        assert set(rows) == set(ledger.proofs)
        assert all(n == 1 for n in rows.values())
        await asyncio.to_thread(relay.cli, "audit", "verify")
    finally:
        relay.stop()
    committed_unanswered = outcomes[409] - answered_before
    record(
        f"crash safety ({backend})",
        f"{KILLS} SIGKILLs under load; {len(ledger.proofs)} proofs sent; {in_doubt} in doubt "
        f"at a kill; {answered_before} answered 200, all audited exactly once; "
        f"resubmitted all: {outcomes[409]} x 409 ({committed_unanswered} committed but unanswered "
        f"at the kill), {outcomes[200]} x 200 (never committed); each proof audited exactly "
        "once; lost: 0",
    )
