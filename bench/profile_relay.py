"""Profile the relay under load: py-spy samples one worker while wrk drives /verify.

    PYTHONPATH=src python bench/profile_relay.py [--seconds 10] [--top 40]

Prints the functions with the largest inclusive and self share of samples (collapsed
stacks are written to bench/results/profile-*.txt, loadable in speedscope). Needs
py-spy (``pip install py-spy``) and wrk.

``--strace`` counts the worker's system calls instead (``strace -c -f``, every thread)
and prints them per request: where the kernel time goes, and any file I/O nobody asked
for (this is how SQLite's per-commit temp files showed up, ninth round). With
``--workers 2`` one of two workers is traced (the page re-reads after the other worker's
commits show as pread64); tracing slows it, so its share of the requests is an estimate.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import proofs as proofgen
import run

AUDIENCE = run.AUDIENCE


def summarise(collapsed: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # a frame name with a newline in it (py-spy raw format)
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    out = [f"{total} samples", "", "inclusive %  function"]
    out += [f"{100 * n / total:6.1f}  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self %  function"]
    out += [f"{100 * n / total:6.1f}  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


def per_request(summary: str, requests: float) -> str:
    """``strace -c``'s table with a column of calls per request."""
    out = [f"{'calls/req':>10} {'calls':>9} {'errors':>7}  syscall"]
    for line in summary.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) < 5 or not fields[3].isdigit() or fields[-1] == "total":
            continue
        calls = int(fields[3])
        errors = fields[4] if len(fields) == 6 else ""
        out.append(f"{calls / requests:>10.2f} {calls:>9} {errors:>7}  {fields[-1]}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--top", type=int, default=40)
    p.add_argument(
        "--gil", action="store_true", help="only samples holding the GIL (CPU in Python)"
    )
    p.add_argument(
        "--batch", type=int, default=0, help="profile /verify/batch with N proofs per call"
    )
    p.add_argument(
        "--strace", action="store_true", help="count system calls per request (strace -c)"
    )
    p.add_argument("--workers", type=int, default=1, help="relay workers (one is traced)")
    opts = p.parse_args()
    bench_opts = argparse.Namespace(warmup=500)
    proofs, _ = proofgen.load_or_generate(run.HERE / "results", AUDIENCE, 200_000, 200)
    out = run.HERE / "results" / f"profile-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    with tempfile.TemporaryDirectory(prefix="pm-prof-") as tmp:
        workdir = Path(tmp)
        server, api_key = run.start_relay(workdir, f"sqlite:///{tmp}/audit.db", opts.workers)
        try:
            run.register_keys(server.port, api_key, proofs.keys)
            cur = run.Cursor(proofs.bodies)
            common: dict[str, Any] = {"workdir": workdir, "api_key": api_key}
            run.wrk(
                server, "/verify", cur.take(bench_opts.warmup), duration=1, connections=8, **common
            )
            strace_cmd = [
                "timeout",
                "--signal=INT",
                str(opts.seconds),
                "strace",
                "-c",
                "-f",
                "-o",
                str(out),
                "-p",
                str(server.worker_pids()[0]),
            ]
            spy = subprocess.Popen(
                strace_cmd
                if opts.strace
                else [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "-r",
                    "200",
                    "-d",
                    str(int(opts.seconds)),
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "-p",
                    str(server.worker_pids()[0]),
                    "--nonblocking",
                    *(["--gil"] if opts.gil else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            load: list[run.Load] = []
            t = threading.Thread(
                target=lambda: load.append(
                    run.wrk(
                        server,
                        "/verify/batch" if opts.batch else "/verify",
                        run.batches(cur.take(100_000), opts.batch)
                        if opts.batch
                        else cur.take(100_000),
                        duration=opts.seconds,
                        connections=4 if opts.batch else 32,
                        **({"mode": "batch", "batch_size": opts.batch} if opts.batch else {}),
                        **common,
                    )
                )
            )
            t.start()
            t.join()
            spy.wait(timeout=60)
            print(f"load: {load[0].requests_per_s} req/s, {load[0].cpu_us_per_request} µs CPU/req")
        finally:
            server.stop()
    if opts.strace:
        # One worker was traced; the workers share the requests about evenly.
        traced = load[0].requests_per_s * opts.seconds / opts.workers
        print(per_request(out.read_text(), traced))
        print(f"\nstrace summary: {out}")
        return 0
    print(summarise(out, opts.top))
    print(f"\ncollapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
