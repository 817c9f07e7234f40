"""Interleaved A/B runs of the benchmark: two revisions, one harness, base first in each pair.

    PYTHONPATH=src python bench/ab.py BASE [HEAD] [--pairs 3] [-- RUN.PY OPTIONS]

``BASE`` and ``HEAD`` are git revisions; ``HEAD`` defaults to this working tree, edits
included. Each revision's ``src/`` is exported (``git archive``) to a temporary directory,
and this checkout's ``bench/run.py`` runs against it (``--src``): the proofs, the load,
the measurements and the ceiling's harness are the same for both, only the relay's code
differs. Both run on this checkout's virtual environment, so a revision that needs other
dependencies must be installed first.

Why: on a shared machine the same code moves by 10-30 % within an hour (see
docs/benchmarks.md), more than most changes. Pairs run back to back, base first, and the
table shows each pair's change and the median of them; the raw ECDSA rate measured in each
run shows how much the machine itself moved. The options after ``--`` go to run.py
(default ``--only sqlite2 --duration 8 --no-postgres``, the configuration the docs' A/B
tables use). Every run's JSON report is kept in ``bench/results/ab-<time>/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_RUN_OPTIONS = ["--only", "sqlite2", "--duration", "8", "--no-postgres"]
#: (phase key in a run's report, label) and (figure key, label); a dotted key reads a
#: nested figure (the group commit, which a revision without its metrics does not report).
PHASES = [("closed", "closed loop"), ("paced", "steady"), ("batch", "/verify/batch")]
FIGURES = [
    ("proofs_per_s", "proofs/s"),
    ("p99_ms", "p99 ms"),
    ("cpu_us_per_request", "CPU µs/req"),
    ("commits.busy", "write turn busy"),
    ("commits.hold_us_per_row", "µs held per row"),
]


def export_src(rev: str, into: Path) -> Path:
    """``rev``'s ``src/`` in ``into`` (``git archive``: no worktree, nothing in .git)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def resolve(rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def run_once(src: Path, options: list[str], report: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "run.py"), *options, "--src", str(src), "--json", str(report)],
        capture_output=True,
        text=True,
    )
    if not report.exists():
        raise RuntimeError(f"run.py failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["exit_status"] = done.returncode
    return data


def rows(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[list[str]]:
    """One row per configuration, phase and figure: every pair's base and head, and the
    median of the pairs' changes."""
    out: list[list[str]] = []
    for name in [r["name"] for r in pairs[0][0]["runs"]]:
        for phase, phase_label in PHASES:
            found = [(_phase(base, name, phase), _phase(head, name, phase)) for base, head in pairs]
            sides = [(b, h) for b, h in found if b is not None and h is not None]
            if len(sides) < len(found):
                continue  # not measured on both sides of every pair
            for key, label in FIGURES:
                values = [(_figure(b, key), _figure(h, key)) for b, h in sides]
                if all(b is not None and h is not None for b, h in values):
                    out.append(_row(f"{name} — {phase_label}", label, values))  # type: ignore[arg-type]
    crypto = [
        (b["raw_crypto"]["verify_per_s_1proc"], h["raw_crypto"]["verify_per_s_1proc"])
        for b, h in pairs
    ]
    out.append(_row("raw ECDSA, 1 process (the machine's drift)", "verifies/s", crypto, False))
    return out


def _phase(report: dict[str, Any], name: str, phase: str) -> dict[str, Any] | None:
    """The figures of one phase of the configuration ``name`` in a run's report."""
    run = next((r for r in report["runs"] if r["name"] == name), None)
    return (run or {}).get(phase) or None


def _figure(phase: dict[str, Any], key: str) -> float | None:
    """A figure of a phase; None when the run did not report it (or reported zero commits)."""
    value: Any = phase
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None or (key.startswith("commits.") and not value) else float(value)


def _row(
    config: str, figure: str, values: list[tuple[float, float]], median: bool = True
) -> list[str]:
    """A table row: each pair's base and head values, each pair's change, their median."""
    changes = [(h / b - 1) * 100 for b, h in values if b]
    return [
        config,
        figure,
        " · ".join(_num(b) for b, _ in values),
        " · ".join(_num(h) for _, h in values),
        " · ".join(f"{c:+.0f} %" for c in changes),
        f"{statistics.median(changes):+.1f} %" if median and changes else "",
    ]


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def table(base_name: str, head_name: str, body: list[list[str]]) -> str:
    head = ["configuration", "figure", base_name, head_name, "change per pair", "median"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def main() -> int:
    argv = sys.argv[1:]
    run_options = DEFAULT_RUN_OPTIONS
    if "--" in argv:
        cut = argv.index("--")
        argv, run_options = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("base", help="git revision measured first in each pair")
    p.add_argument("head", nargs="?", default=None, help="git revision (default: working tree)")
    p.add_argument("--pairs", type=int, default=3)
    opts = p.parse_args(argv)
    if opts.pairs < 1:
        p.error("--pairs must be at least 1")
    try:
        base_name = resolve(opts.base)
        head_name = resolve(opts.head) if opts.head else "working tree"
    except subprocess.CalledProcessError as exc:
        print(f"not a revision of {REPO}: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    out_dir = HERE / "results" / f"ab-{time.strftime('%Y%m%dT%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="pm-ab-") as tmp:
        base_dir, head_dir = Path(tmp, "base"), Path(tmp, "head")
        base_dir.mkdir()
        base_src = export_src(opts.base, base_dir)
        if opts.head:
            head_dir.mkdir()
            head_src = export_src(opts.head, head_dir)
        else:
            head_src = REPO / "src"
        for i in range(1, opts.pairs + 1):
            pair = []
            for side, src in (("base", base_src), ("head", head_src)):
                print(f"pair {i}/{opts.pairs}: {side}", flush=True)
                pair.append(run_once(src, run_options, out_dir / f"{i}-{side}.json"))
            pairs.append((pair[0], pair[1]))
    print()
    pairs_text = "1 pair" if opts.pairs == 1 else f"{opts.pairs} pairs, base first in each"
    print(f"run.py {' '.join(run_options)}; {pairs_text}; reports in {out_dir}")
    print()
    print(table(base_name, head_name, rows(pairs)))
    valid = all(b["all_valid"] and h["all_valid"] for b, h in pairs)
    print(f"\nevery answer 200 with valid: true: {valid}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
