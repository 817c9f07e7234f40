"""Fixtures for end-to-end tests: one shared relay per module, signers with unique subjects."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .relay_harness import RelayProcess, Signer

ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay shared by the tests of one module (tests use distinct subjects and keys)."""
    process = RelayProcess(
        tmp_path_factory.mktemp("relay"),
        config={"cors": {"allow_origins": [ALLOWED_ORIGIN]}},
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def signer(relay: RelayProcess) -> Signer:
    """A fresh user with a registered key."""
    s = Signer.new(f"user-{uuid.uuid4().hex[:12]}", relay.audience)
    s.register(relay)
    return s


def audit_row(db_path: Path, event_id: str) -> dict[str, Any] | None:
    """The raw audit row as stored in the SQLite file (no decryption)."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM audit WHERE event_id = ?", (event_id,)).fetchone()
        return dict(row) if row is not None else None
    finally:
        con.close()
