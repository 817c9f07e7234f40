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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measured figures quoted in docs/reliability.md."""
    from .figures import FIGURES
    from .fuzzing import EXECUTED

    if not EXECUTED and not FIGURES:
        return
    terminalreporter.section("security/reliability figures")
    for target, count in sorted(EXECUTED.items()):
        terminalreporter.write_line(f"fuzzed {target}: {count} inputs")
    for name, value in FIGURES.items():
        terminalreporter.write_line(f"{name}: {value}")
