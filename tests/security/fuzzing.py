"""Fuzzing helpers: the seed corpus (the committed protocol vectors), byte-level
mutations, and a per-target count of inputs actually run (printed at the end of the
session so docs/reliability.md can quote measured figures).

Example counts are bounded for CI and scale with ``PM_FUZZ_EXAMPLES``; the longer run
is ``PM_FUZZ_EXAMPLES=20000 HYPOTHESIS_PROFILE=thorough pytest tests/security -k fuzz``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from proof_messenger.protocol import errors as protocol_errors

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "protocol-v1.json"

#: Inputs run per fuzz target (hypothesis examples); CI default keeps the suite fast.
EXAMPLES = int(os.environ.get("PM_FUZZ_EXAMPLES", "400"))
#: Inputs actually executed, per target (read by the terminal summary in conftest).
EXECUTED: Counter[str] = Counter()

PROTOCOL_CODES = frozenset(
    cls.code
    for cls in vars(protocol_errors).values()
    if isinstance(cls, type)
    and issubclass(cls, protocol_errors.ProofError)
    and isinstance(getattr(cls, "code", None), str)
)
#: Codes of the HTTP layer (auth, limits, routing, media type).
HTTP_CODES = frozenset(
    {
        "malformed_request",
        "invalid_request",
        "payload_too_large",
        "unsupported_media_type",
        "request_timeout",
        "batch_too_large",
        "not_found",
        "method_not_allowed",
    }
)


def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


def seed_corpus() -> dict[str, list[bytes]]:
    """Every envelope (JSON and CBOR) and intent in the committed vectors."""
    data = vectors()
    cases = [*data["positive"], *data["negative"]]
    envelopes_json = [json.dumps(c["envelope_json"]).encode() for c in cases]
    envelopes_cbor = [bytes.fromhex(c["envelope_cbor_hex"]) for c in data["positive"]]
    intents = [bytes.fromhex(c["intent_cbor_hex"]) for c in cases if c.get("intent_cbor_hex")]
    return {"json": envelopes_json, "cbor": envelopes_cbor, "intent": intents}


def _apply(seed: bytes, edits: list[tuple[int, int, int]], other: bytes) -> bytes:
    data = bytearray(seed)
    for kind, position, value in edits:
        at = position % (len(data) + 1)
        if kind == 0 and data:  # overwrite a byte
            data[at % len(data)] = value
        elif kind == 1:  # insert a byte
            data.insert(at, value)
        elif kind == 2 and data:  # delete a run
            del data[at : at + 1 + value % 8]
        elif kind == 3:  # truncate
            del data[at:]
        elif kind == 4 and data:  # flip one bit
            data[at % len(data)] ^= 1 << (value % 8)
        elif kind == 5:  # splice in a slice of another seed
            start = value % (len(other) + 1)
            data[at:at] = other[start : start + 16]
        elif kind == 6 and data:  # interesting bytes: CBOR heads, JSON syntax
            data[at % len(data)] = (0x00, 0x17, 0x18, 0x1F, 0x5F, 0x7F, 0x9F, 0xBF, 0xFF, 0x22)[
                value % 10
            ]
    return bytes(data)


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed, unchanged or with 1-6 edits (overwrite, insert, delete, truncate, flip, splice)."""
    edit = st.tuples(st.integers(0, 6), st.integers(0, 1 << 16), st.integers(0, 255))
    return st.builds(
        _apply,
        st.sampled_from(seeds),
        st.lists(edit, min_size=0, max_size=6),
        st.sampled_from(seeds),
    )


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "", "A" * 500, "ES256", "webauthn.ES256"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


#: Text that has broken parsers and stores before: surrogates, NUL, controls, huge, non-BMP.
adversarial_text = st.sampled_from(
    ["\ud800", "\udfff", "a\x00b", "\n", "\u202e", "é", "e\u0301", "\U0001f600", "A" * 5000]
) | st.text(st.characters(codec=None), max_size=50)


def mutated_envelope(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Structure-aware: replace, drop or add envelope fields with arbitrary JSON values."""
    names = [*base, "extra", "authenticator_data", "client_data_json"]
    values = json_values | adversarial_text
    return st.builds(
        lambda drops, sets: {
            **{k: v for k, v in base.items() if k not in drops},
            **sets,
        },
        st.sets(st.sampled_from(list(base))),
        st.dictionaries(st.sampled_from(names), values, min_size=1, max_size=3),
    )
