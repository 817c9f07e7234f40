"""Append, group commit, replay claims, chain verification, listing, tampering, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from proof_messenger.audit.chain import (
    chain_hash,
    entry_bytes,
    seal,
    verify_chain,
    verify_chain_async,
)
from proof_messenger.store import AuditFilter, AuditRecord, OutboxEvent, Store, StoreUnavailable

from .conftest import T0, Target, make_draft, make_subscription, rk


async def all_rows(store: Store) -> list[AuditRecord]:
    return [r async for r in store.iter_audit()]


async def verify(store: Store):  # type: ignore[no-untyped-def]
    return await verify_chain_async(store.iter_audit(), await store.chain_head())


async def test_append_is_gap_free_and_rows_rehash_identically(target: Target) -> None:
    store = await target.store()
    drafts = [make_draft(i) for i in range(40)]
    drafts[3] = make_draft(3, sub=None, kid=None, context_ct=None, amount_minor=None)
    results = await asyncio.gather(*(store.append(d) for d in drafts))
    records = [r.record for r in results]
    assert all(r is not None and not x.replayed for r, x in zip(records, results, strict=True))
    assert sorted(r.seq for r in records if r) == list(range(1, 41))

    rows = await all_rows(store)
    assert [r.seq for r in rows] == list(range(1, 41))
    by_id = {r.draft.event_id: r for r in rows}
    for rec in records:
        assert rec is not None
        assert by_id[rec.draft.event_id] == rec  # what append returned is what is stored
        again = chain_hash(rec.prev_hash, entry_bytes(rec.seq, rec.draft))
        assert again == rec.entry_hash
    assert verify_chain(rows, await store.chain_head()).ok
    report = await verify(store)
    assert report.ok and report.count == 40
    assert await store.audit_count() == 40
    assert await store.get_audit(drafts[7].event_id) == by_id[drafts[7].event_id]
    assert await store.get_audit("missing") is None


async def test_iter_audit_streams_past_one_chunk(target: Target) -> None:
    store = await target.store()
    await asyncio.gather(*(store.append(make_draft(i)) for i in range(1203)))
    seqs = [r.seq async for r in store.iter_audit()]
    assert seqs == list(range(1, 1204))
    assert [r.seq async for r in store.iter_audit(from_seq=1199)] == [1199, 1200, 1201, 1202, 1203]
    assert (await verify(store)).ok


async def test_same_digest_50_concurrent_claims_exactly_one_wins(target: Target) -> None:
    store = await target.store()
    digest = os.urandom(32)
    assert await store.is_claimed(rk(digest)) is False
    results = await asyncio.gather(
        *(store.append(make_draft(i), claim=rk(digest)) for i in range(50))
    )
    winners = [r for r in results if not r.replayed]
    assert len(winners) == 1 and winners[0].record is not None
    assert sum(r.replayed and r.record is None for r in results) == 49
    assert await store.audit_count() == 1
    assert await store.is_claimed(rk(digest)) is True

    # The claim is durable: a new store instance on the same database still sees it.
    other = await target.store()
    assert await other.is_claimed(rk(digest)) is True
    again = await other.append(make_draft(99), claim=rk(digest))
    assert again.replayed and again.record is None
    assert await other.audit_count() == 1


async def test_claim_survives_reopen(target: Target) -> None:
    store = await target.store()
    digest = os.urandom(32)
    assert not (await store.append(make_draft(0), claim=rk(digest))).replayed
    await store.close()
    target.opened.remove(store)
    reopened = await target.store(migrate=False)
    assert await reopened.is_claimed(rk(digest))
    assert (await reopened.append(make_draft(1), claim=rk(digest))).replayed


async def test_two_instances_append_concurrently_without_forking(target: Target) -> None:
    a = await target.store()
    b = await target.store()
    shared = os.urandom(32)
    jobs = []
    for i in range(200):
        jobs.append(a.append(make_draft(i, sub="a")))
        jobs.append(b.append(make_draft(i, sub="b")))
    for i in range(10):
        jobs.append(a.append(make_draft(1000 + i), claim=rk(shared)))
        jobs.append(b.append(make_draft(2000 + i), claim=rk(shared)))
    results = await asyncio.gather(*jobs)
    assert sum(not r.replayed for r in results) == 401
    rows = await all_rows(a)
    assert [r.seq for r in rows] == list(range(1, 402))
    assert len({r.draft.event_id for r in rows}) == 401
    report = verify_chain(rows, await b.chain_head())
    assert report.ok, report.problem


async def test_outbox_rows_are_written_with_their_audit_row(target: Target) -> None:
    store = await target.store()
    await store.insert_webhook_subscription(make_subscription("s1", ("proof.verified", "key.used")))
    d = make_draft(1)
    events = [OutboxEvent("proof.verified", b'{"a":1}'), OutboxEvent("key.used", b'{"b":2}')]
    res = await store.append(d, outbox=events)
    assert res.record is not None
    await store.append(make_draft(2))  # no outbox rows
    rows = await target.fetch(
        "SELECT event_id, event_type, payload, status, attempts FROM outbox ORDER BY id"
    )
    assert [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows] == [
        (d.event_id, "proof.verified", b'{"a":1}', "pending", 0),
        (d.event_id, "key.used", b'{"b":2}', "pending", 0),
    ]
    # A replayed append writes no outbox rows either.
    digest = os.urandom(32)
    await store.append(make_draft(3), claim=rk(digest))
    r = await store.append(make_draft(4), claim=rk(digest), outbox=events)
    assert r.replayed
    assert len(await target.fetch("SELECT id FROM outbox")) == 2


async def test_outbox_rows_only_for_event_types_a_live_subscription_wants(
    target: Target,
) -> None:
    """Fan-out would expand any other row into no delivery, so none is written: with no
    subscription, accepting a proof costs no outbox write and no fan-out transaction."""
    store = await target.store()
    events = [OutboxEvent("proof.verified", b"{}"), OutboxEvent("key.used", b"{}")]
    await store.append(make_draft(1), outbox=events)
    assert await target.fetch("SELECT id FROM outbox") == []
    await store.insert_webhook_subscription(make_subscription("s1", ("key.used",)))
    await store.append(make_draft(2), outbox=events)
    rows = await target.fetch("SELECT event_type FROM outbox")
    assert [r[0] for r in rows] == ["key.used"]
    # a deleted subscription wants nothing any more
    assert await store.delete_webhook_subscription("s1", T0 + 1)
    await store.append(make_draft(3), outbox=events)
    assert len(await target.fetch("SELECT id FROM outbox")) == 1


class _Unencodable(dict):  # type: ignore[type-arg]
    """A payload map whose JSON encoding fails: proves when the store encodes it."""

    def __init__(self) -> None:
        super().__init__(a=object())


async def test_outbox_map_payloads_are_encoded_only_when_wanted(target: Target) -> None:
    """A map payload is encoded by the store inside the commit, and only for an event a
    live subscription wants: with no webhook configured a proof costs no JSON encoding.
    The stored body is the map as it was at commit time."""
    store = await target.store()
    # Nobody wants proof.verified: never encoded (encoding this map would fail).
    res = await store.append(make_draft(1), outbox=[OutboxEvent("proof.verified", _Unencodable())])
    assert res.record is not None
    assert await target.fetch("SELECT id FROM outbox") == []
    await store.insert_webhook_subscription(make_subscription("s1", ("proof.verified",)))
    payload = {"valid": True, "context": {"amount": "12500.00", "ref": b"\x01"}}
    d = make_draft(2)
    await store.append(d, outbox=[OutboxEvent("proof.verified", payload)])
    payload["leaf_index"] = 1  # what the relay adds to its answer after the commit
    rows = await target.fetch("SELECT event_id, payload FROM outbox")
    assert [(r[0], bytes(r[1])) for r in rows] == [
        (d.event_id, b'{"valid":true,"context":{"amount":"12500.00","ref":"AQ=="}}')
    ]


async def test_list_audit_cursor_walks_every_row_once_newest_first(target: Target) -> None:
    store = await target.store()
    for i in range(30):  # sequential so seq order == time order
        await store.append(
            make_draft(
                i,
                sub="alice" if i % 3 else "bob",
                event_type="proof.rejected" if i % 2 else "proof.verified",
                status="rejected" if i % 2 else "accepted",
            )
        )

    async def walk(flt: AuditFilter, limit: int) -> list[int]:
        seen: list[int] = []
        cursor = None
        while True:
            page = await store.list_audit(flt, limit, cursor)
            assert len(page.records) <= limit
            seen.extend(r.seq for r in page.records)
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    assert await walk(AuditFilter(), 7) == list(range(30, 0, -1))
    assert await walk(AuditFilter(), 30) == list(range(30, 0, -1))
    assert await walk(AuditFilter(), 1000) == list(range(30, 0, -1))
    bob = [s for s in range(30, 0, -1) if (s - 1) % 3 == 0]
    assert await walk(AuditFilter(sub="bob"), 4) == bob
    rejected = [s for s in range(30, 0, -1) if (s - 1) % 2]
    assert await walk(AuditFilter(status="rejected"), 4) == rejected
    assert await walk(AuditFilter(event_type="proof.rejected"), 50) == rejected
    # Half-open time range [start, end): rows 11..20 have times T0+10.12 .. T0+19.12.
    assert await walk(AuditFilter(start=T0 + 10, end=T0 + 20), 3) == list(range(20, 10, -1))
    both = [s for s in bob if s in rejected]
    assert await walk(AuditFilter(sub="bob", status="rejected"), 2) == both

    for evil in ("' OR 1=1 --", "alice' --", '"; DROP TABLE audit; --', "%", "*"):
        assert await walk(AuditFilter(sub=evil), 5) == []
        assert await walk(AuditFilter(event_type=evil, status=evil), 5) == []
    assert await store.audit_count() == 30


async def test_list_audit_rejects_bad_cursor_and_limit(target: Target) -> None:
    store = await target.store()
    await store.append(make_draft(0))
    for bad in ("not-a-cursor", "' OR 1=1 --", "czEx=garbage", "x" * 100):
        with pytest.raises(ValueError, match="cursor"):
            await store.list_audit(AuditFilter(), 10, bad)
    for limit in (0, -1, 1001):
        with pytest.raises(ValueError, match="limit"):
            await store.list_audit(AuditFilter(), limit)


async def _fill(store: Store, n: int) -> list[AuditRecord]:
    for i in range(n):
        await store.append(make_draft(i))
    return await all_rows(store)


async def test_tampering_altered_row_is_named(target: Target) -> None:
    store = await target.store()
    await _fill(store, 10)
    await target.execute("UPDATE audit SET amount_minor = 1 WHERE seq = $1", 6)
    report = await verify(store)
    assert not report.ok and report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (6, "altered")
    assert report.count == 5


async def test_tampering_altered_ciphertext_is_named(target: Target) -> None:
    store = await target.store()
    await _fill(store, 5)
    await target.execute("UPDATE audit SET context_ct = $1 WHERE seq = $2", b"\x00" * 40, 2)
    report = await verify(store)
    assert report.problem is not None and report.problem.seq == 2


async def test_tampering_rehashed_row_breaks_the_next_link(target: Target) -> None:
    store = await target.store()
    rows = await _fill(store, 8)
    forged = seal(4, rows[2].entry_hash, dataclasses.replace(rows[3].draft, amount_minor=1))
    await target.execute(
        "UPDATE audit SET amount_minor = 1, entry_hash = $1 WHERE seq = 4", forged.entry_hash
    )
    report = await verify(store)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (5, "broken_link")


async def test_tampering_deleted_row_is_named(target: Target) -> None:
    store = await target.store()
    await _fill(store, 10)
    await target.execute("DELETE FROM audit WHERE seq = $1", 4)
    report = await verify(store)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (4, "missing")


async def test_tampering_deleted_tail_is_named_via_chain_head(target: Target) -> None:
    store = await target.store()
    await _fill(store, 10)
    await target.execute("DELETE FROM audit WHERE seq >= $1", 9)
    assert verify_chain(await all_rows(store)).ok  # invisible without the head ...
    report = await verify(store)  # ... and named with it
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (9, "missing")


async def test_tampering_inserted_rows_are_named(target: Target) -> None:
    store = await target.store()
    rows = await _fill(store, 5)
    cols = "seq, time_us, event_id, event_type, status, prev_hash, entry_hash"
    # A naive forgery (hash not recomputed) ...
    await target.execute(
        f"INSERT INTO audit ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        6,
        1,
        "forged-1",
        "proof.verified",
        "accepted",
        rows[-1].entry_hash,
        os.urandom(32),
    )
    report = await verify(store)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (6, "altered")

    # ... and a consistent one (hashes recomputed by someone who knows the algorithm):
    # every link checks out, only the chain head exposes it.
    await target.execute("DELETE FROM audit WHERE seq = 6")
    forged = seal(6, rows[-1].entry_hash, make_draft(6, event_id="forged-2"))
    await target.insert_audit_row(forged)
    assert verify_chain(await all_rows(store)).ok
    report = await verify(store)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (6, "head_mismatch")


async def test_failed_batch_rolls_back_everything_then_recovers(target: Target) -> None:
    store = await target.store()
    await _fill(store, 3)
    head = await store.chain_head()
    digest = os.urandom(32)
    event = [OutboxEvent("proof.verified", b"{}")]
    await store.insert_webhook_subscription(make_subscription("s1", ("proof.verified",)))
    # Fault: the outbox table disappears, so each batch fails at its first outbox insert.
    await target.execute("ALTER TABLE outbox RENAME TO outbox_gone")
    results = await asyncio.gather(
        store.append(make_draft(10), claim=rk(digest), outbox=event),
        *(store.append(make_draft(11 + i), outbox=event) for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await store.chain_head() == head
    assert await store.audit_count() == 3
    assert len(await all_rows(store)) == 3
    assert await store.is_claimed(rk(digest)) is False  # the claim rolled back with its row

    await target.execute("ALTER TABLE outbox_gone RENAME TO outbox")
    res = await store.append(make_draft(30), claim=rk(digest), outbox=event)
    assert res.record is not None and res.record.seq == 4
    assert (await verify(store)).ok


async def test_duplicate_event_id_fails_only_its_own_append(target: Target) -> None:
    store = await target.store()
    first = make_draft(0)
    await store.append(first)
    dup = make_draft(1, event_id=first.event_id)
    results = await asyncio.gather(
        *(store.append(make_draft(2 + i)) for i in range(5)),
        store.append(dup),
        *(store.append(make_draft(10 + i)) for i in range(5)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and not isinstance(errors[0], StoreUnavailable)
    assert await store.audit_count() == 11
    assert (await verify(store)).ok


async def test_closed_store_refuses_appends(target: Target) -> None:
    store = await target.store()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append(make_draft(0))


async def test_invalid_drafts_are_refused_up_front(target: Target) -> None:
    store = await target.store()
    for bad in (
        make_draft(0, time=float("nan")),
        make_draft(0, status="bogus"),
        make_draft(0, amount_minor=2**63),
        make_draft(0, event_id=""),
    ):
        with pytest.raises(ValueError):
            await store.append(bad)
    assert await store.audit_count() == 0


async def test_close_drains_queued_appends(target: Target) -> None:
    store = await target.store()
    pending = [asyncio.ensure_future(store.append(make_draft(i))) for i in range(300)]
    await asyncio.sleep(0)  # let them enqueue
    await store.close()
    results = await asyncio.gather(*pending)
    assert all(r.record is not None for r in results)
    reopened = await target.store(migrate=False)
    assert await reopened.audit_count() == 300
    assert (await verify(reopened)).ok
