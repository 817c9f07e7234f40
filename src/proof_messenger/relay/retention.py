"""Pruning of replay claims that can never matter again.

Every accepted proof leaves one claim in the replay table (check 7), so without pruning
the table and its index grow by one row per accepted proof forever. A claim only matters
while its proof could still pass check 4, which runs first:

* ``replay`` (since migration 0006) is keyed by ``(exp, digest)``. A proof whose ``exp``
  is before now − ``clock_skew_seconds`` is refused as ``expired`` (``Verifier.
  check_claims``: ``exp < t − skew``) before its claim is read, and the clock only moves
  on, so a claim with such an ``exp`` can be deleted: the resent proof is still refused,
  as ``expired`` instead of ``replayed``.
* ``replay_v1`` (claims from before 0006) stored no ``exp``, only ``accepted_at``, the
  verification's clock reading A. Check 4 passed at A, so ``iat`` ≤ A + skew and ``exp``
  ≤ ``iat`` + ``max_lifetime`` ≤ A + skew + max_lifetime; such a proof is expired once
  now − skew > A + skew + max_lifetime, i.e. for A < now − (max_lifetime + 2 × skew).

Nothing else reads claims: the store reads one back (``event_id``) only for a key the
current batch is claiming, and no audit query, approval or CLI command joins the table.

``retention.replay_prune_margin_seconds`` (at least 60 s, default 600 s) is kept on top
of both cutoffs, because the arguments above assume one clock read at one moment:

* another instance whose clock is behind this one's still accepts proofs this instance
  already considers expired (and a stepped-back clock does the same in one process);
* a verification reads the clock before its claim commits. A replay checked at t₁ that
  commits at t₂ is protected only if the original claim is still there at t₂, so a claim
  may go only once no verification that read the clock more than a margin ago is still
  in flight (group-commit queue, a stalled database).

The margin costs at most ``margin`` seconds' worth of extra rows.

Every worker of every instance runs the task. Only stale rows are touched, so running it
twice is harmless; the first run after start waits a random part of the interval, each
later one the interval ±20 %, so workers started together drift apart; each run deletes
in chunks (``replay_prune_chunk_rows`` per transaction, a short pause between chunks), so
the write lock is never held for long; and once one worker has pruned, the others find
at most a few rows and stop after one short transaction.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from ..store.base import Store, StoreError
from .config import Settings
from .state import RelayState

__all__ = [
    "PruneReport",
    "ReplayCutoffs",
    "prune_once",
    "prune_replay",
    "replay_cutoffs",
    "run_pruner",
    "start",
]

log = structlog.get_logger("proof_messenger.retention")

#: Pause between two chunks of one run: writers waiting for the lock get it in between.
CHUNK_PAUSE_SECONDS = 0.01
#: Each later run waits the interval times a factor uniform in [1 − JITTER, 1 + JITTER].
JITTER = 0.2


@dataclass(frozen=True, slots=True)
class ReplayCutoffs:
    """What one pruning run deletes: ``replay`` claims with ``exp < before_exp``, and
    ``replay_v1`` claims accepted before ``legacy_before`` (seconds since the epoch)."""

    before_exp: int
    legacy_before: float


@dataclass(frozen=True, slots=True)
class PruneReport:
    deleted: int
    chunks: int
    seconds: float


def replay_cutoffs(settings: Settings, now: float) -> ReplayCutoffs:
    """The cutoffs at clock reading ``now`` (see the module docstring for why).

    ``exp`` is whole seconds and the verifier refuses ``exp < now − skew``; with the
    margin m, a deleted claim has ``exp`` ≤ ⌊now⌋ − skew − m − 1 < now − skew − m.
    """
    v = settings.verification
    margin = settings.retention.replay_prune_margin_seconds
    skew = v.clock_skew_seconds
    return ReplayCutoffs(
        before_exp=math.floor(now) - skew - margin,
        legacy_before=now - (v.max_lifetime_seconds + 2 * skew) - margin,
    )


async def prune_replay(
    store: Store,
    cutoffs: ReplayCutoffs,
    *,
    chunk_rows: int,
    pause: float = 0.0,
    on_chunk: Callable[[int], None] | None = None,
) -> PruneReport:
    """Delete every claim below ``cutoffs``, ``chunk_rows`` per store call, until a call
    deletes fewer (nothing left, or another pruner has the rest). ``on_chunk`` is told
    each call's count as it happens (metrics, progress), so rows deleted before an error
    are counted too. Store errors propagate."""
    started = time.perf_counter()
    deleted = chunks = 0
    while True:
        n = await store.prune_replay(cutoffs.before_exp, cutoffs.legacy_before, chunk_rows)
        deleted += n
        chunks += 1
        if on_chunk is not None:
            on_chunk(n)
        if n < chunk_rows:
            return PruneReport(deleted, chunks, time.perf_counter() - started)
        await asyncio.sleep(pause)  # let other writers (and the event loop) in


async def prune_once(state: RelayState) -> PruneReport | None:
    """One pruning run of the relay; never raises (except cancellation).

    A failure is logged (``replay.prune_failed``) and counted, and the next run retries:
    leaving stale claims for one more interval is harmless, killing the worker is not.
    """
    m = state.metrics
    try:
        cutoffs = replay_cutoffs(state.settings, state.clock())
        report = await prune_replay(
            state.store,
            cutoffs,
            chunk_rows=state.settings.retention.replay_prune_chunk_rows,
            pause=CHUNK_PAUSE_SECONDS,
            on_chunk=m.count_replay_pruned,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        m.replay_prune_failures.inc()
        log.warning(
            "replay.prune_failed",
            error=str(exc)[:300],
            error_type=type(exc).__name__,
            # a store outage is expected now and then; anything else is a bug: show where
            exc_info=not isinstance(exc, StoreError),
        )
        return None
    if report.deleted:
        log.info(
            "replay.pruned",
            rows=report.deleted,
            chunks=report.chunks,
            duration_ms=round(report.seconds * 1000, 1),
            before_exp=cutoffs.before_exp,
        )
    return report


async def run_pruner(
    state: RelayState,
    *,
    rng: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Prune every ``retention.replay_prune_interval_seconds`` (jittered) until cancelled."""
    interval = state.settings.retention.replay_prune_interval_seconds
    delay = interval * rng()  # workers and instances started together spread out at once
    while True:
        await sleep(delay)
        await prune_once(state)
        delay = interval * (1 - JITTER + 2 * JITTER * rng())


def start(state: RelayState) -> None:
    """Start the background task unless ``replay_prune_interval_seconds`` is 0."""
    if state.settings.retention.replay_prune_interval_seconds <= 0:
        log.info("replay.prune_disabled")
        return
    state.background.append(
        asyncio.get_running_loop().create_task(run_pruner(state), name="replay-prune")
    )
