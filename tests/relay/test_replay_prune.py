"""Replay-claim pruning in the relay: the cutoffs, a pruned proof still refused, the task.

The relay runs in-process (``create_app`` over ``httpx.ASGITransport``) with an injected
clock, on a fresh SQLite file and a fresh PostgreSQL database (``target``). The pruning
runs are started by hand (``prune_once``) where a test needs to know when they happen,
and by the background task (a short injected interval) where the task itself is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from proof_messenger.protocol import (
    Proof,
    create_proof,
)
from proof_messenger.relay import retention
from proof_messenger.relay.app import create_app
from proof_messenger.relay.config import (
    ConfigError,
    RetentionSettings,
    Settings,
    VerificationSettings,
    load_settings,
)
from proof_messenger.relay.retention import prune_once, replay_cutoffs
from proof_messenger.relay.state import RelayState
from proof_messenger.store.base import StoreUnavailable
from tests.store.conftest import Target

from .conftest import Clock, insert_api_key, register_key

AUD = "payments.example.com"
T0 = 1_764_000_000.0
SKEW = 60
MARGIN = 120
TTL = 60


@dataclass
class Relay:
    client: httpx.AsyncClient
    state: RelayState
    clock: Clock
    db: Target

    async def register(self, sub: str) -> Any:
        return await register_key(self.client, sub)

    async def verify(self, proof: Proof) -> httpx.Response:
        return await self.client.post(
            "/verify", content=proof.to_json(), headers={"content-type": "application/json"}
        )

    async def claims(self) -> int:
        ((n,),) = await self.db.fetch("SELECT count(*) FROM replay")
        return int(n)


def _settings(tmp_path: Path, target: Target, interval: float) -> Settings:
    url = f"sqlite:///{target.url}" if target.kind == "sqlite" else target.url
    return replace(
        Settings(audience=AUD, master_key_file=str(tmp_path / "master.key")),
        database=replace(Settings().database, url=url),
        verification=VerificationSettings(clock_skew_seconds=SKEW, max_lifetime_seconds=300),
        retention=RetentionSettings(
            replay_prune_interval_seconds=interval,
            replay_prune_margin_seconds=MARGIN,
            replay_prune_chunk_rows=2,
        ),
    )


@contextlib.asynccontextmanager
async def _relay(settings: Settings, target: Target) -> AsyncIterator[Relay]:
    clock = Clock(T0)
    application = create_app(settings, clock=clock, extensions=[])
    async with application.router.lifespan_context(application):
        state: RelayState = application.state.relay
        full = await insert_api_key(state, ("verify", "keys:write", "audit:read"), T0)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="http://relay.test",
            headers={"authorization": f"Bearer {full}"},
        ) as client:
            yield Relay(client, state, clock, target)


@pytest.fixture
async def relay(tmp_path: Path, target: Target) -> AsyncIterator[Relay]:
    """The relay with the background task disabled: the tests prune by hand."""
    async with _relay(_settings(tmp_path, target, interval=0), target) as r:
        yield r


def _pruned_total() -> float:
    return REGISTRY.get_sample_value("proof_messenger_replay_pruned_rows_total") or 0.0


def _failures_total() -> float:
    return REGISTRY.get_sample_value("proof_messenger_replay_prune_failures_total") or 0.0


# --- the cutoffs ------------------------------------------------------------------------


@pytest.mark.parametrize("now", [T0, T0 + 0.25, T0 + 0.999999, T0 - 0.5])
def test_cutoffs_are_the_last_second_the_verifier_calls_expired(now: float) -> None:
    """A deleted claim (exp < before_exp) has exp < now − skew − margin, so check 4
    refuses its proof at ``now`` and at any time up to ``margin`` earlier; and the cutoff
    is not more conservative than that by a whole second."""
    s = Settings(retention=RetentionSettings(replay_prune_margin_seconds=MARGIN))
    cut = replay_cutoffs(s, now)
    newest_deleted = cut.before_exp - 1
    assert newest_deleted < now - SKEW - MARGIN
    assert cut.before_exp >= now - SKEW - MARGIN - 1
    assert cut.before_exp == math.floor(now) - SKEW - MARGIN
    # replay_v1: accepted at A, check 4 passed, so exp <= A + skew + max_lifetime.
    assert cut.legacy_before + SKEW + 300 == pytest.approx(now - SKEW - MARGIN)
    assert cut.legacy_before == now - (300 + 2 * SKEW) - MARGIN


def test_retention_settings_are_validated(tmp_path: Path) -> None:
    def load(section: dict[str, Any]) -> Settings:
        path = tmp_path / "relay.yaml"
        path.write_text(yaml.safe_dump({"retention": section}))
        return load_settings(path, environ={})

    assert load({}).retention == RetentionSettings()
    assert RetentionSettings().replay_prune_interval_seconds == 300
    assert load({"replay_prune_interval_seconds": 0}).retention.replay_prune_interval_seconds == 0
    for bad in (
        {"replay_prune_interval_seconds": 0.5},
        {"replay_prune_interval_seconds": -1},
        {"replay_prune_margin_seconds": 59},
        {"replay_prune_margin_seconds": 0},
        {"replay_prune_chunk_rows": 0},
        {"replay_prune_chunk_rows": 100_001},
    ):
        with pytest.raises(ConfigError, match=f"retention.{next(iter(bad))}"):
            load(bad)


# --- a pruned proof is still refused ----------------------------------------------------


async def test_pruned_claim_is_refused_as_expired(relay: Relay) -> None:
    key = await relay.register("alice")
    proof = create_proof(key, {"type": "t"}, aud=AUD, sub="alice", ttl=TTL, now=T0)
    exp = int(T0) + TTL
    assert (await relay.verify(proof)).status_code == 200
    assert (await relay.verify(proof)).json()["code"] == "replayed"
    later = create_proof(key, {"type": "u"}, aud=AUD, sub="alice", ttl=300, now=T0 + 60)
    assert (await relay.verify(later)).status_code == 200
    assert await relay.claims() == 2

    # The last moment the claim must stay: exp == floor(now) - skew - margin.
    relay.clock.now = exp + SKEW + MARGIN + 0.999
    before = _pruned_total()
    report = await prune_once(relay.state)
    assert report is not None and report.deleted == 0
    assert await relay.claims() == 2

    relay.clock.now = exp + SKEW + MARGIN + 1
    report = await prune_once(relay.state)
    assert report is not None and report.deleted == 1
    assert _pruned_total() - before == 1
    assert await relay.claims() == 1

    # Resent now, or with a clock up to the margin behind: expired, never accepted again.
    for now in (relay.clock.now, relay.clock.now - MARGIN, relay.clock.now + 3600):
        relay.clock.now = now
        r = await relay.verify(proof)
        assert r.status_code == 422 and r.json()["code"] == "expired", (now, r.text)
    # The proof whose claim was kept is still refused as a replay while it is unexpired.
    relay.clock.now = T0 + 60 + 300
    r = await relay.verify(later)
    assert r.status_code == 409 and r.json()["code"] == "replayed"


async def test_a_run_deletes_a_backlog_in_chunks(relay: Relay) -> None:
    key = await relay.register("bob")
    for i in range(5):
        proof = create_proof(key, {"type": "t", "i": i}, aud=AUD, sub="bob", ttl=TTL, now=T0)
        assert (await relay.verify(proof)).status_code == 200
    relay.clock.now = T0 + TTL + SKEW + MARGIN + 1
    with capture_logs() as logs:
        report = await prune_once(relay.state)
    assert report is not None and (report.deleted, report.chunks) == (5, 3)  # 2 + 2 + 1
    assert await relay.claims() == 0
    (line,) = [e for e in logs if e["event"] == "replay.pruned"]
    assert line["log_level"] == "info" and line["rows"] == 5 and "duration_ms" in line
    with capture_logs() as logs:  # nothing left: no line
        report = await prune_once(relay.state)
    assert report is not None and report.deleted == 0
    assert not [e for e in logs if e["event"] == "replay.pruned"]


# --- the background task ----------------------------------------------------------------


async def test_background_task_prunes_and_survives_errors(
    tmp_path: Path, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _relay(_settings(tmp_path, target, interval=0.05), target) as relay:
        tasks = [t for t in relay.state.background if t.get_name() == "replay-prune"]
        assert len(tasks) == 1
        key = await relay.register("carol")
        for i in range(3):
            proof = create_proof(key, {"type": "t", "i": i}, aud=AUD, sub="carol", ttl=TTL, now=T0)
            assert (await relay.verify(proof)).status_code == 200

        store = relay.state.store
        real = store.prune_replay
        calls: list[str] = []

        async def flaky(before_exp: int, legacy_before: float, limit: int) -> int:
            calls.append("call")
            if len(calls) == 1:
                raise StoreUnavailable("database is down")
            if len(calls) == 2:
                raise RuntimeError("a bug")
            return await real(before_exp, legacy_before, limit)

        monkeypatch.setattr(store, "prune_replay", flaky)
        failures = _failures_total()
        with capture_logs() as logs:
            relay.clock.now = T0 + TTL + SKEW + MARGIN + 1  # now the claims are stale
            for _ in range(200):
                if await relay.claims() == 0:
                    break
                await asyncio.sleep(0.02)
        assert await relay.claims() == 0
        assert not tasks[0].done()  # survived both errors
        assert _failures_total() - failures == 2
        failed = [e for e in logs if e["event"] == "replay.prune_failed"]
        assert [(e["log_level"], e["error_type"]) for e in failed] == [
            ("warning", "StoreUnavailable"),
            ("warning", "RuntimeError"),
        ]
        assert any(e["event"] == "replay.pruned" and e["rows"] == 3 for e in logs)
    assert tasks[0].cancelled()  # stopped with the relay


async def test_interval_zero_starts_no_task(relay: Relay) -> None:
    assert not [t for t in relay.state.background if t.get_name() == "replay-prune"]


async def test_runs_are_jittered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker waits interval × rng() first, then interval × [0.8, 1.2] each time."""
    delays: list[float] = []
    runs: list[RelayState] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 3:
            raise asyncio.CancelledError

    async def fake_prune(state: RelayState) -> None:
        runs.append(state)

    monkeypatch.setattr(retention, "prune_once", fake_prune)
    state: Any = type("State", (), {})()
    state.settings = Settings(retention=RetentionSettings(replay_prune_interval_seconds=100))
    rolls = iter([0.25, 0.0, 1.0])
    with pytest.raises(asyncio.CancelledError):
        await retention.run_pruner(state, rng=lambda: next(rolls), sleep=fake_sleep)
    assert delays == pytest.approx([25.0, 80.0, 120.0])
    assert runs == [state, state]
