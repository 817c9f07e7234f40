"""Keyring: round trips, AAD binding, tampering, rotation, key file parsing and permissions."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proof_messenger.audit.crypto import (
    DATA_KEY_INFO,
    DecryptionError,
    Keyring,
    MasterKey,
    MasterKeyError,
    format_master_key_line,
    generate_master_key_file,
    load_keyring,
    parse_keyring,
    rotate_master_key_file,
)
from proof_messenger.audit.primitives import aes256_gcm_decrypt, hkdf_sha256

KEY_A = MasterKey("a", bytes(range(32)))
KEY_B = MasterKey("b", bytes(range(32, 64)))


@settings(max_examples=50, deadline=None)
@given(pt=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_round_trip(pt: bytes, aad: bytes) -> None:
    ring = Keyring([KEY_A])
    key_id, blob = ring.encrypt(pt, aad)
    assert key_id == "a"
    assert len(blob) == 12 + len(pt) + 16
    assert ring.decrypt(key_id, blob, aad) == pt


def test_blob_layout_and_data_key_derivation() -> None:
    """The blob is nonce || GCM(ct||tag) under HKDF(master, info=DATA_KEY_INFO) -- pinned."""
    ring = Keyring([KEY_A])
    _, blob = ring.encrypt(b"pay 12,500.00 EUR to ACME", b"evt-1")
    data_key = hkdf_sha256(KEY_A.secret, None, b"proof-messenger/v1 audit-context", 32)
    assert DATA_KEY_INFO == b"proof-messenger/v1 audit-context"
    assert aes256_gcm_decrypt(data_key, blob[:12], b"evt-1", blob[12:]) == (
        b"pay 12,500.00 EUR to ACME"
    )


def test_nonces_are_fresh() -> None:
    ring = Keyring([KEY_A])
    blobs = {ring.encrypt(b"same", b"aad")[1] for _ in range(50)}
    assert len(blobs) == 50


def test_wrong_aad_fails() -> None:
    ring = Keyring([KEY_A])
    key_id, blob = ring.encrypt(b"secret context", b"event-1")
    with pytest.raises(DecryptionError, match="authentication failed"):
        ring.decrypt(key_id, blob, b"event-2")


@pytest.mark.parametrize("bit", [0, 7, 12 * 8, 12 * 8 + 5, -1])
def test_flipped_bit_fails(bit: int) -> None:
    ring = Keyring([KEY_A])
    key_id, blob = ring.encrypt(b"secret context", b"event-1")
    pos = bit if bit >= 0 else len(blob) * 8 - 1
    tampered = bytearray(blob)
    tampered[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, bytes(tampered), b"event-1")


def test_truncated_and_unknown_key() -> None:
    ring = Keyring([KEY_A])
    key_id, blob = ring.encrypt(b"x", b"")
    with pytest.raises(DecryptionError, match="shorter"):
        ring.decrypt(key_id, blob[:27], b"")
    with pytest.raises(DecryptionError, match="unknown master key id 'zz'"):
        ring.decrypt("zz", blob, b"")
    with pytest.raises(DecryptionError):
        Keyring([KEY_B]).decrypt("a", blob, b"")  # same id, other secret


def test_rotated_keyring_reads_old_and_writes_new() -> None:
    old = Keyring([KEY_A])
    old_id, old_blob = old.encrypt(b"old row", b"evt-old")
    rotated = Keyring([KEY_B, KEY_A])
    assert rotated.active_key_id == "b"
    assert rotated.decrypt(old_id, old_blob, b"evt-old") == b"old row"
    new_id, new_blob = rotated.encrypt(b"new row", b"evt-new")
    assert new_id == "b"
    with pytest.raises(DecryptionError):
        old.decrypt(new_id, new_blob, b"evt-new")


def test_secret_never_in_repr() -> None:
    key = MasterKey.generate("k1")
    assert key.secret.hex() not in repr(key)
    assert base64.b64encode(key.secret).decode() not in repr(Keyring([key]))


# ----------------------------------------------------------------------- key files


def test_generate_load_rotate(tmp_path: Path) -> None:
    path = tmp_path / "master.keys"
    first = generate_master_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring1 = load_keyring(path)
    assert ring1.active_key_id == first and ring1.warnings == ()
    kid, blob = ring1.encrypt(b"ctx", b"evt")

    with pytest.raises(MasterKeyError, match="refusing to overwrite"):
        generate_master_key_file(path)

    second = rotate_master_key_file(path, key_id="second")
    assert second == "second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring2 = load_keyring(path)
    assert ring2.key_ids == ("second", first)
    assert ring2.decrypt(kid, blob, b"evt") == b"ctx"
    assert ring2.encrypt(b"ctx", b"evt")[0] == "second"
    # Comments survive rotation and the old line is kept byte for byte.
    assert path.read_text().startswith("# proof-messenger audit master keys")

    with pytest.raises(MasterKeyError, match="already exists"):
        rotate_master_key_file(path, key_id=first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".masterkey-")]


def test_group_readable_file_loads_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "master.keys"
    generate_master_key_file(path, key_id="k")
    os.chmod(path, 0o644)
    ring = load_keyring(path)
    assert ring.active_key_id == "k"
    assert len(ring.warnings) == 1 and "0644" in ring.warnings[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="cannot read"):
        load_keyring(tmp_path / "nope")


GOOD = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"# c\n\nk1:{GOOD}\nno-colon-here\n", "line 4: expected '<key_id>:<base64 key>'"),
        (f"k1:{GOOD}\nbad id!:{GOOD}\n", "line 2: invalid key id 'bad id!'"),
        (f"{'x' * 33}:{GOOD}\n", "line 1: invalid key id"),
        (f":{GOOD}\n", "line 1: invalid key id ''"),
        ("k1:not*base64\n", "line 1: key 'k1' is not valid base64"),
        (f"k1:{base64.b64encode(bytes(31)).decode()}\n", "line 1: key 'k1' decodes to 31 bytes"),
        (
            f"k1:{GOOD}\n\nk1:{GOOD}\n",
            "line 3: duplicate key id 'k1' \\(first defined on line 1\\)",
        ),
        ("# only comments\n\n", "no keys found"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(MasterKeyError, match=message):
        parse_keyring(text, "keys.txt")


def test_parse_accepts_comments_whitespace_and_order() -> None:
    text = "# header\n\n  " + format_master_key_line(KEY_B).rstrip() + "  \n# old\n"
    text += format_master_key_line(KEY_A)
    ring = parse_keyring(text)
    assert ring.key_ids == ("b", "a")
    assert ring.active_key_id == "b"


def test_invalid_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"\xff\xfe")
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match="UTF-8"):
        load_keyring(path)
