"""Wycheproof vectors through the exact primitive wrappers the audit code and webhooks use."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proof_messenger.audit.errors import DecryptionError
from proof_messenger.audit.primitives import (
    Aes256Gcm,
    aes256_gcm_decrypt,
    aes256_gcm_encrypt,
    hkdf_sha256,
    hmac_sha256,
    hmac_sha256_verify,
)
from tests.conftest import SHARED_VECTORS as VECTORS

WYCHEPROOF = VECTORS / "wycheproof"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WYCHEPROOF / name).read_text())
    return data


def _cases(name: str) -> list[Any]:
    data = _load(name)
    out = []
    for group in data["testGroups"]:
        meta = {k: v for k, v in group.items() if k != "tests"}
        for t in group["tests"]:
            out.append(pytest.param(meta, t, id=f"tc{t['tcId']}"))
    assert len(out) == data["numberOfTests"]
    return out


AES_GCM = _cases("aes_gcm_test.json")
HKDF = _cases("hkdf_sha256_test.json")
HMAC = _cases("hmac_sha256_test.json")


def _supported(group: dict[str, Any]) -> bool:
    # Our wrapper supports exactly AES-256, 96-bit nonce, 128-bit tag (see primitives.py).
    return bool(group["keySize"] == 256 and group["ivSize"] == 96 and group["tagSize"] == 128)


def test_aes_gcm_has_supported_cases() -> None:
    supported = [p for p in AES_GCM if _supported(p.values[0])]
    valid = [p for p in supported if p.values[1]["result"] == "valid"]
    assert len(supported) >= 60 and len(valid) >= 30


@pytest.mark.parametrize(("group", "tc"), AES_GCM)
def test_aes_gcm_wycheproof(group: dict[str, Any], tc: dict[str, Any]) -> None:
    key, iv, aad = bytes.fromhex(tc["key"]), bytes.fromhex(tc["iv"]), bytes.fromhex(tc["aad"])
    msg, ct_tag = bytes.fromhex(tc["msg"]), bytes.fromhex(tc["ct"] + tc["tag"])
    if not _supported(group):
        # Other key/nonce sizes are valid GCM but outside what we accept: must be refused.
        with pytest.raises(ValueError):
            aes256_gcm_encrypt(key, iv, aad, msg)
        with pytest.raises(ValueError):
            aes256_gcm_decrypt(key, iv, aad, ct_tag)
        return
    assert tc["result"] in ("valid", "invalid")  # no "acceptable" cases in this parameter set
    if tc["result"] == "valid":
        assert aes256_gcm_encrypt(key, iv, aad, msg) == ct_tag
        assert aes256_gcm_decrypt(key, iv, aad, ct_tag) == msg
    else:
        with pytest.raises(DecryptionError):
            aes256_gcm_decrypt(key, iv, aad, ct_tag)


def test_aes_gcm_rejects_short_ciphertext() -> None:
    with pytest.raises(DecryptionError):
        aes256_gcm_decrypt(b"\x00" * 32, b"\x00" * 12, b"", b"\x00" * 15)


@pytest.mark.parametrize(("group", "tc"), HKDF)
def test_hkdf_sha256_wycheproof(group: dict[str, Any], tc: dict[str, Any]) -> None:
    ikm, salt, info = bytes.fromhex(tc["ikm"]), bytes.fromhex(tc["salt"]), bytes.fromhex(tc["info"])
    assert tc["result"] in ("valid", "invalid")
    if tc["result"] == "valid":
        assert hkdf_sha256(ikm, salt, info, tc["size"]) == bytes.fromhex(tc["okm"])
    else:
        with pytest.raises(ValueError):
            hkdf_sha256(ikm, salt, info, tc["size"])


def test_hkdf_none_salt_equals_empty_salt() -> None:
    # RFC 5869 §2.2: an absent salt is HashLen zero bytes; HMAC pads short keys with zeros.
    assert hkdf_sha256(b"k" * 32, None, b"i", 32) == hkdf_sha256(b"k" * 32, b"", b"i", 32)
    assert hkdf_sha256(b"k" * 32, None, b"i", 32) == hkdf_sha256(b"k" * 32, b"\x00" * 32, b"i", 32)


@pytest.mark.parametrize(("group", "tc"), HMAC)
def test_hmac_sha256_wycheproof(group: dict[str, Any], tc: dict[str, Any]) -> None:
    key, msg, tag = bytes.fromhex(tc["key"]), bytes.fromhex(tc["msg"]), bytes.fromhex(tc["tag"])
    full = hmac_sha256(key, msg)
    assert len(full) == 32
    # Truncated-tag groups (tagSize 128) compare the prefix; our verifier itself only
    # accepts full 32-byte tags, which the last assertion pins down.
    matches = full[: group["tagSize"] // 8] == tag
    assert matches is (tc["result"] == "valid")
    assert hmac_sha256_verify(key, msg, tag) is (tc["result"] == "valid" and len(tag) == 32)


def test_prepared_aes_gcm_key_serves_many_messages() -> None:
    """One ``Aes256Gcm`` (what the keyring keeps per data key) gives what the module
    functions give, message after message, and refuses what they refuse."""
    key = bytes(range(32))
    prepared = Aes256Gcm(key)
    for i in range(3):
        nonce, aad, msg = bytes([i]) * 12, f"evt-{i}".encode(), b"context %d" % i
        blob = prepared.encrypt(nonce, aad, msg)
        assert blob == aes256_gcm_encrypt(key, nonce, aad, msg)
        assert prepared.decrypt(nonce, aad, blob) == msg
        with pytest.raises(DecryptionError):
            prepared.decrypt(nonce, b"other", blob)
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        Aes256Gcm(b"\x00" * 16)
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        prepared.encrypt(b"\x00" * 8, b"", b"x")
    with pytest.raises(DecryptionError):
        prepared.decrypt(b"\x00" * 12, b"", b"\x00" * 15)
