"""``proof-messenger apikey create|list|revoke``: API keys for relay callers."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..relay import apikeys
from ..relay.service import iso
from ..store.base import ApiKeyRecord, Store
from ._relay import config_option, fail, settings_from, with_store

out = Console(highlight=False)


@click.group("apikey")
def command() -> None:
    """Create, list and revoke API keys (only a hash is stored)."""


@command.command("create")
@config_option
@click.option("--name", required=True, help="Who uses the key, e.g. backend-1.")
@click.option("--scopes", required=True, help=f"Comma-separated: {', '.join(apikeys.ALL_SCOPES)}.")
def create(config_path: Path | None, name: str, scopes: str) -> None:
    """Create a key and print it ONCE; store it in your secret manager."""
    try:
        scope_list = apikeys.validate_scopes([s.strip() for s in scopes.split(",") if s.strip()])
    except ValueError as exc:
        fail(str(exc))
    if not 1 <= len(name) <= 100:
        fail("--name must be 1-100 characters")
    key_id, full = apikeys.generate_api_key()
    record = ApiKeyRecord(
        id=key_id,
        name=name,
        secret_hash=apikeys.hash_api_key(full),
        scopes=scope_list,
        created_at=time.time(),
    )

    async def insert(store: Store) -> None:
        await store.insert_api_key(record)

    with_store(settings_from(config_path), insert)
    click.echo(full)
    Console(stderr=True).print(
        f"created API key [bold]{key_id}[/] ({name}; scopes: {', '.join(scope_list)}). "
        "It is shown only this once."
    )


@command.command("list")
@config_option
def list_keys(config_path: Path | None) -> None:
    """List API keys (ids, names, scopes; never secrets)."""

    async def fetch(store: Store) -> list[ApiKeyRecord]:
        return await store.list_api_keys()

    records = with_store(settings_from(config_path), fetch)
    table = Table(title="API keys")
    for column in ("id", "name", "scopes", "created", "status"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id,
            r.name,
            ", ".join(r.scopes),
            iso(r.created_at),
            f"revoked {iso(r.revoked_at)}" if r.revoked_at else "active",
        )
    out.print(table)


@command.command("revoke")
@config_option
@click.argument("key_id")
def revoke(config_path: Path | None, key_id: str) -> None:
    """Revoke an API key by its id; requests with it fail from now on."""

    async def do(store: Store) -> bool:
        return await store.revoke_api_key(key_id, time.time())

    if not with_store(settings_from(config_path), do):
        fail(f"no active API key with id {key_id}", code=1)
    click.echo(f"revoked {key_id}")
