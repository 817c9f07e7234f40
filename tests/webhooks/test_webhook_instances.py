"""Two relay processes on one PostgreSQL database share the delivery work safely."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from proof_messenger.webhooks import verify_signature

from .harness import PAYMENT, Device, Receiver, Relay, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
PG_ADMIN_DSN = os.environ.get("PM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "whsec_instances_secret_0123456789"


async def _admin(sql: str) -> None:
    con = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"pm_test_{uuid.uuid4().hex[:16]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    yield PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_two_instances_deliver_each_event_once(tmp_path: Path, pg_url: str) -> None:
    rx = Receiver(fail_first=1)
    config = {
        "webhooks": {
            "poll_interval_seconds": 0.05,
            "retry_base_seconds": 0.05,
            "retry_cap_seconds": 0.2,
            "subscriptions": [
                {"id": "ledger", "url": rx.url, "events": ["proof.verified"], "secret": SECRET}
            ],
        }
    }
    shared = {
        "AUDIT_DB_URL": pg_url,
        "PROOF_MESSENGER_MASTER_KEY_FILE": str(tmp_path / "master.key"),  # one keyring
    }
    a = Relay(tmp_path / "a", config, extra_env=shared)
    b = Relay(tmp_path / "b", config, extra_env=shared)
    try:
        (tmp_path / "a").mkdir()
        key = a.api_key()
        a.start()
        b.start()
        device = Device("frank")
        device.register(a.url, key)
        proof_ids = []
        for i in range(12):
            relay = a if i % 2 else b
            r = httpx.post(
                relay.url + "/verify",
                json=device.proof({**PAYMENT, "amount_minor": i + 1}),
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            proof_ids.append(r.json()["proof_id"])
        wait_until(lambda: len(rx.accepted()) >= 12, what="12 deliveries")
        accepted = rx.accepted()
        assert len(accepted) == 12
        assert sorted(r.json()["data"]["proof_id"] for r in accepted) == sorted(proof_ids)
        requests = rx.snapshot()
        # fail_first=1: each delivery id was sent exactly twice (one 500, one 200), never
        # concurrently by both instances.
        per_id: dict[str, list[int]] = {}
        for received in requests:
            per_id.setdefault(received.delivery_id, []).append(received.status)
            verify_signature(SECRET, received.headers, received.body)
        assert all(statuses == [500, 200] for statuses in per_id.values()), per_id
    finally:
        a.stop()
        b.stop()
        rx.close()
