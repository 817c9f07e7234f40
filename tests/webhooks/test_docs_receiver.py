"""The receiver in docs/webhooks.md, run as written against a real relay."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .harness import PAYMENT, SRC, Device, Relay, free_port, wait_until

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec_docs_receiver_secret_000000"


def receiver_source() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### A complete receiver", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "receiver example not found in docs/webhooks.md"
    return match.group(1)


def test_documented_receiver_verifies_and_deduplicates(tmp_path: Path) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(receiver_source(), encoding="utf-8")
    port = free_port()
    out = tmp_path / "receiver.out"
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "PM_WEBHOOK_SECRET": SECRET,
        "PORT": str(port),
        "DELIVERIES_DB": str(tmp_path / "deliveries.db"),
    }
    with out.open("wb") as sink:
        receiver = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=sink, stderr=sink
        )
    relay = Relay(
        tmp_path / "relay",
        {
            "webhooks": {
                "poll_interval_seconds": 0.05,
                "retry_base_seconds": 0.05,
                "subscriptions": [
                    {
                        "id": "docs",
                        "url": f"http://127.0.0.1:{port}/hook",
                        "events": ["proof.verified"],
                        "secret": SECRET,
                    }
                ],
            }
        },
    )
    try:
        (tmp_path / "relay").mkdir()
        key = relay.api_key()
        relay.start()
        device = Device("grace")
        device.register(relay.url, key)
        r = httpx.post(
            relay.url + "/verify",
            json=device.proof(PAYMENT),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200
        audit_event_id = r.json()["audit_event_id"]
        wait_until(lambda: audit_event_id in out.read_text(), what="receiver handled the event")
        # A forged delivery is refused by the documented receiver.
        forged = httpx.post(
            f"http://127.0.0.1:{port}/hook",
            content=b'{"id":"x","type":"proof.verified","data":{}}',
            headers={"X-Proof-Messenger-Signature": "t=1,v1=" + "00" * 32},
            timeout=30,
        )
        assert forged.status_code == 400
        # Replaying the genuine delivery through the API: same id, handled only once.
        sub_deliveries = httpx.get(
            relay.url + "/webhooks/docs/deliveries",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).json()["deliveries"]
        (delivery,) = sub_deliveries

        def delivered() -> list[dict[str, object]]:
            return list(
                httpx.get(
                    relay.url + "/webhooks/docs/deliveries",
                    params={"status": "delivered"},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                ).json()["deliveries"]
            )

        # (Attempts may include refusals while the receiver process was still starting.)
        attempts_before = int(wait_until(delivered, what="delivered")[0]["attempts"])
        replay = httpx.post(
            f"{relay.url}/webhooks/docs/deliveries/{delivery['id']}/replay",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert replay.status_code == 202
        wait_until(
            lambda: any(d["attempts"] == attempts_before + 1 for d in delivered()),
            what="replayed delivery acknowledged",
        )
        assert out.read_text().count(audit_event_id) == 1
    finally:
        relay.stop()
        receiver.terminate()
        receiver.wait(timeout=30)
