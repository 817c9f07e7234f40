"""One relay process with two uvicorn workers on a fresh PostgreSQL database, end to end.

Its `database.replica_urls` names a port where nothing listens, so every audit read first
fails on the "replica" and must fall back to the primary.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proof_messenger.protocol.keys import PrivateKey, generate_private_key
from proof_messenger.protocol.sign import create_proof
from tests.deploy.nginx_harness import free_port

from .relays import AUDIENCE, Cluster, Relay, fresh_pg_database, register_key, running_relays

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Relay, str]]:
    with fresh_pg_database() as db_url, tempfile.TemporaryDirectory(prefix="pm-pg-") as tmp:
        workdir = Path(tmp)
        dead = free_port()
        config = workdir / "relay.yaml"
        config.write_text(
            "database:\n"
            f"  replica_urls: ['postgresql://postgres@127.0.0.1:{dead}/replica']\n"
            "  connection_timeout: 2\n",
            encoding="utf-8",
        )
        c = Cluster(db_url=db_url, workdir=workdir, config=config)
        c.cli("db", "upgrade").check_returncode()
        with running_relays(c, [free_port()], PROOF_MESSENGER_WORKERS="2") as relays:
            yield c, relays[0], c.create_api_key()


def _proof(key: PrivateKey, sub: str, n: int) -> dict[str, object]:
    ctx = {"type": "payment", "amount_minor": 1000 + n, "currency": "EUR", "payee": "ACME"}
    return create_proof(key, ctx, aud=AUDIENCE, sub=sub).to_json_dict()


def test_two_workers_accept_once_and_chain_verifies(cluster: tuple[Cluster, Relay, str]) -> None:
    c, relay, api_key = cluster
    auth = {"Authorization": f"Bearer {api_key}"}
    key = generate_private_key()
    with httpx.Client(timeout=30) as client:
        register_key(client, relay.url, api_key, "alice", key)
    proofs = [_proof(key, "alice", n) for n in range(60)]

    async def send_each_twice() -> list[tuple[int, int]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=relay.url, timeout=30, limits=limits) as client:

            async def twice(p: dict[str, object]) -> tuple[int, int]:
                # The same proof twice at once: the two copies may land on different workers.
                a, b = await asyncio.gather(
                    client.post("/verify", json=p, headers=auth),
                    client.post("/verify", json=p, headers=auth),
                )
                return a.status_code, b.status_code

            return await asyncio.gather(*(twice(p) for p in proofs))

    results = asyncio.run(send_each_twice())
    assert all(sorted(pair) == [200, 409] for pair in results), results

    done = c.cli("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def test_audit_reads_fall_back_to_primary_when_replica_is_down(
    cluster: tuple[Cluster, Relay, str],
) -> None:
    _, relay, api_key = cluster
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        key = generate_private_key()
        register_key(client, relay.url, api_key, "bob", key)
        accepted = client.post("/verify", json=_proof(key, "bob", 1), headers=auth)
        assert accepted.status_code == 200, accepted.text
        event_id = accepted.json()["audit_event_id"]
        page = client.get("/audit", params={"sub": "bob", "limit": 10}, headers=auth)
        assert page.status_code == 200, page.text
        assert event_id in [e["event_id"] for e in page.json()["events"]]
        one = client.get(f"/audit/{event_id}", headers=auth)
        assert one.status_code == 200, one.text
        assert one.json()["status"] == "accepted"
