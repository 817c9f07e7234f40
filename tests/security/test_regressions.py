"""Bugs found by the fuzzers and schemathesis, one regression test each."""

from __future__ import annotations

import httpx
import pytest

from .relay import Relay


def test_405_lists_every_method_of_the_resource_in_allow(relay: Relay) -> None:
    for path, methods in (
        ("/keys", {"GET", "POST"}),
        ("/keys/abc", {"GET", "DELETE"}),
        ("/log/checkpoint", {"GET", "POST"}),
        ("/webauthn/register/options", {"GET", "POST"}),
    ):
        r = httpx.request("PUT", relay.url + path, headers=relay.headers, timeout=30)
        assert r.status_code == 405
        assert r.json()["code"] == "method_not_allowed"
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert methods <= allowed, allowed


@pytest.mark.parametrize(
    "query",
    ["limit=5&limit=500", "status=accepted&status=rejected", "sub=a&sub=b", "status=", "limit="],
)
def test_repeated_or_empty_typed_query_parameters_are_400(relay: Relay, query: str) -> None:
    with relay.client() as c:
        r = c.get(f"/audit?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"


@pytest.mark.parametrize("value", ["True", "yes", "1", ""])
def test_require_user_verification_must_be_exactly_true_or_false(relay: Relay, value: str) -> None:
    """A typo must not silently switch the user-verification requirement off."""
    with relay.client() as c:
        r = c.post(f"/verify?require_user_verification={value}", json={})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"


@pytest.mark.parametrize(
    "query",
    ["event_id=x&leaf_index=0", "leaf_index=0&tree_size=1&tree_size=2", "event_id=a&event_id=b"],
)
def test_log_inclusion_refuses_ambiguous_queries(relay: Relay, query: str) -> None:
    r = httpx.get(f"{relay.url}/log/proof/inclusion?{query}", timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"
