"""Errors raised by the audit building blocks.

``audit`` imports nothing from the rest of the project, so it has its own
small tree; every class carries a human-readable reason that names what was
wrong (a line number, a proof step, a signature key) so an operator can act.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "CheckpointError",
    "DecryptionError",
    "LogKeyError",
    "MasterKeyError",
    "MerkleProofError",
]


class AuditError(Exception):
    """Root of every error raised on purpose by ``proof_messenger.audit``."""


class MasterKeyError(AuditError):
    """The master key file (or a key in it) is missing, malformed or unusable."""


class DecryptionError(AuditError):
    """A ciphertext could not be decrypted: unknown key id, wrong AAD or tampering.

    The reasons are deliberately coarse for AEAD failures: GCM cannot tell a
    wrong AAD from a flipped bit, and neither should we pretend to.
    """


class MerkleProofError(AuditError):
    """An inclusion or consistency proof does not verify."""


class CheckpointError(AuditError):
    """A signed note or checkpoint is malformed or not validly signed."""


class LogKeyError(AuditError):
    """The log signing key file is missing, malformed or not an Ed25519 key."""
