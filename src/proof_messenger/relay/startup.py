"""Start-up helpers shared by the app and the ``serve`` parent process: the store from
the settings and the master keyring.

They live apart from :mod:`.app` so that ``serve`` (which migrates the database and
creates the keys once, before the workers start) and the other CLI commands do not
import Starlette, prometheus_client and every route module just to open a store: that
import sat on the start-up critical path before any worker began.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from ..audit.crypto import Keyring, generate_master_key_file, load_keyring
from ..audit.errors import MasterKeyError
from ..store import open_store
from ..store.base import Store
from .config import Settings

__all__ = ["load_or_create_keyring", "store_from_settings"]

log = structlog.get_logger("proof_messenger.http")


def load_or_create_keyring(path: str) -> Keyring:
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            key_id = generate_master_key_file(file)
        except MasterKeyError:
            if not file.exists():  # lost a creation race otherwise: load the winner's key
                raise
        else:
            log.warning(
                "master_key.generated",
                path=str(file),
                key_id=key_id,
                hint="back this file up: audit contexts cannot be decrypted without it",
            )
    keyring = load_keyring(file)
    for warning in keyring.warnings:
        log.warning("master_key.permissions", path=str(file), detail=warning)
    return keyring


def store_from_settings(settings: Settings, *, max_connections: int | None = None) -> Store:
    """The configured store (not opened). Raises ValueError for a bad URL."""
    db = settings.database
    if db.url.startswith("sqlite:"):
        return open_store(db.url)
    return open_store(
        db.url,
        max_connections=max_connections or db.max_connections,
        connection_timeout=db.connection_timeout,
        replica_dsns=db.replica_urls,
    )
