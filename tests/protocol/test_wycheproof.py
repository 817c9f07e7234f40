"""Project Wycheproof ECDSA P-256/SHA-256 vectors through our two verify primitives.

``verify_es256`` (raw r||s, the ``ES256`` proof signature) and ``verify_es256_der``
(DER, what WebAuthn authenticators produce). Every ``valid`` case must verify and every
``invalid`` case must not. Our DER verifier is strict: a BER form (long-form lengths,
padded integers, trailing bytes) is rejected, so any ``acceptable`` case - which in these
files are the BER-encoded ones - must be rejected too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proof_messenger.protocol.keys import (
    PublicKey,
    load_public_key_der,
    verify_es256,
    verify_es256_der,
)
from tests.conftest import load_json, shared_vector

Verify = Callable[[PublicKey, bytes, bytes], bool]


def _cases(filename: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    data = load_json(shared_vector("wycheproof", filename))
    groups = data["testGroups"]
    return [(f"tc{test['tcId']}", group, test) for group in groups for test in group["tests"]]


P1363 = _cases("ecdsa_secp256r1_sha256_p1363_test.json")
DER = _cases("ecdsa_secp256r1_sha256_test.json")


def _expect(test: dict[str, Any]) -> bool:
    # "acceptable" cases may go either way in Wycheproof; ours is a strict decoder.
    return bool(test["result"] == "valid")


def _run(verify: Verify, group: dict[str, Any], test: dict[str, Any]) -> bool:
    key = load_public_key_der(bytes.fromhex(group["publicKeyDer"]))
    return verify(key, bytes.fromhex(test["sig"]), bytes.fromhex(test["msg"]))


@pytest.mark.parametrize(("tc", "group", "test"), P1363, ids=[c[0] for c in P1363])
def test_p1363(tc: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    assert _run(verify_es256, group, test) is _expect(test), f"{tc}: {test['comment']}"


@pytest.mark.parametrize(("tc", "group", "test"), DER, ids=[c[0] for c in DER])
def test_der(tc: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    assert _run(verify_es256_der, group, test) is _expect(test), f"{tc}: {test['comment']}"


def test_files_are_the_full_sets() -> None:
    """Guard against a truncated vector file silently shrinking the suite."""
    assert len(P1363) >= 250 and len(DER) >= 480
    assert sum(t["result"] == "valid" for _, _, t in P1363) >= 150
    assert sum(t["result"] == "valid" for _, _, t in DER) >= 150


def test_ber_encoded_signatures_are_rejected() -> None:
    """The BER-flagged DER cases exist and every one of them is refused."""
    ber = [(g, t) for _, g, t in DER if "BerEncodedSignature" in t["flags"]]
    assert ber
    for group, test in ber:
        assert not _run(verify_es256_der, group, test), test["comment"]


def test_strict_der_rejects_ber_form_of_a_valid_signature() -> None:
    """Re-encode a valid signature with a long-form length: same (r, s), must fail."""
    _, group, test = next(c for c in DER if c[2]["result"] == "valid")
    sig = bytes.fromhex(test["sig"])
    assert _run(verify_es256_der, group, test)
    assert sig[0] == 0x30 and sig[1] < 0x80
    ber = b"\x30\x81" + sig[1:]
    key = load_public_key_der(bytes.fromhex(group["publicKeyDer"]))
    assert not verify_es256_der(key, ber, bytes.fromhex(test["msg"]))
    assert not verify_es256_der(key, sig + b"\x00", bytes.fromhex(test["msg"]))
