"""``proof-messenger masterkey generate|rotate``: the audit-context encryption keys."""

from __future__ import annotations

from pathlib import Path

import click

from ..audit.crypto import generate_master_key_file, rotate_master_key_file
from ..audit.errors import MasterKeyError
from ._relay import config_option, fail, settings_from


@click.group("masterkey")
def command() -> None:
    """Manage the master key file that encrypts audit contexts."""


@command.command("generate")
@config_option
def generate(config_path: Path | None) -> None:
    """Create the master key file named by the config (refuses to overwrite)."""
    path = Path(settings_from(config_path).master_key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        key_id = generate_master_key_file(path)
    except (MasterKeyError, OSError) as exc:
        fail(str(exc))
    click.echo(f"created {path} with key {key_id}")


@command.command("rotate")
@config_option
def rotate(config_path: Path | None) -> None:
    """Add a new active key; old keys stay so existing rows still decrypt.

    Restart (or roll) every relay instance afterwards so they all encrypt with it.
    """
    path = Path(settings_from(config_path).master_key_file)
    try:
        key_id = rotate_master_key_file(path)
    except (MasterKeyError, OSError) as exc:
        fail(str(exc))
    click.echo(f"new active key {key_id} in {path}; restart relays to use it")
