"""The service's fast event ids and timestamps keep the exact formats of the stdlib ones."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime

from proof_messenger.relay.service import iso, new_event_id, new_event_ids


def _stdlib_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_iso_is_datetime_isoformat_with_z() -> None:
    rng = random.Random(7)
    edges = [0.0, 1.9995, 1.9999995, 1_700_000_000.0005, 1_700_000_000.9999996, 1e9 + 0.9995]
    samples = edges + [rng.uniform(0, 4e9) for _ in range(20_000)]
    samples += [rng.randrange(0, 4 * 10**15) / 1e6 for _ in range(20_000)]
    for ts in samples:
        assert iso(ts) == _stdlib_iso(ts), ts


def test_event_ids_are_canonical_time_ordered_uuid7() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(200)] + new_event_ids(200)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text  # lowercase 8-4-4-4-12
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= u.int >> 80 <= after
    assert new_event_ids(0) == []
