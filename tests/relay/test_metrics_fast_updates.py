"""The relay's direct metric updates leave exactly what inc() and observe() leave."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram

from proof_messenger.relay.metrics import (
    _LATENCY_BUCKETS,
    _fast_inc,
    _fast_observe,
    observe_many,
)

AMOUNTS = [0.0, 0.0004, 0.001, 0.0010001, 0.0025, 0.02, 0.3, 1, 2.5, 2.6, 99.0, -0.5]
AMOUNTS += [math.inf, math.nan]


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], str | float]]:
    """Every sample but ``_created``, NaN as the string "nan" (NaN != NaN)."""
    out: list[tuple[str, dict[str, str], str | float]] = []
    for metric in registry.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                value = "nan" if math.isnan(s.value) else s.value
                out.append((s.name, s.labels, value))
    return out


def test_fast_observe_matches_observe() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = _fast_observe(Histogram("h", "h", buckets=_LATENCY_BUCKETS, registry=ours))
    plain = Histogram("h", "h", buckets=_LATENCY_BUCKETS, registry=theirs)
    for amount in AMOUNTS:
        fast(amount)
        plain.observe(amount)
        assert _samples(ours) == _samples(theirs), amount


def test_observe_many_matches_observe_count_times() -> None:
    """/verify/batch records one latency per proof in one update per series."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    many = Histogram("h", "h", buckets=_LATENCY_BUCKETS, registry=ours)
    plain = Histogram("h", "h", buckets=_LATENCY_BUCKETS, registry=theirs)
    for count, amount in enumerate(AMOUNTS):
        observe_many(many, amount, count)
        for _ in range(count):
            plain.observe(amount)
        got, want = _samples(ours), _samples(theirs)
        # Buckets and count exactly; the sum is value x count against count additions,
        # which may differ in the last bits of a float.
        assert [x for x in got if x[0] != "h_sum"] == [x for x in want if x[0] != "h_sum"]
        (got_sum,) = [x[2] for x in got if x[0] == "h_sum"]
        (want_sum,) = [x[2] for x in want if x[0] == "h_sum"]
        assert got_sum == want_sum or math.isclose(
            float(got_sum), float(want_sum), rel_tol=1e-12
        ), amount


def test_fast_inc_matches_inc_and_keeps_the_parent_check() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast_parent = Counter("c", "c", ["route", "status"], registry=ours)
    plain_parent = Counter("c", "c", ["route", "status"], registry=theirs)
    fast = _fast_inc(fast_parent.labels("/verify", "200"))
    for _ in range(3):
        fast(1)
        plain_parent.labels("/verify", "200").inc()
    assert _samples(ours) == _samples(theirs)
    # A labelled parent has no value of its own: the public inc() and its error.
    unlabelled = _fast_inc(fast_parent)
    try:
        unlabelled(1)
    except ValueError as exc:
        assert "missing label values" in str(exc)
    else:
        raise AssertionError("a labelled parent was counted")
