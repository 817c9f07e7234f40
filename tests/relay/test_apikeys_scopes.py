"""Scope expansion (cached for the tuples stored on API key records)."""

from __future__ import annotations

from proof_messenger.relay import apikeys


def test_expand_adds_implied_scopes_cached_or_not() -> None:
    stored = ("verify", "keys:write")
    expected = frozenset({"verify", "keys:write", "keys:read"})
    assert apikeys.expand(stored) == expected
    assert apikeys.expand(stored) is apikeys.expand(("verify", "keys:write"))  # cached
    assert apikeys.expand(["verify", "keys:write"]) == expected  # type: ignore[arg-type]
    assert apikeys.expand(("audit:read",)) == frozenset({"audit:read"})
    assert apikeys.expand(()) == frozenset()
