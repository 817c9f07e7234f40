"""The package layout's one-way arrows (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "proof_messenger"

#: package -> the project packages it may import
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "audit": set(),
    "configuration": set(),
    "web": set(),
    "store": {"audit"},
    "client": {"audit", "protocol"},
    "webhooks": {"audit", "configuration", "store"},
    "relay": {"audit", "configuration", "protocol", "store", "web", "webhooks"},
    "cli": {"audit", "client", "configuration", "protocol", "relay", "store", "webhooks"},
}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages imported by one module (absolute or relative)."""
    rel = path.relative_to(SRC).parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "proof_messenger" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                parts = module.split(".")
                if parts[0] == "proof_messenger" and len(parts) > 1:
                    found.add(parts[1])
                continue
            package = list(rel[:-1])
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *module.split(".")] if module else base
            if target:
                found.add(target[0])
            else:  # `from .. import x` at the top level: the names are packages
                found.update(alias.name for alias in node.names)
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if len(p.relative_to(SRC).parts) > 1)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_one_way(path: Path) -> None:
    package = path.relative_to(SRC).parts[0]
    assert package in ALLOWED, f"new package {package}: add it to ALLOWED and the docs"
    imported = project_imports(path) - {package, "__init__"}
    imported.discard("__version__")
    assert imported <= ALLOWED[package], (
        f"{path.relative_to(SRC)} imports {sorted(imported - ALLOWED[package])}"
    )


def test_the_checker_sees_relative_imports() -> None:
    assert "audit" in project_imports(SRC / "store" / "base.py")
    assert "relay" in project_imports(SRC / "cli" / "serve.py")
