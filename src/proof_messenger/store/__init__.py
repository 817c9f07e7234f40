"""Storage: one :class:`Store` interface, SQLite and PostgreSQL backends.

``open_store(url)`` picks the backend from the URL:

* ``sqlite:///relative/path.db`` (relative to the working directory),
  ``sqlite:////abs/path.db``, ``sqlite:///:memory:`` (one process only);
* ``postgresql://user@host:5432/db`` or ``postgres://...``.

The returned store is not opened yet: ``await store.open()`` (then ``migrate()``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .base import (
    ApiKeyRecord,
    AppendResult,
    AuditDraft,
    AuditFilter,
    AuditPage,
    AuditRecord,
    DuplicateKey,
    KeyRecord,
    OutboxEvent,
    ReplayKey,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "ApiKeyRecord",
    "AppendResult",
    "AuditDraft",
    "AuditFilter",
    "AuditPage",
    "AuditRecord",
    "DuplicateKey",
    "KeyRecord",
    "OutboxEvent",
    "ReplayKey",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "sqlite_path_from_url",
]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    if not url.startswith(_SQLITE_PREFIX):
        raise ValueError(
            "SQLite URL must look like sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = url[len(_SQLITE_PREFIX) :]
    if not path:
        raise ValueError("SQLite URL has no file path (use sqlite:///path.db)")
    if "?" in path or "#" in path:
        raise ValueError("SQLite URL options are not supported; pass them as keyword options")
    return path


def open_store(url: str, **options: Any) -> Store:
    """Build the store for ``url``; ``options`` go to the backend's constructor."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(sqlite_path_from_url(url), **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    shown = scheme or "(none)"
    raise ValueError(
        f"unsupported store URL scheme {shown!r}: use sqlite:///path.db or postgresql://..."
    )
