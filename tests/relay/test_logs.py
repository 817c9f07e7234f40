"""The JSON log line format operators parse (one object per line, ISO UTC timestamps)."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator

import pytest
import structlog

from proof_messenger.relay import logs


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    out = io.BytesIO()

    class _Stdout:
        buffer = out

        def write(self, text: str) -> int:  # the stdlib handler writes text
            out.write(text.encode())
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", _Stdout())
    logs.configure_logging("info")
    yield out
    structlog.reset_defaults()


def _read(out: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_line_shape_level_and_timestamp(lines: io.BytesIO) -> None:
    log = structlog.get_logger("t")
    log.info("proof.verified", kid="k1", note="a\nb")
    log.warning("w")
    log.debug("hidden")  # below the configured level
    first, second = _read(lines)
    assert first["event"] == "proof.verified" and first["kid"] == "k1"
    assert first["note"] == "a\nb"  # escaped inside one line, not a second line
    assert first["level"] == "info" and second["level"] == "warning"
    for rec in (first, second):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(rec["timestamp"]))


def test_exceptions_are_rendered_into_the_line(lines: io.BytesIO) -> None:
    log = structlog.get_logger("t")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    (rec,) = _read(lines)
    assert rec["level"] == "error"
    assert "ValueError: boom" in str(rec["exception"])


def test_utc_iso_matches_datetime() -> None:
    from datetime import UTC, datetime

    for t in (0.0, 1_764_111_111.999999, 1_764_111_112.000001, 1_700_000_000.5):
        expected = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
        if "." not in expected:
            expected = expected[:-1] + ".000000Z"
        assert logs._utc_iso(t) == expected
