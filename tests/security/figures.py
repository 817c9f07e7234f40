"""Figures measured by the fault tests (faults injected, proofs answered vs found)."""

from __future__ import annotations

from typing import Any

FIGURES: dict[str, Any] = {}


def record(name: str, value: Any) -> None:
    FIGURES[name] = value
