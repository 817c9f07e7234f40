"""Load and bookkeeping for the fault tests: who was told 200, and what the audit log holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from proof_messenger.audit.crypto import load_keyring
from proof_messenger.protocol import Proof
from proof_messenger.protocol.keys import PrivateKey
from proof_messenger.store import open_store

from .relay import apost_proof, sign


@dataclass
class Ledger:
    """Every proof sent, by proof id, with what the relay answered (None: no answer)."""

    proofs: dict[str, Proof] = field(default_factory=dict)
    answers: dict[str, int | None] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)

    def accepted(self) -> set[str]:
        return {pid for pid, status in self.answers.items() if status == 200}

    def in_doubt(self) -> set[str]:
        """No answer, or a 5xx: the client cannot know; a retry must settle it."""
        return {pid for pid, s in self.answers.items() if s is None or s >= 500}


async def load(
    client: httpx.AsyncClient,
    key: PrivateKey,
    ledger: Ledger,
    stop: asyncio.Event,
    workers: int = 12,
    sub: str = "alice",
) -> None:
    """Fresh proofs from ``workers`` concurrent clients until ``stop`` is set."""

    async def worker() -> None:
        while not stop.is_set():
            proof = sign(key, sub=sub)
            pid = proof_id(proof)
            ledger.proofs[pid] = proof
            ledger.answers[pid] = None
            try:
                r = await apost_proof(client, proof)
            except httpx.HTTPError:
                ledger.codes["no answer"] += 1
                await asyncio.sleep(0.05)
                continue
            ledger.answers[pid] = r.status_code
            ledger.codes[str(r.status_code)] += 1
            if r.status_code == 200:
                assert r.json()["proof_id"] == pid

    await asyncio.gather(*(worker() for _ in range(workers)))


def proof_id(proof: Proof) -> str:
    from proof_messenger.protocol import Intent

    return Intent.from_bytes(proof.intent).proof_id()


async def verified_rows(db_url: str, master_key_file: Path | None = None) -> Counter[str]:
    """proof id -> number of ``proof.verified`` audit rows, read straight from the store.

    With the master key file, every row's encrypted context must also decrypt: a row
    that is visible is whole (no half-written ciphertext)."""
    keyring = load_keyring(master_key_file) if master_key_file else None
    store = open_store(db_url)
    await store.open()
    try:
        out: Counter[str] = Counter()
        async for record in store.iter_audit():
            d = record.draft
            if keyring is not None and d.context_ct is not None:
                assert d.context_key_id is not None
                json.loads(keyring.decrypt(d.context_key_id, d.context_ct, d.event_id.encode()))
            if d.event_type == "proof.verified" and d.proof_id:
                out[d.proof_id] += 1
        return out
    finally:
        await store.close()


async def settle(client: httpx.AsyncClient, ledger: Ledger) -> Counter[int]:
    """Resubmit every proof: each must now be 409 (already accepted) or 200 (first time)."""
    outcomes: Counter[int] = Counter()
    sem = asyncio.Semaphore(8)

    async def one(pid: str) -> None:
        async with sem:
            r = await apost_proof(client, ledger.proofs[pid])
        assert r.status_code in (200, 409), (r.status_code, r.text)
        if r.status_code == 200:
            assert ledger.answers[pid] != 200, "a proof answered 200 was accepted again"
            ledger.answers[pid] = 200
        outcomes[r.status_code] += 1

    await asyncio.gather(*(one(pid) for pid in list(ledger.proofs)))
    return outcomes


async def wait_until(predicate: object, seconds: float = 60.0) -> None:
    """Poll an async predicate until it is true (robust on a slow shared machine)."""
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if await predicate():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await asyncio.sleep(0.1)
