"""Two relays with REDIS_URL draw on one rate-limit budget per API key."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest

from tests.deploy.nginx_harness import free_port

from .relays import Cluster, fresh_pg_database, running_relays

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

BURST = 6


def test_two_instances_share_one_budget() -> None:
    with fresh_pg_database() as db_url, tempfile.TemporaryDirectory(prefix="pm-rl-") as tmp:
        workdir = Path(tmp)
        config = workdir / "relay.yaml"
        # A refill of one token per 1000 s: within the test only the burst is available.
        config.write_text(
            f"limits:\n  rate_limit_per_second: 0.001\n  rate_limit_burst: {BURST}\n",
            encoding="utf-8",
        )
        cluster = Cluster(
            db_url, workdir, config, extra_env={"REDIS_URL": "redis://127.0.0.1:6379/0"}
        )
        assert cluster.cli("db", "upgrade").returncode == 0
        api_key = cluster.create_api_key("audit:read")
        auth = {"Authorization": f"Bearer {api_key}"}
        with (
            running_relays(cluster, [free_port(), free_port()]) as (a, b),
            httpx.Client(timeout=30) as client,
        ):
            statuses = [
                client.get(relay.url + "/audit", headers=auth).status_code
                for relay in [a, b] * BURST
            ]
            # Per-instance buckets would allow 2 * BURST; the shared one allows BURST.
            assert statuses.count(200) == BURST, statuses
            assert statuses.count(429) == BURST, statuses
            refused = client.get(b.url + "/audit", headers=auth)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["code"] == "rate_limited"
