"""Prometheus metrics. With several worker processes, prometheus_client's
multiprocess mode aggregates them (the serve command sets PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from prometheus_client.values import MutexValue

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "metrics", "observe_many", "render"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 2.5)
_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.verifications = Counter(
            "proof_messenger_verifications_total",
            "Proof verifications by outcome and error code.",
            ["outcome", "code"],
        )
        self.verify_latency = Histogram(
            "proof_messenger_verify_duration_seconds",
            "Time to verify one proof, audit write included.",
            buckets=_LATENCY_BUCKETS,
        )
        self.audit_write_latency = Histogram(
            "proof_messenger_audit_write_duration_seconds",
            "Time from audit append to commit (group commit included).",
            buckets=_LATENCY_BUCKETS,
        )
        # The group commit (docs/deployment.md, "The audit write lock"): how many rows
        # each durable commit carries, how long it waits for its turn and how long it
        # holds it. All commits of the chain take turns (SQLite: one write lock for all
        # workers; PostgreSQL: the chain head row for all instances), so the sum of the
        # durations per second is the share of time the turn is busy: near 1, more
        # workers do not help.
        self.commit_rows = Histogram(
            "proof_messenger_audit_commit_rows",
            "Appends per group commit (one durable transaction): audit rows, and replay "
            "claims that lost, which write nothing.",
            buckets=_ROWS_BUCKETS,
        )
        self.commit_wait = Histogram(
            "proof_messenger_audit_commit_wait_seconds",
            "Time a group commit waited for its write turn (the SQLite write lock or the "
            "PostgreSQL chain head, held by another worker's or instance's commit).",
            buckets=_COMMIT_BUCKETS,
        )
        self.commit_duration = Histogram(
            "proof_messenger_audit_commit_duration_seconds",
            "Time a group commit held its write turn: from taking its rows to COMMIT.",
            buckets=_COMMIT_BUCKETS,
        )
        self.requests = Counter(
            "proof_messenger_http_requests_total",
            "HTTP requests by route and status.",
            ["route", "status"],
        )
        self.in_flight = Gauge(
            "proof_messenger_http_in_flight_requests",
            "Requests being handled right now.",
            multiprocess_mode="livesum",
        )
        self.replay_pruned = Counter(
            "proof_messenger_replay_pruned_rows_total",
            "Replay claims deleted because their proofs can no longer pass the expiry check.",
        )
        self.replay_prune_failures = Counter(
            "proof_messenger_replay_prune_failures_total",
            "Replay pruning runs that failed (retried at the next interval).",
        )
        #: Requests in flight in this process. With one process (values kept in memory)
        #: the gauge reads this count when scraped, which is exactly what inc() at the
        #: start and dec() at the end of each request would show, without two locked
        #: updates per request; in multiprocess mode the gauge is written per request as
        #: before (other processes' scrapes read it from its file).
        self._in_flight = 0
        self._in_flight_at_scrape = isinstance(getattr(self.in_flight, "_value", None), MutexValue)
        if self._in_flight_at_scrape:
            self.in_flight.set_function(lambda: self._in_flight)
        # Labelled children, looked up once: ``labels()`` validates and locks on every call,
        # and /verify updates two labelled counters per request. Label values are bounded
        # (routes, HTTP statuses, protocol error codes), so these dicts stay small.
        # The dicts hold each child's ``inc`` (see _fast_inc).
        self._verification_children: dict[tuple[str, str], Callable[[float], None]] = {}
        self._request_children: dict[tuple[str, int], Callable[[float], None]] = {}
        self.observe_verify = _fast_observe(self.verify_latency)
        self.observe_audit_write = _fast_observe(self.audit_write_latency)
        self._observe_commit_rows = _fast_observe(self.commit_rows)
        self._observe_commit_wait = _fast_observe(self.commit_wait)
        self._observe_commit_duration = _fast_observe(self.commit_duration)

    def observe_commit(self, rows: int, wait: float, duration: float) -> None:
        """One group commit (``store.CommitObserver``)."""
        self._observe_commit_rows(rows)
        self._observe_commit_wait(wait)
        self._observe_commit_duration(duration)

    def request_started(self) -> None:
        if self._in_flight_at_scrape:
            self._in_flight += 1
        else:
            self.in_flight.inc()

    def request_finished(self) -> None:
        if self._in_flight_at_scrape:
            self._in_flight -= 1
        else:
            self.in_flight.dec()

    def count_verification(self, accepted: bool, code: str) -> None:
        key = ("accepted" if accepted else "rejected", code)
        inc = self._verification_children.get(key)
        if inc is None:
            inc = self._verification_children[key] = _fast_inc(self.verifications.labels(*key))
        inc(1)

    def count_replay_pruned(self, rows: int) -> None:
        if rows:
            self.replay_pruned.inc(rows)

    def count_request(self, route: str, status: int) -> None:
        key = (route, status)
        inc = self._request_children.get(key)
        if inc is None:
            inc = self._request_children[key] = _fast_inc(self.requests.labels(route, str(status)))
        inc(1)


# Every request updates two counters and two histograms. prometheus_client's inc() and
# observe() first check, in two Python calls, that the metric is not a labelled parent
# (these are children or unlabelled), that the amount is not negative (1, or a
# duration) and whether an exemplar was given (never); then they update the value
# objects. The two functions below do those same value updates directly, and fall back
# to the public methods if prometheus_client's internals ever change shape.


def _fast_inc(counter: Any) -> Callable[[float], None]:
    """``counter.inc`` for a (child) counter, without the checks that cannot fail here."""
    value = getattr(counter, "_value", None)
    inc = getattr(value, "inc", None)
    if inc is None or (counter._labelnames and not counter._labelvalues):
        public: Callable[[float], None] = counter.inc
        return public
    fast: Callable[[float], None] = inc
    return fast


def _histogram_values(histogram: Histogram) -> tuple[Any, list[Any], list[float]] | None:
    """The value objects ``observe`` updates: the sum and one per bucket, with the buckets'
    upper bounds (ascending, the last +Inf); None for a labelled parent, or if
    prometheus_client's internals ever change shape (callers then use the public method).
    """
    total = getattr(histogram, "_sum", None)
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if total is None or buckets is None or bounds is None or histogram._labelnames:
        return None
    return total, buckets, bounds


def _bucket_index(upper: list[float], amount: float) -> int | None:
    """The first bucket whose upper bound is >= ``amount`` (what observe's loop finds); None
    for a NaN amount, which goes in no bucket, as there."""
    i = bisect_left(upper, amount)
    return i if i < len(upper) and amount <= upper[i] else None


def _fast_observe(histogram: Histogram) -> Callable[[float], None]:
    """``histogram.observe`` (no exemplar) for an unlabelled histogram: the sum, then the
    bucket of the amount."""
    values = _histogram_values(histogram)
    if values is None:
        return histogram.observe
    total, buckets, bounds = values
    sum_inc = total.inc
    bucket_incs = [bucket.inc for bucket in buckets]
    upper = list(bounds)

    def observe(amount: float) -> None:
        sum_inc(amount)
        i = _bucket_index(upper, amount)
        if i is not None:
            bucket_incs[i](1)

    return observe


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of the same ``value``: what ``observe`` does ``count`` times
    (sum += value each time, one bucket += 1 each time), in one update per series. Falls
    back to the loop if prometheus_client's internals ever change shape."""
    values = _histogram_values(histogram)
    if values is None or count <= 0:
        for _ in range(count):
            histogram.observe(value)
        return
    total, buckets, bounds = values
    total.inc(value * count)
    i = _bucket_index(bounds, value)
    if i is not None:
        buckets[i].inc(count)


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process-wide metrics (collectors register once per process)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
