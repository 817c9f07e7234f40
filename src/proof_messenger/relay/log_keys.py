"""The log key and the ``log:`` section: what ``serve`` prepares once before the workers
start, and what the log routes use at run time.

Apart from :mod:`.log_routes` so that the ``serve`` parent creates and checks the key
without importing Starlette and the relay's request stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..audit.checkpoint import generate_log_key, key_id_of, load_log_key
from ..audit.errors import LogKeyError
from ..store.base import LogKeyRecord, Store
from .config import ConfigError, Settings

__all__ = ["LogConfig", "check_log_key", "load_or_create_log_key", "log_config"]

log = structlog.get_logger("proof_messenger.log")
_ORIGIN = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(frozen=True)
class LogConfig:
    origin: str
    checkpoint_interval_seconds: float


def log_config(settings: Settings) -> LogConfig:
    """``log: {origin, checkpoint_interval_seconds}`` from the YAML (validated here)."""
    raw = settings.extra.get("log") or {}
    if not isinstance(raw, dict):
        raise ConfigError("log: must be a mapping")
    unknown = set(raw) - {"origin", "checkpoint_interval_seconds"}
    if unknown:
        raise ConfigError(f"log: unknown setting(s) {', '.join(sorted(unknown))}")
    origin = raw.get("origin") or f"{settings.audience}/proof-messenger/log"
    if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin) or "+" in origin:
        raise ConfigError("log.origin: printable ASCII without spaces or '+', at most 200 chars")
    interval = raw.get("checkpoint_interval_seconds", 60)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError("log.checkpoint_interval_seconds: must be a positive number")
    return LogConfig(origin, float(interval))


def load_or_create_log_key(path: str) -> Ed25519PrivateKey:
    """Load the log key, generating it (mode 0600) if the file does not exist yet."""
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            generate_log_key(file)
            log.warning(
                "log_key.generated", path=str(file), hint="back it up; publish its public key"
            )
        except LogKeyError:
            if not file.exists():  # lost a creation race otherwise: load the winner's key
                raise
    return load_log_key(file)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


async def check_log_key(store: Store, key: Ed25519PrivateKey, now: float) -> str | None:
    """Record the first key; otherwise the key must be the latest in the history.

    Returns a warning when the key file's key is not the latest recorded key, i.e. it was
    replaced without ``proof-messenger log rotate-key`` (or an old key was put back).
    """
    kid = key_id_of(key.public_key())
    history = await store.log_key_history()
    if not history:
        await store.add_log_key(LogKeyRecord(key_id=kid, public_key=_raw(key), created_at=now))
        history = await store.log_key_history()
    latest = history[-1]
    if latest.key_id == kid:
        return None
    if any(h.key_id == kid for h in history):
        return f"log key {kid} is a retired key; the latest recorded key is {latest.key_id}"
    return (
        f"log key {kid} is not in the key history and has no rotation record "
        f"(latest recorded key {latest.key_id}): the key file was replaced without "
        "'proof-messenger log rotate-key'"
    )
