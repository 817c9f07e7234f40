"""Fixtures: one shared SQLite relay per module for the read-mostly tests, fresh ones on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .relay import Relay


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """A relay on SQLite with a 2 s body timeout (slow-loris) and a generous rate limit."""
    work: Path = tmp_path_factory.mktemp("relay")
    r = Relay(
        work,
        f"sqlite:///{work / 'audit.db'}",
        config={
            "limits": {
                "request_timeout_seconds": 2.0,
                "rate_limit_per_second": 100000.0,
                "rate_limit_burst": 100000,
            }
        },
    )
    r.start()
    try:
        yield r
    finally:
        r.stop()
