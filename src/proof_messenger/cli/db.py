"""``proof-messenger db upgrade``: apply schema migrations."""

from __future__ import annotations

from pathlib import Path

import click

from ..store.base import Store
from ._relay import config_option, settings_from, with_store


@click.group("db")
def command() -> None:
    """Database administration."""


@command.command("upgrade")
@config_option
def upgrade(config_path: Path | None) -> None:
    """Apply pending migrations (the relay also does this at start)."""

    async def migrate(store: Store) -> list[str]:
        return await store.migrate()

    applied = with_store(settings_from(config_path), migrate, migrate=False)
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")
