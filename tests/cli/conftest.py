"""The store tests' ``target`` fixture (a fresh SQLite file, a fresh PostgreSQL database),
for the relay-side commands that run on both backends."""

from tests.store.conftest import target  # noqa: F401
