"""IndexedHeaders (the fast path's request headers) answer exactly as Starlette's Headers."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

from proof_messenger.relay.http import FastRequest, IndexedHeaders

RAW: list[tuple[bytes, bytes]] = [
    (b"host", b"relay.example"),
    (b"x-dup", b"first"),
    (b"authorization", b"Bearer pmk_x"),
    (b"x-dup", b"second"),
    (b"user-agent", b"caf\xe9/1.0"),  # Latin-1, as Starlette decodes it
    (b"X-Upper", b"raw names are compared as sent"),
]
NAMES = ["host", "HOST", "x-dup", "X-Dup", "authorization", "user-agent", "x-upper", "X-Upper"]
NAMES += ["x-user-token", "content-length", "accept"]  # absent


def _scope(raw: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/verify", "headers": raw}


@pytest.mark.parametrize("name", NAMES)
def test_lookups_match_starlette(name: str) -> None:
    ours, theirs = IndexedHeaders(_scope(list(RAW))), Headers(scope=_scope(list(RAW)))
    assert ours.get(name) == theirs.get(name)
    assert ours.get(name, "fallback") == theirs.get(name, "fallback")
    assert (name in ours) == (name in theirs)
    if name in theirs:
        assert ours[name] == theirs[name]
    else:
        with pytest.raises(KeyError):
            ours[name]


def test_first_of_repeated_headers_wins_and_the_rest_is_starlette() -> None:
    ours = IndexedHeaders(_scope(tuple(RAW)))  # a tuple of headers is accepted, as by Starlette
    assert ours["x-dup"] == "first"
    assert ours.getlist("x-dup") == ["first", "second"]
    assert ours.items() == Headers(raw=list(RAW)).items()
    assert ours.raw == list(RAW) and len(ours) == len(RAW)
    assert ours.get("user-agent") == "café/1.0"
    assert ours == Headers(raw=list(RAW))


def test_fast_request_uses_indexed_headers_once() -> None:
    request = FastRequest(_scope(list(RAW)))
    headers = request.headers
    assert isinstance(headers, IndexedHeaders)
    assert request.headers is headers
    assert request.headers.get("authorization") == Request(_scope(list(RAW))).headers.get(
        "authorization"
    )
