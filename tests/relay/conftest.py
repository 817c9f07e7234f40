"""Shared by the relay tests: the store tests' ``target`` fixture (a fresh SQLite file, a
fresh PostgreSQL database) for the tests that run on both backends, an injectable clock,
key registration through ``POST /keys``, and API keys written straight to the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from proof_messenger.protocol import b64u_encode, generate_private_key, public_key_der
from proof_messenger.relay import apikeys
from proof_messenger.relay.state import RelayState
from proof_messenger.store.base import ApiKeyRecord
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


async def insert_api_key(state: RelayState, scopes: tuple[str, ...], created_at: float) -> str:
    """A new API key with ``scopes`` in the relay's store; the full key to send."""
    key_id, full = apikeys.generate_api_key()
    await state.store.insert_api_key(
        ApiKeyRecord(
            id=key_id,
            name="test",
            secret_hash=apikeys.hash_api_key(full),
            scopes=scopes,
            created_at=created_at,
        )
    )
    return full
