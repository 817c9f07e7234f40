"""Relays starting together on a fresh data directory each create the key files they find
missing: every one must end up with the same, complete key (a loser once read the winner's
log key before its bytes were written and exited with "not an unencrypted PEM private key")."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from proof_messenger.audit.checkpoint import generate_log_key
from proof_messenger.audit.errors import LogKeyError
from proof_messenger.relay.log_keys import load_or_create_log_key
from proof_messenger.relay.startup import load_or_create_keyring

ROUNDS = 30
STARTERS = 8


def _race(fn: Callable[[str], Any], path: Path) -> list[Any]:
    barrier = threading.Barrier(STARTERS)
    results: list[Any] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(fn(str(path)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(STARTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return results


def test_concurrent_log_key_creation_gives_everyone_the_same_key(tmp_path: Path) -> None:
    for i in range(ROUNDS):
        path = tmp_path / f"run{i}" / "log-signing.key"
        keys = _race(load_or_create_log_key, path)
        raw = {
            k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            for k in keys
        }
        assert len(raw) == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_concurrent_master_key_creation_gives_everyone_the_same_keyring(tmp_path: Path) -> None:
    for i in range(ROUNDS):
        path = tmp_path / f"run{i}" / "master.key"
        rings = _race(load_or_create_keyring, path)
        assert len({ring.active_key_id for ring in rings}) == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_an_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "log-signing.key"
    generate_log_key(path)
    before = path.read_bytes()
    with pytest.raises(LogKeyError, match="already exists"):
        generate_log_key(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
