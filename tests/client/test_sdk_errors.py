"""The SDK against a real relay: every error code reachable over HTTP maps to its class."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from proof_messenger.client import (
    AsyncProofMessengerClient,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProofMessengerAPIError,
    ProofMessengerClient,
    RateLimitedError,
    RetryPolicy,
)
from proof_messenger.protocol import b64u_decode, b64u_encode
from proof_messenger.protocol import errors as perr
from tests.webhooks.harness import PAYMENT, Device, Relay

from .conftest import AsyncCountingTransport, CountingTransport, RelayUnderTest

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "protocol-v1.json"
NO_RETRY = RetryPolicy(max_attempts=1)


def structural_vectors() -> list[Any]:
    """Negative vectors of checks 1-2: the relay rejects them before looking at time or keys."""
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    structural = {
        "malformed_proof",
        "unsupported_version",
        "unsupported_algorithm",
        "malformed_intent",
        "non_canonical_encoding",
        "invalid_context",
    }
    return [
        pytest.param(v["envelope_json"], v["expected_error"], id=v["name"])
        for v in doc["negative"]
        if v["expected_error"] in structural
    ]


def client(relay: RelayUnderTest, **kw: Any) -> tuple[ProofMessengerClient, CountingTransport]:
    transport = CountingTransport()
    kw.setdefault("retry", RetryPolicy(max_attempts=3, backoff_base=0.01))
    return ProofMessengerClient(relay.url, relay.key, transport=transport, **kw), transport


@pytest.mark.parametrize(("envelope", "code"), structural_vectors())
def test_structural_rejections_map_to_protocol_classes(
    relay: RelayUnderTest, envelope: Any, code: str
) -> None:
    c, sent = client(relay)
    with c, pytest.raises(perr.ProofError) as info:
        c.verify(envelope)
    err = info.value
    assert isinstance(err, perr.ERROR_CLASSES[code])
    assert isinstance(err, ProofMessengerAPIError)
    assert err.code == code and err.status == perr.ERROR_CLASSES[code].status
    assert err.audit_event_id  # rejections are audited
    assert len(sent.sent) == 1  # a 4xx is never retried


def _flip_sig(proof: dict[str, Any]) -> dict[str, Any]:
    sig = bytearray(b64u_decode(proof["sig"]))
    sig[10] ^= 0x01
    return {**proof, "sig": b64u_encode(bytes(sig))}


def test_relay_side_rejections(relay: RelayUnderTest) -> None:
    alice = Device("sdk-alice")
    c, sent = client(relay)
    with c:
        alice_kid = c.register_key(alice.sub, alice.key.public_key(), label="phone").kid
        assert c.get_key(alice_kid).label == "phone"
        revoked = Device("sdk-revoked")
        revoked_kid = c.register_key(revoked.sub, revoked.key.public_key()).kid
        info = c.revoke_key(revoked_kid, "lost")
        assert info.status == "revoked" and info.revoke_reason == "lost"
        now = time.time()
        cases: list[tuple[dict[str, Any], type[perr.ProofError]]] = [
            (alice.proof(PAYMENT, aud="other.example.com"), perr.WrongAudience),
            (alice.proof(PAYMENT, now=now + 3600), perr.NotYetValid),
            (alice.proof(PAYMENT, now=now - 3600), perr.Expired),
            (alice.proof(PAYMENT, ttl=3600), perr.LifetimeTooLong),
            (Device("nobody").proof(PAYMENT), perr.UnknownKey),
            (revoked.proof(PAYMENT), perr.KeyRevoked),
            (alice.proof(PAYMENT, sub="mallory"), perr.SubjectMismatch),
            (_flip_sig(alice.proof(PAYMENT)), perr.InvalidSignature),
        ]
        for proof, cls in cases:
            sent.sent.clear()
            with pytest.raises(cls) as info_exc:
                c.verify(proof)
            assert isinstance(info_exc.value, ProofMessengerAPIError)
            assert info_exc.value.code == cls.code
            assert len(sent.sent) == 1, cls
        good = alice.proof(PAYMENT)
        result = c.verify(good)
        assert result.context == PAYMENT and result.sub == alice.sub and result.kid == alice_kid
        sent.sent.clear()
        with pytest.raises(perr.Replayed) as replay:
            c.verify(good)
        assert isinstance(replay.value, ProofMessengerAPIError)
        assert replay.value.proof_id == result.proof_id
        assert len(sent.sent) == 1


def test_http_errors(relay: RelayUnderTest) -> None:
    bad = ProofMessengerClient(relay.url, "pmk_AAAAAAAAAAAAAAAA_" + "A" * 43, retry=NO_RETRY)
    with bad, pytest.raises(AuthenticationError) as auth:
        bad.list_keys()
    assert auth.value.status == 401 and auth.value.code == "invalid_api_key"
    narrow = ProofMessengerClient(relay.url, relay.verify_only, retry=NO_RETRY)
    with narrow, pytest.raises(PermissionDeniedError) as scope:
        narrow.list_keys()
    assert scope.value.code == "insufficient_scope"
    c, sent = client(relay)
    with c:
        with pytest.raises(PayloadTooLargeError) as big:
            c.verify({"v": 1, "alg": "ES256", "kid": "x", "intent": "A" * 70_000, "sig": "A"})
        assert big.value.status == 413 and big.value.code == "payload_too_large"
        with pytest.raises(NotFoundError):
            c.get_key("no-such-kid")
        with pytest.raises(InvalidRequestError):
            c.revoke_key("whatever", "")
        with pytest.raises(TypeError):
            list(c.audit(colour="red"))
    assert len(sent.sent) == 3  # one request each, no retries on 4xx


def test_rate_limited_is_retried_then_raised_with_retry_after(tmp_path: Path) -> None:
    relay = Relay(tmp_path, {"limits": {"rate_limit_per_second": 0.01, "rate_limit_burst": 2}})
    key = relay.api_key()
    relay.start()
    try:
        transport = CountingTransport()
        policy = RetryPolicy(max_attempts=3, backoff_base=0.01, max_retry_after=0.05)
        with ProofMessengerClient(relay.url, key, retry=policy, transport=transport) as c:
            c.list_keys()
            c.list_keys()
            transport.sent.clear()
            with pytest.raises(RateLimitedError) as info:
                c.list_keys()
        assert info.value.status == 429 and info.value.code == "rate_limited"
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        assert len(transport.sent) == 3  # 429 is retried (Retry-After capped by the policy)
    finally:
        relay.stop()


async def test_async_client_maps_errors_and_never_retries_4xx(relay: RelayUnderTest) -> None:
    transport = AsyncCountingTransport()
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01)
    async with AsyncProofMessengerClient(
        relay.url, relay.key, retry=policy, transport=transport
    ) as c:
        dev = Device("sdk-async")
        info = await c.register_key(dev.sub, dev.key.public_key())
        proof = dev.proof(PAYMENT)
        result = await c.verify(proof)
        assert result.kid == info.kid and result.context == PAYMENT
        transport.sent.clear()
        with pytest.raises(perr.Replayed):
            await c.verify(proof)
        with pytest.raises(perr.Expired):
            await c.verify(dev.proof(PAYMENT, now=time.time() - 3600))
        with pytest.raises(perr.MalformedProof):
            await c.verify({"v": 1})
        assert len(transport.sent) == 3
        batch = await c.verify_batch([dev.proof(PAYMENT), proof, {"v": 1}])
        assert batch.accepted == 1 and batch.rejected == 2
        assert batch.entries[0].ok and batch.entries[0].result is not None
        assert isinstance(batch.entries[1].error, perr.Replayed)
        assert isinstance(batch.entries[2].error, perr.MalformedProof)
