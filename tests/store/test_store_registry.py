"""Migrations, key registry and API keys on both backends."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from proof_messenger.store import ApiKeyRecord, DuplicateKey, KeyRecord
from proof_messenger.store._common import load_migrations

from .conftest import T0, Target


def key(kid: str, sub: str = "alice", **kw: object) -> KeyRecord:
    return KeyRecord(
        kid=kid,
        sub=sub,
        alg="webauthn.ES256",
        public_key=b"\x30\x59" + kid.encode(),
        created_at=T0 + 0.123456789,
        label="laptop",
        transports=("internal", "hybrid"),
        attestation_format="none",
        **kw,  # type: ignore[arg-type]
    )


async def test_migrate_is_idempotent_and_gates_readiness(target: Target) -> None:
    store = await target.store(migrate=False)
    assert await store.is_ready() is False
    names = [m.name for m in load_migrations(target.kind)]
    assert names[0] == "0001_initial"
    assert await store.migrate() == names
    assert await store.is_ready() is True
    assert await store.migrate() == []
    assert await store.is_ready() is True
    rows = await target.fetch("SELECT name FROM schema_migrations")
    assert sorted(rows) == [(n,) for n in names]


async def test_two_instances_migrating_at_once_apply_once(target: Target) -> None:
    a = await target.store(migrate=False)
    b = await target.store(migrate=False)
    applied = await asyncio.gather(a.migrate(), b.migrate())
    names = [m.name for m in load_migrations(target.kind)]
    assert sorted(applied, key=len) == [[], names]
    assert await a.is_ready() and await b.is_ready()


async def test_key_insert_get_list_revoke(target: Target) -> None:
    store = await target.store()
    # Listed in registration order (created_at, then kid), not by kid.
    first = dataclasses.replace(key("k-b"), created_at=T0 - 1)
    second, bobs = key("k-a"), key("k-c", sub="bob")
    for k in (second, bobs, first):
        await store.insert_key(k)
    assert await store.get_key("k-b") == first
    assert await store.get_key("nope") is None
    assert await store.list_keys("alice") == [first, second]
    assert await store.list_keys("bob") == [bobs]
    assert await store.list_keys() == [first, second, bobs]
    assert await store.list_keys("' OR 1=1 --") == []

    revoked = await store.revoke_key("k-a", "lost device", T0 + 5)
    assert revoked is not None
    assert (revoked.status, revoked.revoke_reason, revoked.revoked_at) == (
        "revoked",
        "lost device",
        T0 + 5,
    )
    assert dataclasses.replace(revoked, status="active", revoked_at=None, revoke_reason=None) == (
        second
    )
    assert await store.get_key("k-a") == revoked
    # A second revocation keeps the first reason and time.
    again = await store.revoke_key("k-a", "other", T0 + 9)
    assert again == revoked
    assert await store.revoke_key("nope", "x", T0) is None
    assert await store.get_key("k-b") == first  # others untouched


async def test_duplicate_key_raises(target: Target) -> None:
    store = await target.store()
    await store.insert_key(key("k1"))
    with pytest.raises(DuplicateKey):
        await store.insert_key(key("k1", sub="mallory"))
    assert (await store.get_key("k1")).sub == "alice"  # type: ignore[union-attr]


async def test_advance_sign_count_is_compare_and_set(target: Target) -> None:
    store = await target.store()
    await store.insert_key(key("k1"))
    assert await store.advance_sign_count("k1", 0, 5) is True
    assert await store.advance_sign_count("k1", 0, 6) is False  # another request moved it
    assert await store.advance_sign_count("k1", 5, 7) is True
    assert (await store.get_key("k1")).sign_count == 7  # type: ignore[union-attr]
    assert await store.advance_sign_count("missing", 0, 1) is False
    # Concurrent CAS from the same observed value: exactly one wins.
    wins = await asyncio.gather(*(store.advance_sign_count("k1", 7, 8 + i) for i in range(10)))
    assert sum(wins) == 1


async def test_api_keys_crud(target: Target) -> None:
    store = await target.store()
    a = ApiKeyRecord("pk_a", "ops", b"\x01" * 32, ("audit:read", "keys:write"), T0)
    b = ApiKeyRecord("pk_b", "ci", b"\x02" * 32, (), T0 + 1)
    await store.insert_api_key(a)
    await store.insert_api_key(b)
    with pytest.raises(DuplicateKey):
        await store.insert_api_key(a)
    assert await store.get_api_key("pk_a") == a
    assert await store.get_api_key("pk_x") is None
    assert await store.list_api_keys() == [a, b]
    assert await store.revoke_api_key("pk_a", T0 + 10) is True
    assert await store.revoke_api_key("pk_a", T0 + 11) is False
    assert await store.revoke_api_key("pk_x", T0 + 11) is False
    got = await store.get_api_key("pk_a")
    assert got is not None and got.revoked_at == T0 + 10


# --- policy engine (issue 6): partial N-of-M approvals --------------------------------------
async def test_policy_approvals_count_each_subject_once(target: Target) -> None:
    from proof_messenger.store.base import PolicyApproval

    store = await target.store()
    tx = "t" * 43

    def approval(sub: str, proof: str, at: float) -> PolicyApproval:
        return PolicyApproval(tx, sub, proof, "wire-over-limit", ("treasury",), at)

    assert await store.add_policy_approval(approval("alice", "p1", T0)) is True
    assert await store.add_policy_approval(approval("alice", "p2", T0 + 1)) is False
    # Two instances racing for the same subject: exactly one row wins.
    other = await target.store()
    results = await asyncio.gather(
        store.add_policy_approval(approval("bob", "p3", T0 + 2)),
        other.add_policy_approval(approval("bob", "p4", T0 + 2)),
    )
    assert sorted(results) == [False, True]
    rows = await other.list_policy_approvals(tx)
    assert [(r.sub, r.roles, r.rule) for r in rows] == [
        ("alice", ("treasury",), "wire-over-limit"),
        ("bob", ("treasury",), "wire-over-limit"),
    ]
    assert rows[0].proof_id == "p1" and rows[0].at == T0
    assert await store.list_policy_approvals("u" * 43) == []


async def test_policy_approval_commits_with_the_audit_row_or_not_at_all(target: Target) -> None:
    from proof_messenger.store.base import PolicyApproval

    from .conftest import make_draft, rk

    store = await target.store()
    tx = "a" * 43

    def approval(sub: str, proof: str) -> PolicyApproval:
        return PolicyApproval(tx, sub, proof, "wire-over-limit", ("treasury",), T0)

    digest = b"\x01" * 32
    first = await store.append(
        make_draft(1), claim=rk(digest), policy_approval=approval("alice", "p1")
    )
    assert first.record is not None
    # A replay of the same proof writes neither an audit row nor an approval.
    replay = await store.append(
        make_draft(2), claim=rk(digest), policy_approval=approval("bob", "p2")
    )
    assert replay.replayed and replay.record is None
    # Concurrent approvals in one group-commit batch: distinct subjects both count,
    # a second approval by the same subject is accepted but not counted again.
    results = await asyncio.gather(
        store.append(
            make_draft(3), claim=rk(b"\x03" * 32), policy_approval=approval("carol", "p3")
        ),
        store.append(
            make_draft(4), claim=rk(b"\x04" * 32), policy_approval=approval("alice", "p4")
        ),
    )
    assert all(r.record is not None for r in results)
    rows = await store.list_policy_approvals(tx)
    assert sorted((r.sub, r.proof_id) for r in rows) == [("alice", "p1"), ("carol", "p3")]
