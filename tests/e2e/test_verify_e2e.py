"""POST /verify and /verify/batch over real HTTP against a relay subprocess.

Every rejection is checked for its HTTP status, RFC 9457 shape, stable ``code``,
``proof_id`` (when the proof got that far) and the ``audit_event_id`` of its audit row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import cbor2
import httpx

from .conftest import audit_row
from .relay_harness import RelayProcess, Signer

IBAN = "DE89370400440532013000"


def wire(amount: int = 1_250_000, **extra: Any) -> dict[str, Any]:
    return {"type": "wire_transfer", "amount_minor": amount, "currency": "EUR", **extra}


def assert_problem(
    r: httpx.Response, status: int, code: str, *, proof_id: str | None = None
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"] and body["detail"]
    if proof_id is not None:
        assert body["proof_id"] == proof_id
    return body


def assert_audited_rejection(
    relay: RelayProcess, r: httpx.Response, status: int, code: str, proof_id: str | None = None
) -> dict[str, Any]:
    body = assert_problem(r, status, code, proof_id=proof_id)
    row = audit_row(relay.db_path, body["audit_event_id"])
    assert row is not None, "the rejection has no audit row"
    assert row["status"] == "rejected"
    assert row["error_code"] == code
    if proof_id is not None:
        assert row["proof_id"] == proof_id
    return body


def test_accepted_proof_answer_and_encrypted_audit_row(relay: RelayProcess, signer: Signer) -> None:
    proof = signer.proof(wire(iban=IBAN, beneficiary="ACME"))
    r = relay.post_proof(proof)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["sub"] == signer.sub
    assert body["kid"] == signer.kid
    assert body["context"] == wire(iban=IBAN, beneficiary="ACME")
    assert body["verified_at"].endswith("Z")
    for name in ("proof_id", "audit_event_id"):
        assert isinstance(body[name], str) and body[name]

    # The row is committed before the answer: it is in the file already.
    row = audit_row(relay.db_path, body["audit_event_id"])
    assert row is not None
    assert row["status"] == "accepted"
    assert row["event_type"] == "proof.verified"
    assert row["kid"] == signer.kid
    assert row["sub"] == signer.sub
    assert row["proof_id"] == body["proof_id"]
    assert row["context_key_id"]
    assert row["context_ct"] and IBAN.encode() not in row["context_ct"]
    raw = relay.db_path.read_bytes()
    assert IBAN.encode() not in raw and b"ACME" not in raw

    with relay.client() as c:
        event = c.get(f"/audit/{body['audit_event_id']}").json()
    assert event["context"] == wire(iban=IBAN, beneficiary="ACME")
    assert event["kid"] == signer.kid
    assert event["status"] == "accepted"


def test_replay_sequential_is_refused(relay: RelayProcess, signer: Signer) -> None:
    proof = signer.proof(wire())
    first = relay.post_proof(proof)
    assert first.status_code == 200
    second = relay.post_proof(proof)
    assert_audited_rejection(relay, second, 409, "replayed", first.json()["proof_id"])
    # the CBOR form of the same proof is the same proof
    third = relay.post_proof(proof, cbor=True)
    assert_audited_rejection(relay, third, 409, "replayed", first.json()["proof_id"])


async def test_twenty_concurrent_copies_exactly_one_accepted(
    relay: RelayProcess, signer: Signer
) -> None:
    proof = signer.proof(wire())
    payload = proof.to_json()
    async with relay.async_client() as c:
        responses = await asyncio.gather(
            *(
                c.post("/verify", content=payload, headers={"content-type": "application/json"})
                for _ in range(20)
            )
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 19
    for r in responses:
        if r.status_code == 409:
            assert_audited_rejection(relay, r, 409, "replayed")
    with relay.client() as c:
        events = c.get("/audit", params={"sub": signer.sub, "limit": 100}).json()["events"]
    proof_events = [e for e in events if e["type"].startswith("proof.")]
    assert len(proof_events) == 20
    assert sum(e["status"] == "accepted" for e in proof_events) == 1


def test_revoked_key(relay: RelayProcess, signer: Signer) -> None:
    with relay.client() as c:
        r = c.request("DELETE", f"/keys/{signer.kid}", json={"reason": "device lost"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "revoked"
        assert c.get(f"/keys/{signer.kid}").json()["revoke_reason"] == "device lost"
    proof = signer.proof(wire())
    r = relay.post_proof(proof)
    body = assert_audited_rejection(relay, r, 403, "key_revoked")
    assert body["proof_id"]


def test_wrong_audience(relay: RelayProcess, signer: Signer) -> None:
    r = relay.post_proof(signer.proof(wire(), aud="evil.example.com"))
    body = assert_audited_rejection(relay, r, 422, "wrong_audience")
    assert body["proof_id"]


def test_expired_and_not_yet_valid(relay: RelayProcess, signer: Signer) -> None:
    old = signer.proof(wire(), now=time.time() - 3600, ttl=300)
    assert_audited_rejection(relay, relay.post_proof(old), 422, "expired")
    future = signer.proof(wire(), now=time.time() + 3600, ttl=300)
    assert_audited_rejection(relay, relay.post_proof(future), 422, "not_yet_valid")
    too_long = signer.proof(wire(), ttl=3600)
    assert_audited_rejection(relay, relay.post_proof(too_long), 422, "lifetime_too_long")


def test_tampered_signature_and_intent(relay: RelayProcess, signer: Signer) -> None:
    proof = signer.proof(wire())
    bad_sig = dataclasses.replace(proof, sig=bytes([proof.sig[0] ^ 1]) + proof.sig[1:])
    assert_audited_rejection(relay, relay.post_proof(bad_sig), 422, "invalid_signature")
    # Re-sign nothing: swap in another (valid, canonical) intent under the old signature.
    other = signer.proof(wire(amount=99_999_999))
    swapped = dataclasses.replace(proof, intent=other.intent)
    assert_audited_rejection(relay, relay.post_proof(swapped), 422, "invalid_signature")
    # The untouched proof still verifies: the failures did not burn it.
    assert relay.post_proof(proof).status_code == 200


def test_unknown_key(relay: RelayProcess) -> None:
    stranger = Signer.new("stranger", relay.audience)
    r = relay.post_proof(stranger.proof(wire()))
    assert_audited_rejection(relay, r, 422, "unknown_key")


def test_subject_mismatch(relay: RelayProcess, signer: Signer) -> None:
    r = relay.post_proof(signer.proof(wire(), sub="somebody-else"))
    assert_audited_rejection(relay, r, 422, "subject_mismatch")


def test_public_key_in_envelope_must_match_registry(relay: RelayProcess, signer: Signer) -> None:
    other = Signer.new(signer.sub, relay.audience)
    proof = signer.proof(wire())
    forged = dataclasses.replace(proof, public_key=other.proof().public_key)
    r = relay.post_proof(forged)
    assert r.status_code in (400, 422), r.text
    assert r.json()["audit_event_id"]


def test_malformed_json_and_cbor(relay: RelayProcess) -> None:
    with relay.client() as c:
        for content, ctype in (
            (b"{not json", "application/json"),
            (b"[]", "application/json"),
            (b'{"v": 1}', "application/json"),
            (b"\xff\x00garbage", "application/cbor"),
            (cbor2.dumps([1, 2, 3]), "application/cbor"),
        ):
            r = c.post("/verify", content=content, headers={"content-type": ctype})
            body = assert_audited_rejection(relay, r, 400, "malformed_proof")
            assert "proof_id" not in body
        r = c.post("/verify", content=b"x", headers={"content-type": "text/plain"})
        assert_problem(r, 415, "unsupported_media_type")


def test_oversized_body(relay: RelayProcess) -> None:
    with relay.client() as c:
        big = b'{"v": 1, "pad": "' + b"a" * (1024 * 1024 + 10) + b'"}'
        r = c.post("/verify", content=big, headers={"content-type": "application/json"})
        assert_problem(r, 413, "payload_too_large")

        # Without Content-Length (chunked), the limit holds while streaming.
        def chunks() -> Any:
            for _ in range(20):
                yield b"a" * 65536

        r = c.post("/verify", content=chunks(), headers={"content-type": "application/json"})
        assert_problem(r, 413, "payload_too_large")


def test_missing_wrong_and_revoked_api_keys(relay: RelayProcess, signer: Signer) -> None:
    proof = signer.proof(wire()).to_json()
    ctype = {"content-type": "application/json"}
    with httpx.Client(base_url=relay.base_url) as c:
        r = c.post("/verify", content=proof, headers=ctype)
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.post("/verify", content=proof, headers={**ctype, "authorization": "Basic abc"})
        assert_problem(r, 401, "unauthorized")
        assert relay.api_key is not None
        wrong = relay.api_key[:-1] + ("A" if relay.api_key[-1] != "A" else "B")
        for token in ("nonsense", wrong):
            r = c.post(
                "/verify", content=proof, headers={**ctype, "authorization": f"Bearer {token}"}
            )
            assert_problem(r, 401, "invalid_api_key")

    verify_only = relay.create_api_key("verify", name="verify-only")
    with relay.client(verify_only) as c:
        r = c.post("/keys", json={"sub": "x", "public_key": Signer.new("x").public_key_b64})
        assert_problem(r, 403, "insufficient_scope")
        assert_problem(c.get("/audit"), 403, "insufficient_scope")
        assert_problem(c.get("/keys"), 403, "insufficient_scope")
        assert c.post("/verify", content=proof, headers=ctype).status_code == 200

    key_id = verify_only.split("_")[1]
    listed = relay.cli("apikey", "list")
    assert listed.returncode == 0 and key_id in listed.stdout
    assert verify_only not in listed.stdout
    revoked = relay.cli("apikey", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with relay.client(verify_only) as c:
        r = c.post("/verify", content=signer.proof(wire()).to_json(), headers=ctype)
        assert_problem(r, 401, "invalid_api_key")
    assert relay.cli("apikey", "revoke", key_id).returncode == 1

    # Only hashes are stored: neither the full key nor its secret part is in the DB.
    raw = relay.db_path.read_bytes()
    assert verify_only.encode() not in raw
    assert verify_only.split("_", 2)[2].encode() not in raw
    assert relay.api_key is not None and relay.api_key.split("_", 2)[2].encode() not in raw


def test_cbor_in_and_out(relay: RelayProcess, signer: Signer) -> None:
    proof = signer.proof(wire())
    r = relay.post_proof(proof, cbor=True, headers={"accept": "application/cbor"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/cbor"
    body = cbor2.loads(r.content)
    assert body["valid"] is True and body["kid"] == signer.kid and body["context"] == wire()
    r = relay.post_proof(proof, cbor=True, headers={"accept": "application/cbor"})
    assert_problem(r, 409, "replayed")  # problems stay problem+json


def test_batch_results_in_order(relay: RelayProcess, signer: Signer) -> None:
    good1, good2 = signer.proof(wire(1)), signer.proof(wire(2))
    expired = signer.proof(wire(3), now=time.time() - 3600)
    entries: list[Any] = [
        good1.to_json_dict(),
        "not a proof",
        expired.to_json_dict(),
        good2.to_json_dict(),
        good1.to_json_dict(),
    ]
    with relay.client() as c:
        r = c.post("/verify/batch", json={"proofs": entries})
        assert r.status_code == 200, r.text
        doc = r.json()
        results = doc["results"]
        assert [x["valid"] for x in results[1:4]] == [False, False, True]
        codes = [x.get("code") for x in results]
        assert codes[1:3] == ["malformed_proof", "expired"]
        assert results[3]["context"] == wire(2)
        # Two copies of one proof in one batch: the first in batch order wins.
        first, copy = results[0], results[4]
        assert first["valid"] is True
        assert copy["valid"] is False
        assert copy["code"] == "replayed" and copy["status"] == 409
        assert first["proof_id"] == copy["proof_id"]
        assert (doc["accepted"], doc["rejected"]) == (2, 3)
        for x in results:
            assert audit_row(relay.db_path, x["audit_event_id"]) is not None

        # CBOR batch
        p3 = signer.proof(wire(4))
        raw = cbor2.dumps({"proofs": [cbor2.loads(p3.to_cbor()), cbor2.loads(good2.to_cbor())]})
        r = c.post("/verify/batch", content=raw, headers={"content-type": "application/cbor"})
        assert r.status_code == 200, r.text
        assert [x.get("code") for x in r.json()["results"]] == [None, "replayed"]

        too_many = {"proofs": [good1.to_json_dict()] * 101}
        assert_problem(c.post("/verify/batch", json=too_many), 413, "batch_too_large")
        assert_problem(c.post("/verify/batch", json={"proofs": []}), 400, "invalid_request")
        r = c.post("/verify/batch", content=b"{", headers={"content-type": "application/json"})
        assert_problem(r, 400, "malformed_request")


def test_audit_list_filters_and_pagination(relay: RelayProcess, signer: Signer) -> None:
    t0 = time.time() - 1
    for amount in (1, 2, 3):
        assert relay.post_proof(signer.proof(wire(amount))).status_code == 200
    relay.post_proof(signer.proof(wire(4), aud="other.example.com"))
    with relay.client() as c:
        events = c.get("/audit", params={"sub": signer.sub}).json()["events"]
        # newest first: the rejection, three acceptances, the key registration
        assert [e["type"] for e in events] == [
            "proof.rejected",
            "proof.verified",
            "proof.verified",
            "proof.verified",
            "key.registered",
        ]
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs, reverse=True)
        assert [e["amount_minor"] for e in events[1:4]] == [3, 2, 1]
        assert "context" not in events[0]  # lists never carry decrypted contexts

        accepted = c.get("/audit", params={"sub": signer.sub, "status": "accepted"}).json()
        assert len(accepted["events"]) == 3
        rejected = c.get("/audit", params={"sub": signer.sub, "type": "proof.rejected"}).json()[
            "events"
        ]
        assert [e["error_code"] for e in rejected] == ["wrong_audience"]

        page1 = c.get("/audit", params={"sub": signer.sub, "limit": 2}).json()
        assert len(page1["events"]) == 2 and page1["next_cursor"]
        page2 = c.get(
            "/audit", params={"sub": signer.sub, "limit": 2, "cursor": page1["next_cursor"]}
        ).json()
        page3 = c.get(
            "/audit", params={"sub": signer.sub, "limit": 2, "cursor": page2["next_cursor"]}
        ).json()
        paged = [e["seq"] for p in (page1, page2, page3) for e in p["events"]]
        assert paged == seqs
        assert page3["next_cursor"] is None

        window = c.get(
            "/audit", params={"sub": signer.sub, "start": int(t0), "end": int(time.time()) + 5}
        ).json()["events"]
        assert len(window) >= 4
        future = c.get("/audit", params={"sub": signer.sub, "start": int(time.time()) + 3600})
        assert future.json()["events"] == []
        iso = c.get("/audit", params={"sub": signer.sub, "start": "2000-01-01T00:00:00Z"})
        assert len(iso.json()["events"]) == 5

        assert_problem(c.get("/audit", params={"status": "bogus"}), 400, "invalid_request")
        assert_problem(c.get("/audit", params={"limit": "0"}), 400, "invalid_request")
        assert_problem(c.get("/audit", params={"start": "yesterday"}), 400, "invalid_request")
        assert_problem(c.get("/audit", params={"cursor": "garbage!"}), 400, "invalid_request")
        assert_problem(c.get("/audit/does-not-exist"), 404, "not_found")


def test_audit_cli_list_and_show(relay: RelayProcess, signer: Signer) -> None:
    r = relay.post_proof(signer.proof(wire(iban=IBAN)))
    event_id = r.json()["audit_event_id"]
    listed = relay.cli("audit", "list", "--sub", signer.sub, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows[0]["event_id"] == event_id and rows[0]["status"] == "accepted"
    shown = relay.cli("audit", "show", event_id)
    assert shown.returncode == 0, shown.stderr
    assert IBAN in shown.stdout
    assert relay.cli("audit", "show", "no-such-event").returncode == 1


def _sample(text: str, name: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(name + " ")).split()[-1])


def test_every_append_is_counted_once_by_the_group_commit_metrics(
    relay: RelayProcess, signer: Signer
) -> None:
    with httpx.Client(base_url=relay.base_url) as c:
        before = c.get("/metrics").text
        proofs = [signer.proof(wire(amount=100 + i)) for i in range(3)]
        for proof in proofs:
            r = relay.post_proof(proof)
            assert r.status_code == 200, r.text
        r = relay.post_proof(proofs[0])  # a replay: rejected, and audited too
        assert r.status_code == 409, r.text
        after = c.get("/metrics").text
    # Five appends: three accepted rows, the replay's claim (it loses at commit and writes
    # nothing) and then the replay's rejection row.
    rows = "proof_messenger_audit_commit_rows"
    assert _sample(after, rows + "_sum") - _sample(before, rows + "_sum") == 5
    commits = _sample(after, rows + "_count") - _sample(before, rows + "_count")
    assert 1 <= commits <= 5
    for name in ("wait", "duration"):
        histogram = f"proof_messenger_audit_commit_{name}_seconds"
        assert _sample(after, histogram + "_count") - _sample(before, histogram + "_count") == (
            commits
        )


def test_health_ready_metrics_docs(relay: RelayProcess) -> None:
    with httpx.Client(base_url=relay.base_url) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json() == {"status": "ready"}
        text = c.get("/metrics").text
        for name in (
            'proof_messenger_verifications_total{code="ok",outcome="accepted"}',
            "proof_messenger_verify_duration_seconds_bucket",
            "proof_messenger_audit_write_duration_seconds_count",
            "proof_messenger_http_in_flight_requests",
        ):
            assert name in text, name
        count = next(
            line
            for line in text.splitlines()
            if line.startswith("proof_messenger_audit_write_duration_seconds_count")
        )
        assert float(count.split()[-1]) > 0, "audit write latency is never observed"
        spec = c.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        for path in ("/verify", "/verify/batch", "/keys", "/audit", "/audit/{event_id}"):
            assert path in spec["paths"], path
        docs = c.get("/docs")
        assert docs.status_code == 200 and "/verify/batch" in docs.text
        assert_problem(c.get("/nowhere"), 404, "not_found")
        assert_problem(c.put("/verify"), 405, "method_not_allowed")
        rid = c.get("/health", headers={"x-request-id": "trace-123"}).headers["x-request-id"]
        assert rid == "trace-123"


def test_cors_allow_list(relay: RelayProcess) -> None:
    from .conftest import ALLOWED_ORIGIN

    with httpx.Client(base_url=relay.base_url) as c:
        ok = c.get("/health", headers={"origin": ALLOWED_ORIGIN})
        assert ok.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
        other = c.get("/health", headers={"origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers
        pre = c.options(
            "/verify",
            headers={
                "origin": ALLOWED_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        bad = c.options(
            "/verify",
            headers={"origin": "https://evil.example.com", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in bad.headers


def test_logs_are_json_with_request_ids_and_no_secrets(relay: RelayProcess, signer: Signer) -> None:
    secret_marker = "TOP-SECRET-BENEFICIARY-7731"
    r = relay.post_proof(
        signer.proof(wire(beneficiary=secret_marker)), headers={"x-request-id": "log-check-1"}
    )
    assert r.status_code == 200
    relay.post_proof(signer.proof(wire(beneficiary=secret_marker), aud="x.example.com"))
    deadline = time.monotonic() + 10
    while "log-check-1" not in relay.stdout_path().read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    out = relay.stdout_path().read_text()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(e.get("request_id") == "log-check-1" and e["status"] == 200 for e in lines)
    assert all("event" in e and "level" in e for e in lines)
    assert relay.api_key is not None
    everything = relay.output()
    assert relay.api_key not in everything
    assert relay.api_key.split("_", 2)[2] not in everything
    assert secret_marker not in everything
