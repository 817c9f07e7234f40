"""request_approval / wait_for_approval against a real relay (needs the approvals API)."""

from __future__ import annotations

import threading

import httpx
import pytest

from proof_messenger.client import (
    ApprovalTimeoutError,
    AsyncProofMessengerClient,
    ProofMessengerClient,
    RetryPolicy,
)
from tests.webhooks.harness import PAYMENT, Device

from .conftest import RelayUnderTest

FAST = RetryPolicy(max_attempts=2, backoff_base=0.01)


@pytest.fixture
def approvals_available(relay: RelayUnderTest) -> None:
    r = httpx.get(relay.url + "/approvals/none", headers={"Authorization": f"Bearer {relay.key}"})
    if r.status_code == 404 and r.json().get("title") == "Not found":
        pytest.skip("this relay build has no approvals API yet")


def _decline_later(relay: RelayUnderTest, approval_id: str, delay: float) -> threading.Timer:
    def decline() -> None:
        httpx.post(
            f"{relay.url}/approvals/{approval_id}/decline",
            json={"reason": "not me"},
            headers={"Authorization": f"Bearer {relay.key}"},
            timeout=30,
        )

    timer = threading.Timer(delay, decline)
    timer.start()
    return timer


def test_wait_for_approval_returns_the_final_state(
    relay: RelayUnderTest, approvals_available: None
) -> None:
    dev = Device("approver")
    dev.register(relay.url, relay.key)
    with ProofMessengerClient(relay.url, relay.key, retry=FAST) as c:
        approval = c.request_approval(dev.sub, {"type": "payment", **PAYMENT}, ttl_seconds=120)
        assert approval.status == "pending" and approval.nonce and approval.intent
        with pytest.raises(ApprovalTimeoutError) as timeout:
            c.wait_for_approval(approval.id, timeout=0.3)
        assert timeout.value.approval.status == "pending"
        timer = _decline_later(relay, approval.id, 0.5)
        final = c.wait_for_approval(approval.id, timeout=60)
        timer.join()
    assert final.status == "declined" and final.is_final


async def test_async_wait_for_approval(relay: RelayUnderTest, approvals_available: None) -> None:
    dev = Device("approver-async")
    dev.register(relay.url, relay.key)
    async with AsyncProofMessengerClient(relay.url, relay.key, retry=FAST) as c:
        approval = await c.request_approval(dev.sub, {"type": "payment", **PAYMENT})
        timer = _decline_later(relay, approval.id, 0.5)
        final = await c.wait_for_approval(approval.id, timeout=60)
        timer.join()
    assert final.status == "declined"
