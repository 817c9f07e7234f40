"""Three PostgreSQL-backed relays behind real nginx (`least_conn`, deploy/nginx template).

What it proves, on one fresh database:

* the same proof sent at once to all three instances is accepted exactly once;
* a key revoked through one instance is refused at once by the others (`key_revoked`);
* under concurrent load through nginx, with one instance SIGKILLed mid-load: nginx keeps
  serving through the others, every proof answered 200 is in the audit log exactly once
  (status accepted, with the audit_event_id it was answered with), no digest is accepted
  twice (replay table == accepted audit rows), and the hash chain verifies
  (`proof-messenger audit verify` exits 0);
* every accepted proof, resent directly to each surviving instance, is refused `replayed`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from proof_messenger.protocol.keys import PrivateKey, generate_private_key
from proof_messenger.protocol.sign import create_proof
from tests.deploy.nginx_harness import (
    NGINX_BINARY,
    free_port,
    nginx_prefix,
    render_scaleout_config,
    running_nginx,
)

from .relays import AUDIENCE, Cluster, Relay, fresh_pg_database, register_key, running_relays

pytestmark = [
    pytest.mark.scaleout,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(NGINX_BINARY is None, reason="nginx is not installed"),
]

N_KEYS = 12
N_LOAD = 420
N_RACE = 20
CONCURRENCY = 16
KILL_AFTER = N_LOAD // 3  # responses received before one instance is SIGKILLed


@dataclass
class Sent:
    proof: dict[str, Any]
    status: int
    body: dict[str, Any]
    started_after_kill: bool


def _proofs(keys: list[tuple[str, PrivateKey]], count: int, tag: str) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        sub, key = keys[n % len(keys)]
        ctx = {"type": "payment", "amount_minor": 100 + n, "currency": "EUR", "ref": f"{tag}-{n}"}
        out.append(create_proof(key, ctx, aud=AUDIENCE, sub=sub, ttl=300).to_json_dict())
    return out


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"raw": response.text[:200]}
    return body if isinstance(body, dict) else {"raw": body}


async def _load(
    nginx_url: str, auth: dict[str, str], proofs: list[dict[str, Any]], victim: Relay
) -> tuple[list[Sent], float]:
    """Send every proof once through nginx from CONCURRENCY clients; kill `victim` mid-way."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for p in proofs:
        queue.put_nowait(p)
    results: list[Sent] = []
    killed = asyncio.Event()
    killed_at = 0.0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal killed_at
        while True:
            try:
                proof = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            after_kill = killed.is_set()
            try:
                response = await client.post("/verify", json=proof, headers=auth)
                status, body = response.status_code, _json(response)
            except httpx.HTTPError as exc:  # nginx itself must never drop us
                status, body = -1, {"error": repr(exc)}
            results.append(Sent(proof, status, body, after_kill))
            if len(results) >= KILL_AFTER and not killed.is_set():
                killed.set()
                killed_at = time.monotonic()
                await asyncio.to_thread(victim.kill)

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=nginx_url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))
    return results, killed_at


async def _post_all(
    url: str, auth: dict[str, str], proofs: list[dict[str, Any]]
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(p: dict[str, Any]) -> httpx.Response:
            async with sem:
                return await client.post("/verify", json=p, headers=auth)

        return await asyncio.gather(*(one(p) for p in proofs))


async def _race(relays: list[Relay], auth: dict[str, str], proof: dict[str, Any]) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post(r.url + "/verify", json=proof, headers=auth) for r in relays)
        )
    for response in responses:
        if response.status_code != 200:
            assert response.json()["code"] == "replayed", response.text
    return [r.status_code for r in responses]


async def _audit_rows(db_url: str) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    con = await asyncpg.connect(db_url, timeout=10)
    try:
        audit = await con.fetch("SELECT seq, event_id, event_type, status, proof_id FROM audit")
        replay = await con.fetch("SELECT digest, event_id FROM replay")
    finally:
        await con.close()
    return list(audit), list(replay)


def test_three_relays_behind_nginx(tmp_path: Path) -> None:
    with fresh_pg_database() as db_url, nginx_prefix() as prefix:
        config = tmp_path / "relay.yaml"
        # The load must not be throttled: a generous budget, shared through Redis.
        config.write_text(
            "limits:\n  rate_limit_per_second: 100000\n  rate_limit_burst: 100000\n",
            encoding="utf-8",
        )
        cluster = Cluster(
            db_url, tmp_path, config, extra_env={"REDIS_URL": "redis://127.0.0.1:6379/0"}
        )
        upgrade = cluster.cli("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        api_key = cluster.create_api_key()
        auth = {"Authorization": f"Bearer {api_key}"}
        keys = [(f"user{i}", generate_private_key()) for i in range(N_KEYS)]
        revoked_sub, revoked_key = "mallory", generate_private_key()
        load = _proofs(keys, N_LOAD, "load")
        race = _proofs(keys, N_RACE, "race")
        after = _proofs(keys, 30, "after")

        ports = [free_port() for _ in range(3)]
        with running_relays(cluster, ports) as relays:
            a, b, victim = relays
            with httpx.Client(timeout=30) as client:
                for sub, key in [*keys, (revoked_sub, revoked_key)]:
                    register_key(client, a.url, api_key, sub, key)

            # 1. The same proof at once to all three instances: exactly one accepts.
            for proof in race:
                statuses = asyncio.run(_race(relays, auth, proof))
                assert sorted(statuses) == [200, 409, 409], statuses

            # 2. Revocation through A is seen by B and C at once.
            (ok,) = asyncio.run(
                _post_all(b.url, auth, _proofs([(revoked_sub, revoked_key)], 1, "r0"))
            )
            assert ok.status_code == 200, ok.text
            kid = ok.json()["kid"]
            with httpx.Client(timeout=30) as client:
                revoke = client.request(
                    "DELETE", f"{a.url}/keys/{kid}", json={"reason": "compromised"}, headers=auth
                )
            assert revoke.status_code == 200, revoke.text
            for relay in (b, victim):
                (refused,) = asyncio.run(
                    _post_all(relay.url, auth, _proofs([(revoked_sub, revoked_key)], 1, relay.name))
                )
                assert refused.status_code == 403, refused.text
                assert refused.json()["code"] == "key_revoked"

            # 3. Load through nginx; SIGKILL one instance a third of the way in.
            nginx_port = free_port()
            conf = prefix / "nginx.conf"
            conf.write_text(
                render_scaleout_config(nginx_port, [f"127.0.0.1:{p}" for p in ports], prefix),
                encoding="utf-8",
            )
            nginx_url = f"http://127.0.0.1:{nginx_port}"
            with running_nginx(conf, prefix, [nginx_port]):
                sent, _ = asyncio.run(_load(nginx_url, auth, load, victim))
                assert victim.proc.poll() is not None
                # nginx keeps serving through the survivors.
                after_responses = asyncio.run(_post_all(nginx_url, auth, after))
                assert [r.status_code for r in after_responses] == [200] * len(after), [
                    (r.status_code, r.text[:200]) for r in after_responses if r.status_code != 200
                ]

            assert len(sent) == N_LOAD
            by_status = Counter(s.status for s in sent)
            accepted = [s for s in sent if s.status == 200]
            failed = [s for s in sent if s.status != 200]
            # Only requests in flight on the killed instance may fail (nginx does not resend a
            # POST the upstream may have processed); they fail as 502, never as a wrong answer.
            assert all(s.status == 502 for s in failed), by_status
            assert len(failed) <= CONCURRENCY, by_status
            assert sum(s.started_after_kill for s in accepted) > 0, by_status

            # 4. Every accepted proof resent directly to each survivor: refused as a replay.
            for relay in (a, b):
                responses = asyncio.run(_post_all(relay.url, auth, [s.proof for s in accepted]))
                bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 409]
                assert not bad, bad
                assert {r.json()["code"] for r in responses} <= {"replayed"}
            # A 502'd proof may or may not have been committed before the kill; a client retry
            # settles it (accepted now, or refused as already accepted) — never twice.
            retried = asyncio.run(_post_all(a.url, auth, [s.proof for s in failed]))
            assert all(r.status_code in (200, 409) for r in retried), [r.text for r in retried]

            # 5. The database: each accepted proof once, replay claims == accepted rows.
            audit, replay = asyncio.run(_audit_rows(db_url))
            verified = [r for r in audit if r["event_type"] == "proof.verified"]
            assert all(r["status"] == "accepted" for r in verified)
            per_proof = Counter(r["proof_id"] for r in verified)
            duplicates = {p: n for p, n in per_proof.items() if n != 1}
            assert not duplicates, duplicates
            by_event = {r["event_id"]: r for r in verified}
            for s in accepted:
                row = by_event.get(s.body["audit_event_id"])
                assert row is not None, s.body
                assert row["proof_id"] == s.body["proof_id"]
            assert {r["event_id"] for r in replay} == set(by_event)
            assert len(replay) == len(verified)
            # Every proof sent is now accepted exactly once: 200s, race winners, the revoked
            # key's first proof, the post-kill batch, and each 502'd proof (before the kill or
            # on retry).
            assert len(verified) == len(accepted) + len(failed) + N_RACE + 1 + len(after)
            seqs = sorted(r["seq"] for r in audit)
            assert seqs == list(range(1, len(audit) + 1))  # one chain, no gaps, no fork

            # GET /audit through a survivor finds an event accepted by any instance.
            sample = random.choice(accepted).body["audit_event_id"]
            with httpx.Client(timeout=30) as client:
                got = client.get(f"{b.url}/audit/{sample}", headers=auth)
            assert got.status_code == 200 and got.json()["status"] == "accepted", got.text

        # 6. The hash chain verifies.
        check = cluster.cli("audit", "verify")
        assert check.returncode == 0, check.stdout + check.stderr
