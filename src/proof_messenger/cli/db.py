"""``proof-messenger db upgrade|prune-replay``: schema migrations and replay-claim pruning."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..relay.retention import (
    CHUNK_PAUSE_SECONDS,
    PruneReport,
    ReplayCutoffs,
    prune_replay,
    replay_cutoffs,
)
from ..relay.service import iso
from ..store.base import Store
from ._relay import config_option, fail, settings_from, with_store

out = Console(highlight=False)


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


@command.command("prune-replay")
@config_option
@click.option(
    "--chunk-rows",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Rows deleted per transaction (default: retention.replay_prune_chunk_rows).",
)
def prune_replay_command(config_path: Path | None, chunk_rows: int | None) -> None:
    """Delete replay claims whose proofs can no longer pass the expiry check.

    Every relay worker does this in the background every
    retention.replay_prune_interval_seconds; run this command (from cron, say) when that
    is 0. Give it the relays' own configuration: the cutoffs come from its verification
    and retention settings. Safe while relays are running: only claims of proofs that
    are refused as expired anyway are deleted, in short transactions.
    """
    settings = settings_from(config_path)
    chunk = chunk_rows or settings.retention.replay_prune_chunk_rows
    cutoffs = replay_cutoffs(settings, time.time())

    async def prune(store: Store) -> PruneReport | None:
        if not await store.is_ready():
            return None
        with Progress(
            SpinnerColumn(),
            TextColumn("pruning replay claims: {task.completed:,.0f} rows deleted"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("prune", total=None)
            return await prune_replay(
                store,
                cutoffs,
                chunk_rows=chunk,
                pause=CHUNK_PAUSE_SECONDS,
                on_chunk=lambda n: progress.advance(task, n),
            )

    report = with_store(settings, prune, migrate=False)
    if report is None:
        fail("the database is not fully migrated: run `proof-messenger db upgrade` first")
    out.print(_summary(report, cutoffs))


def _summary(report: PruneReport, cutoffs: ReplayCutoffs) -> str:
    return (
        f"[bold green]pruned {report.deleted:,} replay claims[/] in {report.chunks:,} "
        f"chunk{'s' if report.chunks != 1 else ''}, {report.seconds:.2f} s "
        f"(intents that expired before {iso(cutoffs.before_exp)}; claims from before "
        f"migration 0006 accepted before {iso(cutoffs.legacy_before)})"
    )
