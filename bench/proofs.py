"""Pre-generated, distinct, valid proofs for the benchmark (cached under bench/results/).

Replay protection answers a repeated proof with 409, so every request needs its own
proof. Signing 100k proofs takes a while, so it is spread over all cores and cached;
each benchmark configuration starts from a fresh database, so one proof set serves them
all (the keys are re-registered each time).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proof_messenger.protocol import (
    create_proof,
    generate_private_key,
    load_private_key_pem,
    private_key_to_pem,
    public_key_der,
)
from proof_messenger.protocol.encoding import b64u_encode

#: Proofs are signed with this lifetime; the benchmark relay allows it (see run.py).
LIFETIME = 86_400
CACHE_VERSION = 1


@dataclass(frozen=True)
class ProofSet:
    audience: str
    keys: list[dict[str, str]]  # {"sub", "public_key" (b64url DER), "pem"}
    bodies: list[str]  # one JSON envelope each, distinct
    expires: float


def _context(i: int) -> dict[str, Any]:
    """A realistic 10-key transaction context."""
    return {
        "type": "wire_transfer",
        "amount_minor": 1_250_000 + i,
        "currency": "EUR",
        "creditor_name": "ACME Industrial Supplies GmbH",
        "creditor_iban": "DE89370400440532013000",
        "debtor_iban": "FR1420041010050500013M02606",
        "reference": f"INV-2026-{i:08d}",
        "execution_date": "2026-12-01",
        "channel": "web",
        "initiator": "treasury-ops",
    }


def _sign_chunk(args: tuple[str, list[str], list[str], int, int, int]) -> list[str]:
    audience, pems, subs, start, count, now = args
    keys = [load_private_key_pem(p.encode()) for p in pems]
    out = []
    for i in range(start, start + count):
        k = i % len(keys)
        proof = create_proof(keys[k], _context(i), aud=audience, sub=subs[k], ttl=LIFETIME, now=now)
        out.append(json.dumps(proof.to_json_dict(), separators=(",", ":")))
    return out


def generate(audience: str, count: int, n_keys: int, workers: int | None = None) -> ProofSet:
    privs = [generate_private_key() for _ in range(n_keys)]
    pems = [private_key_to_pem(k).decode() for k in privs]
    subs = [f"user-{i:05d}@bench.example" for i in range(n_keys)]
    keys = [
        {"sub": s, "public_key": b64u_encode(public_key_der(k)), "pem": p}
        for s, k, p in zip(subs, privs, pems, strict=True)
    ]
    now = int(time.time())
    workers = workers or os.cpu_count() or 1
    chunk = max(1, -(-count // (workers * 4)))
    jobs = [
        (audience, pems, subs, start, min(chunk, count - start), now)
        for start in range(0, count, chunk)
    ]
    bodies: list[str] = []
    with ProcessPoolExecutor(workers) as pool:
        for part in pool.map(_sign_chunk, jobs):
            bodies.extend(part)
    return ProofSet(audience, keys, bodies, expires=now + LIFETIME)


def load_or_generate(
    cache_dir: Path, audience: str, count: int, n_keys: int, *, min_validity: float = 3600
) -> tuple[ProofSet, bool]:
    """The cached set if it is big enough and valid long enough, else a new one."""
    cache = cache_dir / f"proofs-{audience}-{count}-{n_keys}.json"
    if cache.exists():
        try:
            doc = json.loads(cache.read_text())
            if (
                doc.get("version") == CACHE_VERSION
                and doc["expires"] - time.time() > min_validity
                and len(doc["bodies"]) >= count
            ):
                return ProofSet(audience, doc["keys"], doc["bodies"][:count], doc["expires"]), True
        except (ValueError, KeyError):
            pass
    proofs = generate(audience, count, n_keys)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "expires": proofs.expires,
                "keys": proofs.keys,
                "bodies": proofs.bodies,
            }
        )
    )
    tmp.replace(cache)
    return proofs, False
