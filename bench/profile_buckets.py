"""Group py-spy collapsed stacks (bench/profile_relay.py output) into the buckets of
docs/benchmarks.md: ``python bench/profile_buckets.py bench/results/profile-*.txt``."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

#: (bucket, substring of a frame); the first bucket whose frame is on the stack wins.
BUCKETS = [
    ("ECDSA P-256 verify (OpenSSL)", "verify_es256"),
    ("access + verification logging (structlog)", "structlog/"),
    ("SQLite group commit on the writer thread (incl. fsync)", "SQLiteStore._write_txn"),
    ("SQLite point reads (API key, signing key)", "SQLiteStore._lookup"),
    ("envelope + intent parsing and checks 1-4", "Verifier.parse"),
    ("envelope + intent parsing and checks 1-4", "Verifier.check_intent"),
    ("audit row: draft, context encryption, chain", "VerificationService._accept"),
    ("HTTP response write (uvicorn send)", "RequestResponseCycle.send"),
    ("API key check (hash, scopes, rate limiter)", "RelayState.authenticate"),
    ("request body read", "read_body"),
    ("other relay code in the /verify handler", "routes/verify.py"),
    ("Starlette routing/middleware + our request middleware", "RequestContextMiddleware"),
    ("thread-pool plumbing", "concurrent/futures"),
    ("uvicorn/httptools/event loop", ""),
]


def buckets(collapsed: Path) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        for name, needle in BUCKETS:
            if needle in stack:
                counts[name] += int(n)
                break
    return [(name, 100 * c / total) for name, c in counts.most_common()]


if __name__ == "__main__":
    for name, pct in buckets(Path(sys.argv[1])):
        print(f"{pct:5.1f} %  {name}")
