"""verify_signature: tolerance, tampering, rotation, malformed headers (pure functions)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proof_messenger.webhooks import SIGNATURE_HEADER, WebhookSignatureError, sign, verify_signature

SECRET = "whsec_0123456789abcdef0123"
BODY = b'{"id":"d1","type":"proof.verified","data":{}}'
T = 1_700_000_000


def headers(value: str) -> dict[str, str]:
    return {SIGNATURE_HEADER: value}


def test_header_is_hmac_of_t_dot_body() -> None:
    value = sign(SECRET, BODY, T)
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert value == f"t={T},v1={expected}"
    assert verify_signature(SECRET, headers(value), BODY, now=T) == T


def test_header_name_is_case_insensitive() -> None:
    value = sign(SECRET, BODY, T)
    assert verify_signature(SECRET, {SIGNATURE_HEADER.lower(): value}, BODY, now=T) == T


@pytest.mark.parametrize("skew", [-301, 301, 10_000])
def test_outside_tolerance_is_refused(skew: int) -> None:
    value = sign(SECRET, BODY, T)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_signature(SECRET, headers(value), BODY, now=T + skew)


def test_inside_tolerance_is_accepted() -> None:
    value = sign(SECRET, BODY, T)
    assert verify_signature(SECRET, headers(value), BODY, tolerance=300, now=T + 300) == T
    assert verify_signature(SECRET, headers(value), BODY, tolerance=300, now=T - 300) == T


def test_tampered_body_wrong_secret_and_changed_timestamp_are_refused() -> None:
    value = sign(SECRET, BODY, T)
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_signature(SECRET, headers(value), BODY.replace(b"d1", b"d2"), now=T)
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_signature("whsec_another_secret_value", headers(value), BODY, now=T)
    moved = value.replace(f"t={T}", f"t={T + 1}")
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_signature(SECRET, headers(moved), BODY, now=T)


def test_rotation_several_v1_values_and_several_receiver_secrets() -> None:
    new, old = "whsec_new_secret_0000000000", SECRET
    both = sign([new, old], BODY, T)
    assert both.count("v1=") == 2
    assert verify_signature(old, headers(both), BODY, now=T) == T  # receiver not rolled yet
    assert verify_signature(new, headers(both), BODY, now=T) == T  # receiver rolled
    only_new = sign(new, BODY, T)
    assert verify_signature([new, old], headers(only_new), BODY, now=T) == T
    with pytest.raises(WebhookSignatureError):
        verify_signature(old, headers(only_new), BODY, now=T)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "malformed"),
        ("garbage", "malformed"),
        ("v1=abcd", "no timestamp"),
        (f"t={T}", "no v1"),
        (f"t={T},v0=abcd", "no v1"),
        (f"t=abc,v1={'0' * 64}", "malformed"),
        (f"t=-5,v1={'0' * 64}", "malformed"),
        (f"t={T},t={T},v1={'0' * 64}", "malformed"),
        (f"t={T},v1=zz", "not hex"),
        (f"t={T},v1={'0' * 63}", "not hex"),
        (f"t={T},v1={'0' * 64}", "no signature matches"),
        (f"t={T},v1={'0' * 32}", "no signature matches"),  # truncated tag refused
        ("t=1," + "v1=00," * 1000, "too long"),
    ],
)
def test_malformed_headers(value: str, reason: str) -> None:
    with pytest.raises(WebhookSignatureError, match=reason):
        verify_signature(SECRET, headers(value), BODY, now=T)


def test_missing_header() -> None:
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify_signature(SECRET, {}, BODY, now=T)


def test_unknown_schemes_are_ignored_for_forward_compatibility() -> None:
    value = sign(SECRET, BODY, T) + ",v2=deadbeef"
    assert verify_signature(SECRET, headers(value), BODY, now=T) == T


@given(
    body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=40), t=st.integers(0, 2**40)
)
def test_round_trip_and_any_bit_flip_fails(body: bytes, secret: str, t: int) -> None:
    value = sign(secret, body, t)
    assert verify_signature(secret, headers(value), body, now=t) == t
    tampered = body + b"\x00"
    with pytest.raises(WebhookSignatureError):
        verify_signature(secret, headers(value), tampered, now=t)


def test_header_containers_of_common_servers() -> None:
    """http.server's Message, httpx/Starlette Headers: all work as ``headers``."""
    from email.message import Message

    import httpx
    from starlette.datastructures import Headers

    value = sign(SECRET, BODY, T)
    message = Message()
    message["x-proof-messenger-signature"] = value
    for container in (
        message,
        httpx.Headers({"X-PROOF-MESSENGER-SIGNATURE": value}),
        Headers({"x-proof-messenger-signature": value}),
    ):
        assert verify_signature(SECRET, container, BODY, now=T) == T  # type: ignore[arg-type]
