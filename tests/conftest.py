"""Shared test fixtures: where the public and project vectors live."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Moderate example counts: the protocol suite must stay fast on a 2-core machine shared
# with other suites. No deadlines: timing assertions do not belong in tests.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED_VECTORS = REPO.parent / "shared" / "vectors"
PROJECT_VECTORS = REPO / "tests" / "vectors"


def shared_vector(*parts: str) -> Path:
    path = SHARED_VECTORS.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"public test vectors missing: {path} (shared/ must sit beside the repo)")
    return path


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def protocol_vectors() -> dict[str, Any]:
    data: dict[str, Any] = load_json(PROJECT_VECTORS / "protocol-v1.json")
    return data
