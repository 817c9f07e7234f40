"""Store fixtures for the log tests: reuse the store suite's SQLite + PostgreSQL targets."""

from tests.store.conftest import pg_target, store, target  # noqa: F401
