"""Encryption of transaction contexts at rest, with rotatable master keys.

Master key file format
======================

A UTF-8 text file, one key per line::

    # proof-messenger audit master keys -- first key encrypts, all keys decrypt
    k2026-11:q0m1...base64 of 32 random bytes...=
    k2026-05:Zx9c...older key, kept so old rows stay readable...=

* Each key line is ``<key_id>:<base64 of exactly 32 bytes>`` (standard
  base64 with padding, RFC 4648 §4). ``key_id`` is 1-32 characters from
  ``[A-Za-z0-9_-]`` and must be unique in the file.
* The FIRST key line is the active key: every new ciphertext is made with it.
  Later lines are older keys, kept only to decrypt rows written before a
  rotation. Rotation = prepend a new line (``rotate_master_key_file``).
* Blank lines and lines starting with ``#`` (after optional spaces) are ignored.
  Leading/trailing whitespace around a key line is ignored.
* The file should be readable by the relay's user only (mode 0600). A
  group/world-readable file still loads, but ``Keyring.warnings`` says so and
  the relay is expected to log it.

Encryption
==========

Each master key is never used directly: its data key is
``HKDF-SHA-256(master, salt=None, info=b"proof-messenger/v1 audit-context", L=32)``.
A ciphertext blob is ``nonce (12 random bytes) || AES-256-GCM ciphertext || tag (16)``
and is stored next to the ``key_id`` that made it. The caller passes
associated data (the relay uses the audit event id) so a blob copied into
another row fails to decrypt. Random 96-bit nonces are safe far beyond any
realistic number of audit rows per key (NIST SP 800-38D §8.3: 2^32 messages).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proof_messenger.audit.errors import DecryptionError, MasterKeyError
from proof_messenger.audit.keyfiles import create_secret_file
from proof_messenger.audit.primitives import (
    GCM_NONCE_SIZE,
    GCM_TAG_SIZE,
    Aes256Gcm,
    hkdf_sha256,
)

__all__ = [
    "DATA_KEY_INFO",
    "MASTER_KEY_SIZE",
    "DecryptionError",
    "Keyring",
    "MasterKey",
    "MasterKeyError",
    "format_master_key_line",
    "generate_master_key_file",
    "load_keyring",
    "parse_keyring",
    "rotate_master_key_file",
]

MASTER_KEY_SIZE = 32
DATA_KEY_INFO = b"proof-messenger/v1 audit-context"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_FILE_SIZE = 1 << 20  # a keyring is a few lines; refuse to slurp anything huge
_FILE_HEADER = (
    "# proof-messenger audit master keys: <key_id>:<base64 32 bytes>\n"
    "# The FIRST key encrypts new data; later keys only decrypt. Keep this file secret (0600).\n"
)


@dataclass(frozen=True)
class MasterKey:
    """One named 32-byte master key. ``repr`` never shows the secret."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID_RE.fullmatch(self.key_id):
            raise MasterKeyError(
                f"invalid key id {self.key_id!r}: expected 1-32 characters from [A-Za-z0-9_-]"
            )
        if len(self.secret) != MASTER_KEY_SIZE:
            raise MasterKeyError(
                f"key {self.key_id!r} is {len(self.secret)} bytes, expected {MASTER_KEY_SIZE}"
            )

    @classmethod
    def generate(cls, key_id: str | None = None) -> MasterKey:
        """A fresh key from the OS CSPRNG; the default id is random (``mk-<8 hex>``)."""
        return cls(key_id or f"mk-{secrets.token_hex(4)}", secrets.token_bytes(MASTER_KEY_SIZE))


def _derive_data_key(master: bytes) -> bytes:
    return hkdf_sha256(master, None, DATA_KEY_INFO, 32)


class Keyring:
    """The active key (first) plus older keys, with their derived data keys cached."""

    def __init__(self, keys: Sequence[MasterKey], warnings: Sequence[str] = ()) -> None:
        if not keys:
            raise MasterKeyError("a keyring needs at least one key")
        data_keys: dict[str, Aes256Gcm] = {}
        for key in keys:
            if key.key_id in data_keys:
                raise MasterKeyError(f"duplicate key id {key.key_id!r}")
            # Prepared once: every audit row is encrypted with the active key.
            data_keys[key.key_id] = Aes256Gcm(_derive_data_key(key.secret))
        self._active_key_id = keys[0].key_id
        self._data_keys = data_keys
        self._active = data_keys[self._active_key_id]
        self.warnings: tuple[str, ...] = tuple(warnings)

    def __repr__(self) -> str:
        return f"Keyring(active={self._active_key_id!r}, key_ids={self.key_ids!r})"

    @property
    def active_key_id(self) -> str:
        return self._active_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._data_keys)

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Encrypt with the active key; return ``(key_id, nonce || ciphertext || tag)``."""
        nonce = os.urandom(GCM_NONCE_SIZE)  # what secrets.token_bytes returns, one call less
        return self._active_key_id, nonce + self._active.encrypt(nonce, aad, plaintext)

    def decrypt(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob made by ``encrypt`` (by this or an older key) with the same AAD."""
        key = self._data_keys.get(key_id)
        if key is None:
            raise DecryptionError(
                f"unknown master key id {key_id!r} (keyring has {', '.join(self.key_ids)})"
            )
        if len(blob) < GCM_NONCE_SIZE + GCM_TAG_SIZE:
            raise DecryptionError(
                f"ciphertext blob is {len(blob)} bytes, shorter than nonce + tag "
                f"({GCM_NONCE_SIZE + GCM_TAG_SIZE})"
            )
        return key.decrypt(blob[:GCM_NONCE_SIZE], aad, blob[GCM_NONCE_SIZE:])


def format_master_key_line(key: MasterKey) -> str:
    """The file line for ``key`` (with its trailing newline)."""
    return f"{key.key_id}:{base64.b64encode(key.secret).decode('ascii')}\n"


def _parse_key_line(line: str, lineno: int, source: str) -> MasterKey:
    key_id, sep, b64 = line.partition(":")
    where = f"{source}, line {lineno}"
    if not sep:
        raise MasterKeyError(f"{where}: expected '<key_id>:<base64 key>', found no ':'")
    if not _KEY_ID_RE.fullmatch(key_id):
        raise MasterKeyError(
            f"{where}: invalid key id {key_id!r}: expected 1-32 characters from [A-Za-z0-9_-]"
        )
    try:
        secret = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{where}: key {key_id!r} is not valid base64") from None
    if len(secret) != MASTER_KEY_SIZE:
        raise MasterKeyError(
            f"{where}: key {key_id!r} decodes to {len(secret)} bytes, expected {MASTER_KEY_SIZE}"
        )
    return MasterKey(key_id, secret)


def _parse_keys(text: str, source: str) -> list[MasterKey]:
    keys: list[MasterKey] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = _parse_key_line(line, lineno, source)
        if key.key_id in seen:
            raise MasterKeyError(
                f"{source}, line {lineno}: duplicate key id {key.key_id!r} "
                f"(first defined on line {seen[key.key_id]})"
            )
        seen[key.key_id] = lineno
        keys.append(key)
    if not keys:
        raise MasterKeyError(f"{source}: no keys found (expected lines '<key_id>:<base64 key>')")
    return keys


def parse_keyring(text: str, source: str = "<master key text>") -> Keyring:
    """Parse master key file text (see the module docstring) into a ``Keyring``."""
    return Keyring(_parse_keys(text, source))


def _read_key_file(path: Path) -> tuple[str, list[str]]:
    warnings: list[str] = []
    try:
        st = path.stat()
        if st.st_size > _MAX_FILE_SIZE:
            raise MasterKeyError(f"{path}: file is {st.st_size} bytes; refusing (limit 1 MiB)")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            warnings.append(
                f"master key file {path} is accessible by group/others (mode {mode:04o}); "
                f"run 'chmod 600 {path}'"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8"), warnings
    except UnicodeDecodeError:
        raise MasterKeyError(f"{path}: not valid UTF-8 text") from None


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Load a master key file; permission problems end up in ``Keyring.warnings``."""
    p = Path(path)
    text, warnings = _read_key_file(p)
    return Keyring(_parse_keys(text, str(p)), warnings)


def generate_master_key_file(path: str | os.PathLike[str], key_id: str | None = None) -> str:
    """Create a new key file (mode 0600) holding one fresh key; return its key id.

    Refuses to overwrite an existing file: losing a master key loses every
    context encrypted with it.
    """
    p = Path(path)
    key = MasterKey.generate(key_id)
    try:
        create_secret_file(p, (_FILE_HEADER + format_master_key_line(key)).encode("utf-8"))
    except FileExistsError:
        raise MasterKeyError(f"{p} already exists; refusing to overwrite a master key") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot create master key file {p}: {exc.strerror}") from None
    return key.key_id


def rotate_master_key_file(path: str | os.PathLike[str], key_id: str | None = None) -> str:
    """Insert a fresh key before the current active key; return the new key id.

    Older keys and comments are kept byte for byte. The file is replaced
    atomically (write to a 0600 temporary file in the same directory, fsync,
    rename), so a crash leaves either the old or the new keyring, never half.
    """
    p = Path(path)
    text, _ = _read_key_file(p)
    keys = _parse_keys(text, str(p))
    existing = {k.key_id for k in keys}
    new_key = MasterKey.generate(key_id)
    while key_id is None and new_key.key_id in existing:
        new_key = MasterKey.generate()
    if new_key.key_id in existing:
        raise MasterKeyError(f"{p}: key id {new_key.key_id!r} already exists")

    lines = text.splitlines(keepends=True)
    insert_at = next(
        i for i, raw in enumerate(lines) if raw.strip() and not raw.strip().startswith("#")
    )
    lines.insert(insert_at, format_master_key_line(new_key))
    new_text = "".join(lines)

    fd, tmp_name = tempfile.mkstemp(prefix=".masterkey-", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, p)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return new_key.key_id
