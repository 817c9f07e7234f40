"""ES256 keys: generation, key ids, PEM/DER in and out, raw r‖s signatures.

Signatures on the wire are IEEE P1363 (64 bytes, r‖s) because that is what
WebCrypto produces; OpenSSL wants DER, so we convert at this one boundary.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .encoding import b64u_encode

__all__ = [
    "P256_ORDER",
    "KeyFormatError",
    "PrivateKey",
    "PublicKey",
    "generate_private_key",
    "kid_for",
    "load_private_key_pem",
    "load_public_key",
    "load_public_key_der",
    "private_key_to_pem",
    "public_key_der",
    "public_key_to_pem",
    "sign_es256",
    "verify_es256",
    "verify_es256_der",
]

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ECDSA = ec.ECDSA(hashes.SHA256())
#: RFC 6979 deterministic nonces: no dependence on the RNG at signing time, and
#: reproducible test vectors. (cryptography >= 44.)
_ECDSA_DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


class KeyFormatError(ValueError):
    """A key could not be loaded; the message says why (never includes key material)."""


def generate_private_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_der(key: PublicKey | PrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def kid_for(key: PublicKey | PrivateKey | bytes) -> str:
    """``kid`` = base64url(SHA-256(DER SubjectPublicKeyInfo))."""
    der = key if isinstance(key, bytes) else public_key_der(key)
    return b64u_encode(hashlib.sha256(der).digest())


@lru_cache(maxsize=4096)
def load_public_key_der(der: bytes) -> PublicKey:
    """Parse a DER SPKI that must hold a P-256 key. Cached: parsing costs ~10 µs."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, _CryptoUnsupported) as exc:
        raise KeyFormatError("not a DER SubjectPublicKeyInfo") from exc
    return _require_p256(key)


def load_public_key(data: bytes) -> PublicKey:
    """Load a P-256 public key from PEM or DER SPKI."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, _CryptoUnsupported) as exc:
            raise KeyFormatError("not a PEM public key") from exc
        return _require_p256(key)
    return load_public_key_der(bytes(data))


def load_private_key_pem(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography says TypeError for "encrypted but no passphrase" and vice versa
        raise KeyFormatError(
            "the key is encrypted: give its passphrase"
            if passphrase is None
            else "the key is not encrypted, but a passphrase was given"
        ) from exc
    except (ValueError, _CryptoUnsupported) as exc:
        raise KeyFormatError("not a PEM private key, or the passphrase is wrong") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError("the key is not an ECDSA P-256 key")
    return key


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_to_pem(key: PublicKey | PrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_es256(key: PrivateKey, data: bytes, *, deterministic: bool = True) -> bytes:
    """ECDSA P-256/SHA-256 over ``data``, returned as raw 64-byte r‖s (low-S not forced)."""
    der = key.sign(data, _ECDSA_DETERMINISTIC if deterministic else _ECDSA)
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_es256(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Verify a raw r‖s signature. Anything but exactly 64 bytes is invalid.

    Both (r, s) and (r, n-s) verify, as ECDSA allows; replay protection is keyed on
    the intent digest, never on signature bytes, so malleability gives an attacker
    nothing.
    """
    if len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, _ECDSA)
    except _CryptoInvalidSignature:
        return False
    return True


def verify_es256_der(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Verify a DER signature (WebAuthn authenticators produce DER)."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return False
    # Re-encoding rejects BER leniency (extra padding, trailing bytes) in the input.
    if encode_dss_signature(r, s) != signature:
        return False
    try:
        key.verify(signature, data, _ECDSA)
    except _CryptoInvalidSignature:
        return False
    return True


def _require_p256(key: object) -> PublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError("the key is not an ECDSA P-256 key")
    return key
