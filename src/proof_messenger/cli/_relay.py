"""Shared plumbing for commands that act on a relay's configuration and database."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from ..relay.config import ConfigError, Settings, load_settings
from ..relay.startup import store_from_settings
from ..store.base import Store, StoreError

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="PROOF_MESSENGER_CONFIG",
    help="Relay YAML config (environment variables override it).",
)


def fail(message: str, code: int = 2) -> NoReturn:
    # rich is imported here, not at the top: `serve` reaches uvicorn without it.
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def settings_from(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}")


def store_for(settings: Settings) -> Store:
    try:
        return store_from_settings(settings, max_connections=2)
    except ValueError as exc:
        fail(f"database.url: {exc}")


def with_store(
    settings: Settings, action: Callable[[Store], Awaitable[T]], *, migrate: bool = True
) -> T:
    """Open the store, migrate if asked, run ``action``, close; store errors exit 2."""

    async def run() -> T:
        store = store_for(settings)
        await store.open()
        try:
            if migrate:
                await store.migrate()
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        fail(f"database: {exc}")
