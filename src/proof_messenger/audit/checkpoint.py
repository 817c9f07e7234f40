"""Signed tree heads as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

Byte-compatible with Go's ``golang.org/x/mod/sumdb/note`` so any existing
witness, monitor or ``note`` tool can check the relay's checkpoints::

    example.com/proof-messenger/audit        <- origin
    1234                                     <- tree size, decimal, no leading zeros
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=   <- base64 RFC 6962 root hash
                                             <- blank line
    — example.com/proof-messenger/audit Az3grlgt...=

A note is its text (every line ending in ``\\n``), a blank line, then one or
more signature lines ``"— " name " " base64(key_hash[4] || signature) "\\n"``
(``—`` is U+2014 EM DASH). For Ed25519 (signature type ``0x01``) the key hash
is ``SHA-256(name || 0x0A || 0x01 || public_key)[:4]`` and the signature is
RFC 8032 Ed25519 over the note text. Verifier keys are written as
``<name>+<8 hex key hash>+<base64(0x01 || public_key)>``, as Go does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from proof_messenger.audit.errors import CheckpointError, LogKeyError
from proof_messenger.audit.keyfiles import create_secret_file

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "LogKeyError",
    "LogSigner",
    "NoteSignature",
    "NoteVerifier",
    "SignedNote",
    "format_verifier_key",
    "generate_log_key",
    "key_hash",
    "key_id_of",
    "load_log_key",
    "open_note",
    "parse_verifier_key",
    "public_key_pem",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100  # as Go; the spec requires accepting at least 16
MAX_NOTE_BYTES = 1 << 20
_SIG_PREFIX = "— "
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX8_RE = re.compile(r"[0-9a-fA-F]{8}")
_ROOT_HASH_SIZE = 32


def _is_valid_name(name: str) -> bool:
    """Key names are non-empty, without Unicode spaces and without ``+``."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _b64decode(text: str) -> bytes:
    """Canonical standard base64 (RFC 4648 §4, padded); raises ``ValueError``.

    Python's decoder tolerates missing or surplus padding; we accept only the
    one encoding ``b64encode`` would produce, so every value has one spelling.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from None
    if _b64encode(raw) != text:
        raise ValueError("non-canonical base64")
    return raw


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_hash(name: str, typed_public_key: bytes) -> int:
    """Key ID: first 4 bytes (big-endian) of ``SHA-256(name || 0x0A || type || key)``."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + typed_public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 note key: name, key hash and public key."""

    name: str
    key_hash: int
    public_key: Ed25519PublicKey = field(repr=False, compare=False)

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        if not _is_valid_name(name):
            raise ValueError(f"invalid key name {name!r}: must be non-empty, no spaces, no '+'")
        typed = bytes([ALG_ED25519]) + _raw_public(public_key)
        return cls(name, key_hash(name, typed), public_key)

    @property
    def verifier_key(self) -> str:
        return format_verifier_key(self.name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def format_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """``<name>+<8 hex key hash>+<base64(0x01 || 32-byte key)>``, as Go's note package."""
    if not _is_valid_name(name):
        raise ValueError(f"invalid key name {name!r}: must be non-empty, no spaces, no '+'")
    typed = bytes([ALG_ED25519]) + _raw_public(public_key)
    return f"{name}+{key_hash(name, typed):08x}+{_b64encode(typed)}"


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a verifier key string; the embedded key hash must match the key."""
    name, sep1, rest = vkey.partition("+")
    hash16, sep2, key64 = rest.partition("+")
    if not (sep1 and sep2) or not _is_valid_name(name):
        raise ValueError("malformed verifier key: expected <name>+<hex key hash>+<base64 key>")
    if not _HEX8_RE.fullmatch(hash16):
        raise ValueError("malformed verifier key: key hash must be 8 hex digits")
    try:
        typed = _b64decode(key64)
    except ValueError:
        raise ValueError("malformed verifier key: key is not valid base64") from None
    if not typed or typed[0] != ALG_ED25519:
        raise ValueError("unsupported verifier key algorithm (only Ed25519, type 0x01)")
    if len(typed) != 33:
        raise ValueError(f"malformed verifier key: Ed25519 key is {len(typed) - 1} bytes, not 32")
    if key_hash(name, typed) != int(hash16, 16):
        raise ValueError("verifier key hash does not match the name and public key")
    return NoteVerifier(name, int(hash16, 16), Ed25519PublicKey.from_public_bytes(typed[1:]))


class LogSigner:
    """Signs notes and checkpoints with an Ed25519 key under a key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.verifier = NoteVerifier.from_public_key(name, private_key.public_key())

    def __repr__(self) -> str:
        return f"LogSigner(name={self.name!r}, key_hash={self.key_hash:08x})"

    @classmethod
    def from_signer_key(cls, skey: str) -> LogSigner:
        """Go's private key string ``PRIVATE+KEY+<name>+<hex hash>+<base64(0x01 || seed)>``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _HEX8_RE.fullmatch(parts[3]):
            raise ValueError("malformed signer key")
        try:
            typed = _b64decode(parts[4])
        except ValueError:
            raise ValueError("malformed signer key") from None
        if len(typed) != 33 or typed[0] != ALG_ED25519:
            raise ValueError("malformed signer key: expected an Ed25519 seed")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(typed[1:]))
        if signer.key_hash != int(parts[3], 16):
            raise ValueError("signer key hash does not match the key")
        return signer

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_hash(self) -> int:
        return self.verifier.key_hash

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.verifier.public_key

    @property
    def verifier_key(self) -> str:
        return self.verifier.verifier_key

    def signature_line(self, text: str) -> str:
        sig = self._private_key.sign(text.encode("utf-8"))
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_hash.to_bytes(4, 'big') + sig)}\n"

    def sign_note(self, text: str) -> str:
        """Return ``text``, a blank line and our signature line."""
        _check_note_text(text)
        return f"{text}\n{self.signature_line(text)}"

    def sign_checkpoint(self, checkpoint: Checkpoint) -> str:
        return self.sign_note(checkpoint.to_body())


# --------------------------------------------------------------------------- notes


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: int
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class SignedNote:
    """An opened note: its text and which signatures verified against trusted keys."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise CheckpointError("malformed note: text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("malformed note: control characters other than newline")


def open_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> SignedNote:
    """Parse a signed note and verify it against ``verifiers`` (Go's ``note.Open``).

    Signatures by unknown keys (name and key hash not both matching) are kept
    as unverified. A known key whose signature fails rejects the whole note.
    At least one known key must have signed.
    """
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise CheckpointError(f"malformed note: larger than {MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("malformed note: not valid UTF-8") from None
    elif len(note) > MAX_NOTE_BYTES:
        raise CheckpointError(f"malformed note: larger than {MAX_NOTE_BYTES} bytes")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise CheckpointError("malformed note: control characters other than newline")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in note):
        raise CheckpointError("malformed note: not valid UTF-8")

    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block or not sig_block.endswith("\n"):
        raise CheckpointError("malformed note: signature block missing or not newline-terminated")

    known: dict[tuple[str, int], list[NoteVerifier]] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_hash), []).append(v)

    message = text.encode("utf-8")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen_verified: set[tuple[str, int]] = set()
    seen_unverified: set[str] = set()
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    for lineno, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(f"malformed note: signature line {lineno} must start with '— '")
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            raw = _b64decode(b64)
        except ValueError:
            raw = b""
        if not _is_valid_name(name) or not b64 or len(raw) < 5:
            raise CheckpointError(
                f"malformed note: signature line {lineno} is not '— <name> <b64>'"
            )
        sig = NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])
        ident = (sig.name, sig.key_hash)
        candidates = known.get(ident)
        if candidates is None:
            if line not in seen_unverified:
                seen_unverified.add(line)
                unverified.append(sig)
            continue
        if len(candidates) > 1:
            raise CheckpointError(f"ambiguous key {name}+{sig.key_hash:08x} in the verifier list")
        if ident in seen_verified:
            continue
        seen_verified.add(ident)
        if not candidates[0].verify(message, sig.signature):
            raise CheckpointError(f"invalid signature for key {name}+{sig.key_hash:08x}")
        verified.append(sig)

    if not verified:
        names = ", ".join(f"{s.name}+{s.key_hash:08x}" for s in unverified)
        raise CheckpointError(f"note has no signature from a trusted key (signed by: {names})")
    return SignedNote(text, tuple(verified), tuple(unverified))


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin (log identity), tree size, RFC 6962 root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        if not self.origin:
            raise CheckpointError("malformed checkpoint: empty origin")
        for what, line in [("origin", self.origin), *(("extension", e) for e in self.extensions)]:
            if not line:
                raise CheckpointError(f"malformed checkpoint: empty {what} line")
            if any(ord(c) < 0x20 for c in line):
                raise CheckpointError(f"malformed checkpoint: {what} contains a control character")
        if not 0 <= self.size < 1 << 64:
            raise CheckpointError(f"malformed checkpoint: tree size {self.size} out of range")
        if len(self.root_hash) != _ROOT_HASH_SIZE:
            raise CheckpointError(
                f"malformed checkpoint: root hash is {len(self.root_hash)} bytes, expected 32"
            )

    def to_body(self) -> str:
        """The note text: origin, size, base64 root, extension lines, each ending in ``\\n``."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        """Parse note text WITHOUT checking signatures (use ``parse`` for untrusted input)."""
        if not text.endswith("\n"):
            raise CheckpointError("malformed checkpoint: text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("malformed checkpoint: needs origin, size and root hash lines")
        origin, size_s, root_s, *extensions = lines
        if not _SIZE_RE.fullmatch(size_s):
            raise CheckpointError(f"malformed checkpoint: tree size {size_s!r} is not canonical")
        try:
            root = _b64decode(root_s)
        except ValueError:
            raise CheckpointError("malformed checkpoint: root hash is not valid base64") from None
        return cls(origin, int(size_s), root, tuple(extensions))

    @classmethod
    def parse(
        cls,
        note: str | bytes,
        verifier: NoteVerifier | Iterable[NoteVerifier],
        *,
        origin: str | None = None,
    ) -> Checkpoint:
        """Open a signed checkpoint; at least one trusted signature must verify.

        With ``origin``, also require the checkpoint to be for that log.
        """
        verifiers = [verifier] if isinstance(verifier, NoteVerifier) else list(verifier)
        opened = open_note(note, verifiers)
        checkpoint = cls.from_body(opened.text)
        if origin is not None and checkpoint.origin != origin:
            raise CheckpointError(
                f"checkpoint origin {checkpoint.origin!r} is not the expected {origin!r}"
            )
        return checkpoint


# --------------------------------------------------------------------------- key files


def generate_log_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Create an Ed25519 log key as unencrypted PKCS#8 PEM, mode 0600; never overwrites."""
    p = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        create_secret_file(p, pem)
    except FileExistsError:
        raise LogKeyError(f"{p} already exists; refusing to overwrite a log key") from None
    except OSError as exc:
        raise LogKeyError(f"cannot create log key file {p}: {exc.strerror}") from None
    return key


def load_log_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS#8 PEM Ed25519 private key."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise LogKeyError(f"cannot read log key file {p}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise LogKeyError(f"{p}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LogKeyError(f"{p}: log key must be Ed25519, found {type(key).__name__}")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM of the log's public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Stable id of a log key (independent of the log's origin): SHA-256 of the raw key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]
