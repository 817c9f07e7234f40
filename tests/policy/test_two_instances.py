"""N-of-M across two relay instances sharing one PostgreSQL database."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from .harness import pg_database, running_issuer, running_relay
from .test_policy_e2e import APP_AUD, policy_doc, relay_config, wire


@pytest.mark.postgres
def test_approvals_through_two_instances_count_once_per_subject(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc()))
    master = tmp_path / "master.key"
    with (
        running_issuer() as issuer,
        pg_database() as dsn,
        running_relay(
            tmp_path / "a", relay_config(issuer, policy_file), db_url=dsn, master_key=master
        ) as a,
        running_relay(
            tmp_path / "b",
            relay_config(issuer, policy_file),
            db_url=dsn,
            master_key=master,
            api_key=a.api_key,
        ) as b,
    ):
        ctx = wire(3_000_000, transaction_id=uuid.uuid4().hex)
        t1, t2 = f"t1-{uuid.uuid4().hex[:6]}", f"t2-{uuid.uuid4().hex[:6]}"
        k1, k2 = a.register(t1), b.register(t2)

        def token(s: str) -> str:
            return issuer.token(s, APP_AUD, roles=["treasury"])

        first = a.verify(k1, t1, ctx, token(t1))
        assert first.json()["authorization"]["status"] == "pending", first.text
        # The same approver again, through the other instance: still one approval.
        again = b.verify(k1, t1, ctx, token(t1))
        assert again.status_code == 200, again.text
        assert again.json()["authorization"]["still_needed"]["count"] == 1
        done = b.verify(k2, t2, ctx, token(t2))
        assert done.json()["authorization"]["status"] == "complete", done.text
        key = done.json()["authorization"]["transaction_key"]
        seen = a.client.get(f"/authorizations/{key}", headers=a.headers()).json()
        assert seen["status"] == "complete"
        assert sorted(x["sub"] for x in seen["approvals"]) == sorted([t1, t2])
