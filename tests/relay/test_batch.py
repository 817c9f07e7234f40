"""POST /verify/batch in-process with every feature module installed (approvals, webhooks...).

The batch verifies its plain ES256 entries together (one key read, one audit submission)
and hands the others to the single-proof path; these tests pin what must not change:
each entry gets the answer and the audit row it would get alone, results in order, the
first of duplicate intents wins, one webhook event per outcome, metrics per proof.
Every test runs on a fresh SQLite file and on a fresh PostgreSQL database (the ``target``
fixture of tests/store/conftest.py): the batch's key read, nonce read and group-commit
submission are store calls with one implementation per backend.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from proof_messenger.protocol import (
    Proof,
    b64u_decode,
    b64u_encode,
    create_proof,
    generate_private_key,
    sign_intent,
)
from proof_messenger.protocol.intent import Intent, digest, proof_id
from proof_messenger.relay.app import create_app
from proof_messenger.relay.config import Settings
from proof_messenger.relay.state import RelayState
from proof_messenger.store.base import WebhookSubscription
from tests.passkeys.authenticator import registration_credential, webauthn_proof
from tests.store.conftest import Target

from .conftest import insert_api_key, register_key

AUD = "payments.example.com"


@dataclass
class Batch:
    client: httpx.AsyncClient
    state: RelayState
    db: Target

    async def register(self, sub: str) -> Any:
        return await register_key(self.client, sub)

    async def post(self, entries: list[Any]) -> dict[str, Any]:
        r = await self.client.post("/verify/batch", json={"proofs": entries})
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def register_passkey(self, sub: str, key: Any) -> str:
        """Enrol ``key`` through the relay's registration ceremony; its kid."""
        started = await self.client.post("/webauthn/register/options", json={"sub": sub})
        assert started.status_code == 201, started.text
        challenge = started.json()["options"]["challenge"]
        kid, credential = registration_credential(key, challenge, rp_id=AUD)
        done = await self.client.post(
            "/webauthn/register/verify",
            json={"token": started.json()["token"], "credential": credential},
        )
        assert done.status_code == 201, done.text
        assert done.json()["kid"] == kid
        return kid

    async def sign_count(self, kid: str) -> int:
        ((count,),) = await self.rows("SELECT sign_count FROM keys WHERE kid = $1", kid)
        return int(count)

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Raw SQL on the relay's database ($1.. placeholders), bypassing the store."""
        return await self.db.fetch(sql, *args)

    async def count(self) -> int:
        ((n,),) = await self.rows("SELECT count(*) FROM audit")
        return int(n)

    async def audit(self, event_id: str) -> tuple[Any, ...]:
        (row,) = await self.rows(
            "SELECT seq, status, event_type, error_code, proof_id, kid FROM audit "
            "WHERE event_id = $1",
            event_id,
        )
        return row


#: A policy that allows everything: with it, every batch entry takes the single-proof path.
ALLOW_ALL = {"policy": {"rules": [{"name": "default", "default": True}]}}


@pytest.fixture
async def batch(
    request: pytest.FixtureRequest, tmp_path: Path, target: Target
) -> AsyncIterator[Batch]:
    """The relay; parametrize it indirectly with extra config sections (e.g. ALLOW_ALL)."""
    url = f"sqlite:///{target.url}" if target.kind == "sqlite" else target.url
    settings = replace(
        Settings(audience=AUD, master_key_file=str(tmp_path / "master.key")),
        database=replace(Settings().database, url=url),
        extra=getattr(request, "param", {}),
    )
    application = create_app(settings)  # the default feature modules
    async with application.router.lifespan_context(application):
        state: RelayState = application.state.relay
        full = await insert_api_key(
            state, ("verify", "keys:write", "audit:read", "approvals"), time.time()
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="http://relay.test",
            headers={"authorization": f"Bearer {full}"},
        ) as client:
            yield Batch(client, state, target)


def proof_id_of(proof: Proof) -> str:
    return proof_id(digest(proof.intent))


def wire(amount: int) -> dict[str, Any]:
    return {"type": "wire_transfer", "amount_minor": amount, "currency": "EUR"}


def bad_signature(proof: Proof) -> dict[str, Any]:
    doc = proof.to_json_dict()
    sig = bytearray(b64u_decode(doc["sig"]))
    sig[-1] ^= 1
    doc["sig"] = b64u_encode(bytes(sig))
    return doc


async def test_mixed_batch_answers_and_audits_each_entry_as_alone(batch: Batch) -> None:
    alice = await batch.register("alice")
    bob = await batch.register("bob")
    stranger = generate_private_key()

    def proof(amount: int, key: Any = alice, sub: str = "alice", **kw: Any) -> Proof:
        return create_proof(key, wire(amount), aud=AUD, sub=sub, **kw)

    # A subscription to both event types: their outbox rows are written with the audit rows.
    await batch.state.store.insert_webhook_subscription(
        WebhookSubscription(
            id="s1",
            url="http://127.0.0.1:9/hook",
            events=("proof.verified", "proof.rejected"),
            secret_key_id=batch.state.keyring.active_key_id,
            secret_ct=batch.state.keyring.encrypt(b"secret", b"s1")[1],
            source="api",
            created_at=time.time(),
        )
    )
    earlier = proof(1)
    assert (await batch.post([earlier.to_json_dict()]))["accepted"] == 1
    good, twin, other = proof(2), proof(3), proof(4, bob, "bob")
    entries: list[Any] = [
        good.to_json_dict(),  # 0 accepted
        "not a proof",  # 1 malformed_proof
        proof(5, now=time.time() - 3600).to_json_dict(),  # 2 expired
        bad_signature(twin),  # 3 bad signature, then the good copy of its intent:
        twin.to_json_dict(),  # 4 accepted (a rejected copy claims nothing)
        proof(6, stranger).to_json_dict(),  # 5 unknown_key
        good.to_json_dict(),  # 6 replayed: the first copy in the batch won
        earlier.to_json_dict(),  # 7 replayed: accepted by an earlier call
        proof(7, bob, "alice").to_json_dict(),  # 8 bob's key, alice's proof
        other.to_json_dict(),  # 9 accepted
        {"v": 1},  # 10 malformed_proof
        create_proof(alice, wire(8), aud="evil.example.com", sub="alice").to_json_dict(),
    ]
    before = await batch.count()
    doc = await batch.post(entries)
    results = doc["results"]
    codes = [r.get("code") for r in results]
    assert codes == [
        None,
        "malformed_proof",
        "expired",
        "invalid_signature",
        None,
        "unknown_key",
        "replayed",
        "replayed",
        "subject_mismatch",
        None,
        "malformed_proof",
        "wrong_audience",
    ]
    assert [r["valid"] for r in results] == [c is None for c in codes]
    assert (doc["accepted"], doc["rejected"]) == (3, 9)
    assert results[6]["status"] == 409 and results[7]["status"] == 409
    assert results[0]["proof_id"] == results[6]["proof_id"] == proof_id_of(good)
    assert results[4]["proof_id"] == results[3]["proof_id"] == proof_id_of(twin)
    assert results[9]["sub"] == "bob" and results[9]["context"] == wire(4)

    # Exactly one audit row per entry, each telling that entry's outcome.
    assert await batch.count() == before + len(entries)
    assert len({r["audit_event_id"] for r in results}) == len(entries)
    for r, code in zip(results, codes, strict=True):
        seq, status, event_type, error_code, proof_id, _ = await batch.audit(r["audit_event_id"])
        assert status == ("accepted" if code is None else "rejected")
        assert event_type == ("proof.verified" if code is None else "proof.rejected")
        assert error_code == code
        assert proof_id == r.get("proof_id")
        if code is None:
            assert r["leaf_index"] == seq - 1
    # One webhook event per outcome, in the same transaction as its row.
    events = dict(
        await batch.rows(
            "SELECT a.event_id, o.event_type FROM outbox o JOIN audit a USING (event_id) "
            "WHERE a.seq > $1",
            before,
        )
    )
    assert events == {
        r["audit_event_id"]: "proof.verified" if r["valid"] else "proof.rejected" for r in results
    }


async def test_duplicates_first_in_batch_order_wins(batch: Batch) -> None:
    key = await batch.register("carol")
    proofs = [create_proof(key, wire(n), aud=AUD, sub="carol") for n in range(3)]
    entries = [p.to_json_dict() for p in (proofs[0], proofs[1], proofs[0], proofs[2], proofs[1])]
    results = (await batch.post(entries))["results"]
    assert [r.get("code") for r in results] == [None, None, "replayed", None, "replayed"]
    accepted = (await batch.audit(results[0]["audit_event_id"]))[0]
    replayed = (await batch.audit(results[2]["audit_event_id"]))[0]
    assert accepted < replayed  # the winner's row comes first in the chain
    again = (await batch.post(entries[:2]))["results"]
    assert [r["code"] for r in again] == ["replayed", "replayed"]


async def test_all_valid_batches_are_contiguous_runs_of_audit_rows(batch: Batch) -> None:
    """Two all-valid batches at once: every entry accepted with its own audit row, and each
    call's rows contiguous in the chain, in batch order (one group-commit submission)."""
    keys = {sub: await batch.register(sub) for sub in ("ivan", "judy")}
    calls = [
        [create_proof(keys[sub], wire(n), aud=AUD, sub=sub) for n in range(1, 9)]
        for sub in ("ivan", "judy")
    ]
    before = await batch.count()
    docs = await asyncio.gather(*(batch.post([p.to_json_dict() for p in c]) for c in calls))
    for proofs, doc in zip(calls, docs, strict=True):
        assert (doc["accepted"], doc["rejected"]) == (len(proofs), 0)
        seqs = []
        for p, r in zip(proofs, doc["results"], strict=True):
            assert r["valid"] is True and "code" not in r, r
            assert (r["proof_id"], r["kid"], r["alg"]) == (proof_id_of(p), p.kid, "ES256")
            seq, status, event_type, error_code, pid, kid = await batch.audit(r["audit_event_id"])
            assert (status, event_type, error_code) == ("accepted", "proof.verified", None)
            assert (pid, kid) == (r["proof_id"], p.kid)
            assert r["leaf_index"] == seq - 1
            seqs.append(seq)
        assert seqs == list(range(seqs[0], seqs[0] + len(proofs))), seqs
    assert await batch.count() == before + sum(map(len, calls))


async def test_revoked_key_and_expired_proof_among_good_entries(batch: Batch) -> None:
    """Each bad entry is refused alone, with its protocol code and a proof.rejected row;
    a revocation is seen by the very next call (keys are read afresh per call)."""
    dave = await batch.register("dave")
    erin = await batch.register("erin")
    first = create_proof(dave, wire(1), aud=AUD, sub="dave")
    assert (await batch.post([first.to_json_dict()]))["accepted"] == 1
    r = await batch.client.request("DELETE", f"/keys/{first.kid}", json={"reason": "lost"})
    assert r.status_code == 200, r.text
    good = create_proof(erin, wire(2), aud=AUD, sub="erin")
    late = create_proof(dave, wire(3), aud=AUD, sub="dave")
    expired = create_proof(erin, wire(4), aud=AUD, sub="erin", now=time.time() - 3600)
    other = create_proof(erin, wire(5), aud=AUD, sub="erin")
    # proofs[i] is the proof behind entries[i] (None: the entry is no proof at all)
    proofs: list[Proof | None] = [good, late, expired, other, None, None, first]
    entries: list[Any] = [
        good.to_json_dict(),
        late.to_json_dict(),
        expired.to_json_dict(),
        other.to_json_dict(),
        ["not", "an", "envelope"],
        {**good.to_json_dict(), "sig": 7},  # a sig that is not bytes
        first.to_json_dict(),  # accepted before the revocation
    ]
    before = await batch.count()
    doc = await batch.post(entries)
    results = doc["results"]
    expected = [
        (None, None),
        ("key_revoked", 403),
        ("expired", 422),
        (None, None),
        ("malformed_proof", 400),
        ("malformed_proof", 400),
        ("key_revoked", 403),  # check 5 comes before the replay check
    ]
    assert [(r.get("code"), r.get("status")) for r in results] == expected
    assert (doc["accepted"], doc["rejected"]) == (2, 5)
    assert await batch.count() == before + len(entries)
    for p, r, (code, _) in zip(proofs, results, expected, strict=True):
        seq, status, event_type, error_code, pid, kid = await batch.audit(r["audit_event_id"])
        if code is None:
            assert (status, event_type, error_code) == ("accepted", "proof.verified", None)
            assert r["leaf_index"] == seq - 1
        else:
            assert (status, event_type, error_code) == ("rejected", "proof.rejected", code)
            assert r["valid"] is False and "leaf_index" not in r
        if p is not None and code != "malformed_proof":
            assert (pid, kid) == (r["proof_id"], p.kid) == (proof_id_of(p), p.kid)
        else:
            assert pid is None and r.get("proof_id") is None


@pytest.mark.parametrize("batch", [{}, ALLOW_ALL], ids=["", "policy"], indirect=True)
async def test_webauthn_entries_in_a_batch(batch: Batch) -> None:
    """Passkey proofs take the single-proof path inside a batch: accepted entry by entry
    with the device-key proofs, the credential's sign count advances, the same assertion
    sent again is ``replayed`` (its stale counter is no clone alarm), and a new assertion
    whose counter does not increase is ``webauthn_sign_count``."""
    device = await batch.register("alice")
    passkey = generate_private_key()
    kid = await batch.register_passkey("alice", passkey)
    assert await batch.sign_count(kid) == 0

    def es256(n: int) -> dict[str, Any]:
        return create_proof(device, wire(n), aud=AUD, sub="alice").to_json_dict()

    def assertion(n: int, sign_count: int) -> Proof:
        intent = Intent.create(wire(n), aud=AUD, sub="alice")
        return webauthn_proof(passkey, kid, intent, sign_count=sign_count)

    async def post(entries: list[Any]) -> list[dict[str, Any]]:
        before = await batch.count()
        results: list[dict[str, Any]] = (await batch.post(entries))["results"]
        assert await batch.count() == before + len(entries)
        for r in results:
            _, status, event_type, error_code, pid, _ = await batch.audit(r["audit_event_id"])
            assert status == ("accepted" if r["valid"] else "rejected")
            assert event_type == ("proof.verified" if r["valid"] else "proof.rejected")
            assert (error_code, pid) == (r.get("code"), r.get("proof_id"))
        return results

    signed = assertion(1, sign_count=5)
    results = await post([es256(2), signed.to_json_dict(), es256(3), signed.to_json_dict()])
    assert [r.get("code") for r in results] == [None, None, None, "replayed"]
    passkey_answer = results[1]
    assert (passkey_answer["alg"], passkey_answer["kid"]) == ("webauthn.ES256", kid)
    assert passkey_answer["user_verified"] is True
    assert passkey_answer["proof_id"] == results[3]["proof_id"] == proof_id_of(signed)
    seq = (await batch.audit(passkey_answer["audit_event_id"]))[0]
    assert passkey_answer["leaf_index"] == seq - 1
    assert await batch.sign_count(kid) == 5

    # The same assertion in a later call: a replay, answered as such.
    results = await post([signed.to_json_dict(), es256(4)])
    assert [(r.get("code"), r.get("status")) for r in results] == [("replayed", 409), (None, None)]
    assert results[0]["proof_id"] == proof_id_of(signed)

    # A new digest whose counter does not increase: a possible cloned authenticator.
    for n, stale in ((5, 5), (6, 4)):
        results = await post([es256(10 + n), assertion(n, sign_count=stale).to_json_dict()])
        assert [(r.get("code"), r.get("status")) for r in results] == [
            (None, None),
            ("webauthn_sign_count", 422),
        ]
    assert await batch.sign_count(kid) == 5
    results = await post([assertion(7, sign_count=6).to_json_dict()])
    assert results[0]["valid"] is True
    assert await batch.sign_count(kid) == 6


async def test_approval_answers_take_the_approval_path(batch: Batch) -> None:
    key = await batch.register("erin")
    created = await batch.client.post("/approvals", json={"sub": "erin", "context": wire(9)})
    assert created.status_code == 201, created.text
    approval = created.json()
    answer = sign_intent(key, Intent.from_bytes(b64u_decode(approval["intent"])))
    plain = create_proof(key, wire(10), aud=AUD, sub="erin")
    entries = [answer.to_json_dict(), plain.to_json_dict(), answer.to_json_dict()]
    results = (await batch.post(entries))["results"]
    assert [r.get("code") for r in results] == [None, None, "replayed"]
    assert results[0]["approval_id"] == approval["id"]
    assert "approval_id" not in results[1]
    r = await batch.client.get(f"/approvals/{approval['id']}")
    assert r.json()["status"] == "approved"
    row = await batch.rows(
        "SELECT detail FROM audit WHERE event_id = $1", results[0]["audit_event_id"]
    )
    assert row == [(f"approval {approval['id']}",)]


async def test_metrics_count_every_proof(batch: Batch) -> None:
    key = await batch.register("frank")
    m = batch.state.metrics

    def sample(metric: Any, name: str, **labels: str) -> float:
        for family in metric.collect():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def counts() -> tuple[float, float, float]:
        total = "proof_messenger_verifications_total"
        return (
            sample(m.verifications, total, outcome="accepted", code="ok"),
            sample(m.verifications, total, outcome="rejected", code="replayed"),
            sample(m.verify_latency, "proof_messenger_verify_duration_seconds_count"),
        )

    ok, replayed, observed = counts()
    proofs = [create_proof(key, wire(n), aud=AUD, sub="frank").to_json_dict() for n in range(3)]
    await batch.post([*proofs, proofs[0]])
    assert counts() == (ok + 3, replayed + 1, observed + 4)


async def test_an_entry_with_a_repeated_key_is_refused_alone(batch: Batch) -> None:
    """/verify refuses an envelope that repeats a key; a batch entry must not be
    collapsed to its last value and accepted instead."""
    key = await batch.register("gina")
    good = create_proof(key, wire(1), aud=AUD, sub="gina")
    other = create_proof(key, wire(2), aud=AUD, sub="gina").to_json_dict()
    doc = good.to_json_dict()
    # the same envelope with its "intent" given twice: the second one is the real intent
    fields = [f'"{k}":{json.dumps(v)}' for k, v in doc.items() if k != "intent"]
    repeated = "{" + ",".join([f'"intent":{json.dumps(other["intent"])}', *fields])
    repeated += f',"intent":{json.dumps(doc["intent"])}' + "}"
    body = '{"proofs":[' + repeated + "," + json.dumps(other) + "]}"
    r = await batch.client.post(
        "/verify/batch", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["valid"] is False and first["code"] == "malformed_proof"
    assert second["valid"] is True


async def test_a_cbor_batch_with_a_repeated_key_is_refused(batch: Batch) -> None:
    key = await batch.register("hank")
    env = create_proof(key, wire(1), aud=AUD, sub="hank").to_cbor()
    # a one-entry map {"proofs": [...]} whose entry repeats its first key ("v": 1)
    entry = bytes([env[0] + 1]) + b"\x61v\x01" + env[1:]
    body = b"\xa1\x66proofs\x81" + entry
    r = await batch.client.post(
        "/verify/batch", content=body, headers={"content-type": "application/cbor"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_request"


@pytest.mark.parametrize("batch", [{}, ALLOW_ALL], ids=["", "policy"], indirect=True)
async def test_assertions_of_one_passkey_in_one_batch_run_in_batch_order(batch: Batch) -> None:
    """Several assertions of one passkey, counters increasing in batch order: each is
    accepted, as when sent one by one. (Run concurrently, all but one failed the sign-count
    compare-and-set and were refused as a cloned authenticator.) A lower counter after a
    higher one in the same batch is still refused."""
    device = await batch.register("alice")
    passkey = generate_private_key()
    kid = await batch.register_passkey("alice", passkey)

    def assertion(n: int, sign_count: int) -> dict[str, Any]:
        intent = Intent.create(wire(n), aud=AUD, sub="alice")
        return webauthn_proof(passkey, kid, intent, sign_count=sign_count).to_json_dict()

    first = assertion(1, 1)
    entries = [
        first,
        create_proof(device, wire(2), aud=AUD, sub="alice").to_json_dict(),
        assertion(3, 2),
        first,  # a copy: replayed, not a clone
        assertion(4, 7),
        assertion(5, 6),  # lower than the one before it in the batch
        assertion(6, 8),
    ]
    results = (await batch.post(entries))["results"]
    codes = [r.get("code") for r in results]
    assert codes == [None, None, None, "replayed", None, "webauthn_sign_count", None]
    assert await batch.sign_count(kid) == 8
