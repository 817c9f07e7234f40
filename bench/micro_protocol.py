"""Per-stage CPU cost of the pure protocol core on the benchmark proofs.

    PYTHONPATH=src:bench python bench/micro_protocol.py [--proofs 20000] [--repeat 3]

Runs each ``Verifier`` stage of the relay's ``/verify`` path (parse, decode_intent,
check_claims, check_key, check_signature) over the cached benchmark proofs and prints
the best-of-``repeat`` mean CPU µs per proof for each stage, measured with
``time.process_time`` around a whole pass (CPU time, so other load on the machine
matters less; no per-call timer overhead). It has no I/O, no event loop and no
profiler, so it is the quietest way to compare two versions of
``src/proof_messenger/protocol``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proofs import load_or_generate

from proof_messenger.protocol import ALG_ES256, Verifier, VerifierSettings
from proof_messenger.protocol.encoding import b64u_decode
from proof_messenger.protocol.keys import kid_for, load_public_key_der
from proof_messenger.protocol.verify import ResolvedKey

AUDIENCE = "bench.example"


def _timed(fn: Callable[[Any], Any], items: list[Any]) -> tuple[float, list[Any]]:
    start = time.process_time()
    out = [fn(x) for x in items]
    return time.process_time() - start, out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--proofs", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    opts = p.parse_args()

    results = Path(__file__).resolve().parent / "results"
    proofs, _cached = load_or_generate(results, AUDIENCE, 200_000, 200)
    bodies = [b.encode() for b in proofs.bodies[: opts.proofs]]
    keys: dict[str, ResolvedKey] = {}
    for k in proofs.keys:
        der = b64u_decode(k["public_key"])
        kid = kid_for(der)
        keys[kid] = ResolvedKey(
            kid=kid,
            alg=ALG_ES256,
            public_key=load_public_key_der(der),
            public_key_der=der,
            sub=k["sub"],
        )
    verifier = Verifier(VerifierSettings(audience=AUDIENCE, max_lifetime=86_400))
    now = time.time()

    best: dict[str, float] = {}
    for _ in range(opts.repeat):
        t_parse, envs = _timed(verifier.parse, bodies)
        t_intent, intents = _timed(verifier.decode_intent, envs)
        pairs = list(zip(envs, intents, strict=True))
        t_claims, parsed = _timed(lambda pi: verifier.check_claims(pi[0], pi[1], now=now), pairs)
        t_key, _ = _timed(lambda pp: verifier.check_key(pp, keys[pp.proof.kid]), parsed)
        t_sig, _ = _timed(lambda pp: verifier.check_signature(pp, keys[pp.proof.kid]), parsed)
        for name, t in (
            ("parse (Proof.from_json)", t_parse),
            ("decode_intent (Intent.from_bytes)", t_intent),
            ("check_claims", t_claims),
            ("check_key", t_key),
            ("check_signature", t_sig),
        ):
            us = t / len(bodies) * 1e6
            best[name] = min(best.get(name, us), us)
    width = max(len(n) for n in best)
    for name, us in best.items():
        print(f"{name:<{width}}  {us:8.2f} µs/proof")
    pure = sum(us for name, us in best.items() if name != "check_signature")
    print(f"{'total without check_signature':<{width}}  {pure:8.2f} µs/proof")
    print(f"{'total':<{width}}  {sum(best.values()):8.2f} µs/proof")
    return 0


if __name__ == "__main__":
    sys.exit(main())
