"""``proof-messenger audit list|show|verify``: read and check the audit log."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..audit.chain import ChainReport, verify_chain_async
from ..audit.errors import DecryptionError
from ..relay.routes.audit import event_view
from ..relay.service import iso
from ..relay.startup import load_or_create_keyring
from ..store.base import AuditFilter, AuditPage, AuditRecord, Store
from ._relay import config_option, fail, settings_from, with_store

out = Console(highlight=False)


@click.group("audit")
def command() -> None:
    """Query the audit log and verify its hash chain."""


def _when(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return float(int(text))
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        fail(f"--{name} must be Unix seconds or an ISO 8601 time")


def _amount(record: AuditRecord) -> str:
    d = record.draft
    if d.amount_minor is None:
        return ""
    return (
        f"{d.amount_minor / 100:,.2f} {d.currency or ''}".strip()
        if d.currency
        else str(d.amount_minor)
    )


@command.command("list")
@config_option
@click.option("--start", help="From this time (Unix seconds or ISO 8601).")
@click.option("--end", help="Until this time.")
@click.option("--sub", help="Only this subject.")
@click.option("--type", "event_type", help="Only this event type, e.g. proof.verified.")
@click.option("--status", type=click.Choice(["accepted", "rejected", "info"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_events(
    config_path: Path | None,
    start: str | None,
    end: str | None,
    sub: str | None,
    event_type: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Newest events first, as a table."""
    flt = AuditFilter(
        start=_when(start, "start"),
        end=_when(end, "end"),
        sub=sub,
        event_type=event_type,
        status=status,
    )

    async def fetch(store: Store) -> list[AuditRecord]:
        records: list[AuditRecord] = []
        cursor: str | None = None
        while len(records) < limit:
            page: AuditPage = await store.list_audit(flt, min(500, limit - len(records)), cursor)
            records.extend(page.records)
            cursor = page.next_cursor
            if cursor is None:
                break
        return records

    records = with_store(settings_from(config_path), fetch)
    if as_json:
        for r in records:
            click.echo(json.dumps(event_view(r)))
        return
    table = Table(title=f"Audit log ({len(records)} events, newest first)")
    for column in (
        "seq",
        "time",
        "type",
        "status",
        "sub",
        "transaction",
        "amount",
        "code",
        "proof id",
    ):
        table.add_column(column, overflow="fold")
    for r in records:
        d = r.draft
        style = {"accepted": "green", "rejected": "red"}.get(d.status, "")
        table.add_row(
            str(r.seq),
            iso(d.time),
            d.event_type,
            f"[{style}]{d.status}[/]" if style else d.status,
            d.sub or "",
            d.tx_type or "",
            _amount(r),
            d.error_code or "",
            (d.proof_id or "")[:16],
        )
    out.print(table)


@command.command("show")
@config_option
@click.argument("event_id")
def show(config_path: Path | None, event_id: str) -> None:
    """One event with its decrypted context."""
    settings = settings_from(config_path)

    async def fetch(store: Store) -> AuditRecord | None:
        return await store.get_audit(event_id)

    record = with_store(settings, fetch)
    if record is None:
        fail(f"no audit event {event_id}", code=1)
    d = record.draft
    context: Any = None
    if d.context_ct is not None and d.context_key_id is not None:
        keyring = load_or_create_keyring(settings.master_key_file)
        try:
            context = json.loads(
                keyring.decrypt(d.context_key_id, d.context_ct, d.event_id.encode())
            )
        except DecryptionError as exc:
            context = f"<cannot decrypt: {exc}>"
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in (
        ("seq", record.seq),
        ("event id", d.event_id),
        ("time", iso(d.time)),
        ("type", d.event_type),
        ("status", d.status),
        ("subject", d.sub),
        ("kid", d.kid),
        ("error code", d.error_code),
        ("detail", d.detail),
        ("proof id", d.proof_id),
        ("client ip", d.client_ip),
        ("user agent", d.user_agent),
        ("entry hash", record.entry_hash.hex()),
    ):
        table.add_row(label, "" if value is None else str(value))
    out.print(table)
    if context is not None:
        out.print_json(json.dumps(context, ensure_ascii=False))


@command.command("verify")
@config_option
def verify(config_path: Path | None) -> None:
    """Recompute the hash chain; name the first altered, inserted or deleted row.

    Exit 0 when the chain is intact, 1 when it is not.
    """

    async def check(store: Store) -> ChainReport:
        head = await store.chain_head()
        with Progress(
            TextColumn("verifying audit chain"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("chain", total=head.seq)
            return await verify_chain_async(
                store.iter_audit(), head, progress=lambda seq: progress.update(task, completed=seq)
            )

    report = with_store(settings_from(config_path), check, migrate=False)
    if report.ok:
        out.print(
            f"[bold green]audit chain intact[/]: {report.count} rows, head {report.head_hash.hex()}"
        )
        return
    problem = report.problem
    assert problem is not None
    click.echo(
        f"TAMPERED: first bad row seq {problem.seq} ({problem.kind}): {problem.message}", err=True
    )
    raise SystemExit(1)
