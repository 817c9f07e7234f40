"""Shared by the relay tests: the store tests' ``target`` fixture (a fresh SQLite file, a
fresh PostgreSQL database) for the tests that run on both backends, an injectable clock,
and key registration through ``POST /keys``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from proof_messenger.protocol import b64u_encode, generate_private_key, public_key_der
from tests.store.conftest import target  # noqa: F401


@dataclass
class Clock:
    """A clock the test sets: ``create_app(..., clock=clock)``."""

    now: float

    def __call__(self) -> float:
        return self.now


async def register_key(client: httpx.AsyncClient, sub: str) -> Any:
    """A new P-256 key registered for ``sub`` through the API; the private key."""
    key = generate_private_key()
    r = await client.post(
        "/keys", json={"sub": sub, "public_key": b64u_encode(public_key_der(key))}
    )
    assert r.status_code == 201, r.text
    return key
