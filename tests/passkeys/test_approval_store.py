"""The approval state machine in the store, on SQLite and PostgreSQL (no browser).

Transitions are compare-and-sets committed with their audit row in the group-commit
transaction: exactly one decision wins, a failed CAS writes nothing (not even the replay
claim), and expiry only applies once the deadline has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proof_messenger.store import Store
from proof_messenger.store.base import ApprovalTransition, RegistrationChallenge
from proof_messenger.store.postgres import PostgresStore
from proof_messenger.store.sqlite import SQLiteStore
from tests.store.conftest import T0, make_draft, opened_store, pg_database, rk
from tests.store.conftest import make_approval as approval


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            s: Store = SQLiteStore(str(tmp_path / "relay.db"))
        else:
            dsn = await stack.enter_async_context(pg_database())
            s = PostgresStore(dsn, max_connections=5)
        yield await stack.enter_async_context(opened_store(s))


async def test_insert_and_find_by_id_and_nonce(store: Store) -> None:
    a = approval()
    await store.insert_approval(a)
    assert await store.get_approval(a.id) == a
    assert await store.get_approval_by_nonce(a.nonce) == a
    assert await store.get_approval("nope") is None
    assert a.effective_status(T0 + 299) == "pending"
    assert a.effective_status(T0 + 300) == "expired"


async def test_approve_once_atomically_with_audit_row(store: Store) -> None:
    a = approval()
    await store.insert_approval(a)
    digest = os.urandom(32)
    first = await store.append(
        make_draft(1),
        claim=rk(digest),
        approval=ApprovalTransition(a.id, "approved", T0 + 10, proof_id="p1"),
    )
    assert first.record is not None and not first.transition_failed
    stored = await store.get_approval(a.id)
    assert stored is not None
    assert (stored.status, stored.proof_id, stored.decided_at) == ("approved", "p1", T0 + 10)
    assert stored.audit_event_id == first.record.draft.event_id
    count = await store.audit_count()
    # A second decision (another digest, e.g. a re-signed intent) loses and writes nothing,
    # and its replay claim is rolled back with it.
    other = os.urandom(32)
    second = await store.append(
        make_draft(2), claim=rk(other), approval=ApprovalTransition(a.id, "declined", T0 + 11)
    )
    assert second.transition_failed and second.record is None
    assert await store.audit_count() == count
    assert not await store.is_claimed(rk(other))
    assert (await store.get_approval(a.id)).status == "approved"  # type: ignore[union-attr]


async def test_concurrent_decisions_one_winner(store: Store) -> None:
    a = approval()
    await store.insert_approval(a)
    results = await asyncio.gather(
        *(
            store.append(
                make_draft(i),
                claim=rk(os.urandom(32)),
                approval=ApprovalTransition(a.id, "approved" if i % 2 else "declined", T0 + 5),
            )
            for i in range(8)
        )
    )
    winners = [r for r in results if r.record is not None]
    assert len(winners) == 1
    assert all(r.transition_failed for r in results if r.record is None)
    assert await store.audit_count() == 1


async def test_decide_after_deadline_and_expire_before_it_fail(store: Store) -> None:
    a = approval(expires_at=T0 + 60)
    await store.insert_approval(a)
    late = await store.append(make_draft(1), approval=ApprovalTransition(a.id, "approved", T0 + 60))
    assert late.transition_failed
    early = await store.append(make_draft(2), approval=ApprovalTransition(a.id, "expired", T0 + 59))
    assert early.transition_failed
    assert [r.id for r in await store.list_due_approvals(T0 + 59, 10)] == []
    assert [r.id for r in await store.list_due_approvals(T0 + 60, 10)] == [a.id]
    done = await store.append(make_draft(3), approval=ApprovalTransition(a.id, "expired", T0 + 61))
    assert done.record is not None
    assert (await store.get_approval(a.id)).status == "expired"  # type: ignore[union-attr]
    assert await store.list_due_approvals(T0 + 100, 10) == []
    assert await store.audit_count() == 1


async def test_registration_ceremony_is_one_use(store: Store) -> None:
    c = RegistrationChallenge(
        token_hash=os.urandom(32),
        sub="alice",
        challenge=os.urandom(32),
        options_json="{}",
        created_at=T0,
        expires_at=T0 + 600,
    )
    await store.insert_registration(c)
    assert await store.get_registration(c.token_hash, T0 + 1) == c
    assert await store.get_registration(c.token_hash, T0 + 600) is None  # expired
    used = await asyncio.gather(
        *(store.consume_registration(c.token_hash, T0 + 2) for _ in range(4))
    )
    assert [u is not None for u in used].count(True) == 1
    assert await store.get_registration(c.token_hash, T0 + 3) is None
    assert await store.consume_registration(os.urandom(32), T0) is None
