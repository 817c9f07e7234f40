"""bench/ab.py keeps working: one pair of smoke runs, the last commit against this tree.

No timing is asserted; only that both sides ran their own code, every answer was valid,
and the table pairs their figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _in_git_checkout() -> bool:
    try:
        subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
    pytest.mark.skipif(not _in_git_checkout(), reason="needs the git history of the checkout"),
]


def test_one_smoke_pair_runs_each_side_on_its_own_source() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ab.py"), "HEAD", "--pairs", "1", "--", "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| SQLite, 1w — closed loop | proofs/s |" in done.stdout
    assert "raw ECDSA, 1 process" in done.stdout
    out_dir = Path(done.stdout.split("reports in ")[1].split()[0])
    base = json.loads((out_dir / "1-base.json").read_text())
    head = json.loads((out_dir / "1-head.json").read_text())
    assert base["all_valid"] and head["all_valid"]
    # The base ran the exported revision, the head this checkout's own src.
    assert base["src"] != head["src"]
    assert head["src"] == str((REPO / "src").resolve())
    assert not Path(base["src"]).exists()  # the export was cleaned up


def test_an_unknown_revision_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ab.py"), "no-such-revision-xyz"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not a revision" in done.stderr
