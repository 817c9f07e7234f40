"""SQLite read caches (keys, API keys, approval nonces) never serve a stale row.

Two ``SQLiteStore`` objects on one file map the shared change counters independently,
exactly like two relay worker processes; one test also uses a real second process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proof_messenger.store import ApiKeyRecord, KeyRecord
from proof_messenger.store._generations import APPROVALS, Generations, NonceFilter
from proof_messenger.store.sqlite import SQLiteStore
from tests.store.conftest import T0, make_approval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    path = str(tmp_path / "relay.db")
    a, b = SQLiteStore(path), SQLiteStore(path)
    await a.open()
    await a.migrate()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def _key(kid: str) -> KeyRecord:
    return KeyRecord(kid=kid, sub="alice", alg="ES256", public_key=b"\x30" * 91, created_at=T0)


async def test_signing_key_revoked_elsewhere_is_seen_at_once(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    await a.insert_key(_key("k1"))
    first = await a.get_key("k1")
    assert first is not None and first.status == "active"
    assert await a.get_key("k1") is first  # served from the cache
    await b.revoke_key("k1", "lost", T0 + 1)
    after = await a.get_key("k1")
    assert after is not None and after.status == "revoked" and after.revoke_reason == "lost"


async def test_api_key_revoked_elsewhere_is_seen_at_once(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    await a.insert_api_key(ApiKeyRecord("pk_a", "ops", b"\x01" * 32, ("verify",), T0))
    rec = await a.get_api_key("pk_a")
    assert rec is not None and rec.revoked_at is None
    assert await b.revoke_api_key("pk_a", T0 + 2)
    rec = await a.get_api_key("pk_a")
    assert rec is not None and rec.revoked_at == T0 + 2


async def test_sign_count_advanced_elsewhere_is_seen_at_once(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    await a.insert_key(_key("k2"))
    assert (await a.get_key("k2")).sign_count == 0  # type: ignore[union-attr]
    assert await b.advance_sign_count("k2", 0, 7)
    assert (await a.get_key("k2")).sign_count == 7  # type: ignore[union-attr]


async def test_unknown_ids_are_not_cached(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    """A key registered after a miss is found (no negative entries to go stale)."""
    a, b = pair
    assert await a.get_key("later") is None
    await b.insert_key(_key("later"))
    assert await a.get_key("later") is not None


async def test_approval_created_elsewhere_is_found_by_nonce(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    assert await a.get_approval_by_nonce(os.urandom(32)) is None  # filter loaded, empty
    created = [make_approval() for _ in range(3)]
    for r in created:
        await b.insert_approval(r)
    for r in created:
        assert await a.get_approval_by_nonce(r.nonce) == r
    assert await a.get_approval_by_nonce(os.urandom(32)) is None


async def test_revocation_by_another_process(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    """The CLI revoking a key in its own process reaches a running relay's cache."""
    a, _ = pair
    await a.insert_key(_key("k3"))
    assert (await a.get_key("k3")).status == "active"  # type: ignore[union-attr]
    script = (
        "import asyncio, sys\n"
        "from proof_messenger.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    s = SQLiteStore(sys.argv[1]); await s.open()\n"
        "    await s.revoke_key('k3', 'cli', 1.0); await s.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, a.path, env=env, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (await a.get_key("k3")).status == "revoked"  # type: ignore[union-attr]


def test_nonce_filter_grows_and_keeps_every_nonce(tmp_path: Path) -> None:
    gens = Generations(str(tmp_path / "gen"))
    rows: list[tuple[int, bytes]] = []
    f = NonceFilter(gens, lambda after: [r for r in rows if r[0] > after], initial_capacity=8)
    for batch in range(5):
        rows.extend((len(rows) + 1, os.urandom(32)) for _ in range(10 * (batch + 1)))
        gens.bump(APPROVALS)
        assert all(f.might_contain(n) for _, n in rows)
    misses = sum(f.might_contain(os.urandom(32)) for _ in range(2000))
    assert misses < 40  # false positives stay rare after growing
    gens.close()


def test_generations_are_shared_through_the_file(tmp_path: Path) -> None:
    one, two = Generations(str(tmp_path / "gen")), Generations(str(tmp_path / "gen"))
    assert one.read(APPROVALS) == two.read(APPROVALS) == 0
    one.bump(APPROVALS)
    assert two.read(APPROVALS) == 1
    one.close()
    two.close()
