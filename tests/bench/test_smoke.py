"""The benchmark command keeps working: a smoke run with a few hundred proofs.

No timing is asserted (the machine running tests may be slow or busy); only that every
answer was a 200 with ``valid: true`` and that the report carries every figure.
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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]

LOAD_FIELDS = {
    "requests_per_s",
    "proofs_per_s",
    "good",
    "bad",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "cpu_us_per_request",
}


def test_smoke_run_reports_every_figure_with_all_answers_valid(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--json", str(report_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["all_valid"] is True
    assert report["raw_crypto"]["verify_per_s_1proc"] > 0
    relay = next(r for r in report["runs"] if r["store"] == "sqlite")
    bare = next(r for r in report["runs"] if r["store"] == "none")
    for run in (relay, bare):
        assert run["startup_s"] > 0
        assert run["rss_mb_per_worker"] and all(m > 0 for m in run["rss_mb_per_worker"])
        assert set(run["closed"]) >= LOAD_FIELDS
        assert run["closed"]["good"] > 0 and run["closed"]["bad"] == 0
    # The ceiling may resend proofs (no replay protection): it must never run out of them,
    # or its rate (and the ratio to it) would be understated.
    assert bare["closed"]["exhausted"] is False
    assert relay["batch"]["good"] > 0 and relay["batch"]["bad"] == 0
    assert {"verify_vs_bare_asgi", "batch_vs_raw_crypto"} <= set(report["ratios"])
    assert "nproc" in report["machine"] and "cpu" in report["machine"]
