"""schemathesis against /openapi.json of a running relay.

Checks: no 5xx, every status and content type the relay answers is documented, responses
and headers match their schemas, schema-violating requests are refused, 405s carry an
Allow header that lists the documented methods, auth is not ignored. The one check left
out is ``positive_data_acceptance``: a schema cannot say "a valid P-256 signature" or "a
key on the curve", so schema-valid proofs and keys are rightly refused.

CI runs a bounded number of examples per operation with a fixed seed;
``PM_SCHEMATHESIS_EXAMPLES=500 PM_SCHEMATHESIS_SEED=<n>`` runs longer or differently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .figures import record
from .relay import Relay

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = os.environ.get("PM_SCHEMATHESIS_EXAMPLES", "40")
SEED = os.environ.get("PM_SCHEMATHESIS_SEED", "3")


@pytest.mark.slow
def test_schemathesis_finds_no_failure(relay: Relay, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists():
        pytest.skip(f"schemathesis CLI not installed at {SCHEMATHESIS}")
    report = tmp_path / "report"
    done = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{relay.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {relay.api_key}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    tail = done.stdout[-6000:]
    summary = [line for line in done.stdout.splitlines() if "generated" in line]
    record("schemathesis", summary[-1].strip() if summary else "?")
    assert done.returncode == 0, f"schemathesis found failures:\n{tail}\n{done.stderr[-2000:]}"
