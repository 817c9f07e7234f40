"""Thin, size-checked wrappers around the pyca/cryptography primitives we use.

Everything that derives, encrypts or authenticates in ``audit`` (and the
webhook signer) goes through these functions, and the Wycheproof tests drive
exactly these functions, so the vectors test the code paths we ship.

The AES-GCM wrappers deliberately support one parameter set only: 256-bit
keys, 96-bit nonces and 128-bit tags. Anything else is rejected with
``ValueError`` before it reaches the library, so a misconfigured caller can
never silently fall back to a weaker or non-standard mode.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proof_messenger.audit.errors import DecryptionError

__all__ = [
    "AES_KEY_SIZE",
    "GCM_NONCE_SIZE",
    "GCM_TAG_SIZE",
    "HMAC_SHA256_SIZE",
    "Aes256Gcm",
    "aes256_gcm_decrypt",
    "aes256_gcm_encrypt",
    "hkdf_sha256",
    "hmac_sha256",
    "hmac_sha256_verify",
]

AES_KEY_SIZE = 32
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16
HMAC_SHA256_SIZE = 32
_HKDF_SHA256_MAX = 255 * 32


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256; ``salt=None`` (or empty) means 32 zero bytes.

    Raises ``ValueError`` for a length outside 1..8160 (RFC 5869 §2.3).
    """
    if not 0 < length <= _HKDF_SHA256_MAX:
        raise ValueError(f"HKDF-SHA-256 output length must be 1..{_HKDF_SHA256_MAX}, got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _check_gcm_key(key: bytes) -> None:
    if len(key) != AES_KEY_SIZE:
        raise ValueError(f"AES-256-GCM key must be {AES_KEY_SIZE} bytes, got {len(key)}")


def _check_gcm_nonce(nonce: bytes) -> None:
    if len(nonce) != GCM_NONCE_SIZE:
        raise ValueError(f"AES-GCM nonce must be {GCM_NONCE_SIZE} bytes, got {len(nonce)}")


class Aes256Gcm:
    """One AES-256-GCM key, prepared once, for many messages.

    ``AESGCM(key)`` costs about three times an encryption of a small context, and the
    relay encrypts one context per audit row with the same key: the keyring keeps one
    of these per data key. The checks are those of the module functions (which are
    built on this class, so the Wycheproof vectors drive it too). pyca's ``AESGCM``
    object holds no per-message state, so one instance serves every message and thread.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        _check_gcm_key(key)
        self._aead = AESGCM(key)

    def encrypt(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """Return ``ciphertext || 16-byte tag``. The caller guarantees nonce uniqueness."""
        _check_gcm_nonce(nonce)
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, aad: bytes, ciphertext_and_tag: bytes) -> bytes:
        """Authenticate and decrypt ``ciphertext || tag``; raise ``DecryptionError`` on failure."""
        _check_gcm_nonce(nonce)
        if len(ciphertext_and_tag) < GCM_TAG_SIZE:
            raise DecryptionError("ciphertext is shorter than the 16-byte GCM tag")
        try:
            return self._aead.decrypt(nonce, ciphertext_and_tag, aad)
        except InvalidTag:
            raise DecryptionError(
                "authentication failed: wrong key, wrong associated data or tampered ciphertext"
            ) from None


def aes256_gcm_encrypt(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """Return ``ciphertext || 16-byte tag``. The caller guarantees nonce uniqueness."""
    return Aes256Gcm(key).encrypt(nonce, aad, plaintext)


def aes256_gcm_decrypt(key: bytes, nonce: bytes, aad: bytes, ciphertext_and_tag: bytes) -> bytes:
    """Authenticate and decrypt ``ciphertext || tag``; raise ``DecryptionError`` on failure."""
    return Aes256Gcm(key).decrypt(nonce, aad, ciphertext_and_tag)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """Full 32-byte HMAC-SHA-256 tag (RFC 2104); any key length is allowed."""
    return hmac.new(key, msg, hashlib.sha256).digest()


def hmac_sha256_verify(key: bytes, msg: bytes, tag: bytes) -> bool:
    """Constant-time check of a full 32-byte tag; truncated tags are refused."""
    if len(tag) != HMAC_SHA256_SIZE:
        return False
    return hmac.compare_digest(hmac_sha256(key, msg), tag)
