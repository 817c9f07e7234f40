"""Offline commands: keygen, sign, verify, inspect."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from ..protocol import (
    ContextLimits,
    Intent,
    KeyFormatError,
    Proof,
    ProofError,
    Verifier,
    VerifierSettings,
    create_proof,
    generate_private_key,
    kid_for,
    load_private_key_pem,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
    single_key_resolver,
)
from ..protocol.intent import digest, proof_id

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _usage_error(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    sys.exit(2)


def _rejected(exc: ProofError) -> NoReturn:
    # First line is machine-readable: "rejected: <code>"; the detail follows.
    click.echo(f"rejected: {exc.code}: {exc.detail}", err=True)
    sys.exit(1)


def _passphrase(env_var: str | None) -> bytes | None:
    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if not value:
        _usage_error(f"environment variable {env_var} is not set or empty")
    return value.encode("utf-8")


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        _usage_error(f"cannot read {path}: {exc.strerror}")


def _load_proof(data: bytes) -> tuple[bytes, bool]:
    """Return the raw proof and whether it is CBOR (JSON starts with '{')."""
    is_json = data.lstrip()[:1] == b"{"
    return data, not is_json


def _time(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key in value:
            rows.extend(_flatten(value[key], f"{prefix}.{key}" if prefix else key))
    elif isinstance(value, list):
        if not value:
            rows.append((prefix, "[]"))
        for index, item in enumerate(value):
            rows.extend(_flatten(item, f"{prefix}[{index}]"))
    else:
        rows.append((prefix, json.dumps(value, ensure_ascii=False)))
    return rows


def _context_table(ctx: Any) -> Table:
    table = Table(title="Transaction context", show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for path, value in _flatten(ctx):
        table.add_row(path, value)
    return table


# --- keygen ---
@click.command()
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (PEM). The public key goes to NAME.pub.pem.",
)
@click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Encrypt the private key with the passphrase in this environment variable.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(out_path: Path, passphrase_env: str | None, force: bool) -> None:
    """Generate an ES256 (P-256) signing key and print its kid."""
    passphrase = _passphrase(passphrase_env)
    pub_path = out_path.with_name(out_path.name.removesuffix(".pem") + ".pub.pem")
    for path in (out_path, pub_path):
        if path.exists() and not force:
            _usage_error(f"{path} exists (use --force to overwrite)")
    key = generate_private_key()
    # O_EXCL unless --force closes the exists-then-write race; fchmod before the first
    # write means an existing world-readable file never holds the key, even briefly.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(out_path, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(private_key_to_pem(key, passphrase))
        pub_path.write_bytes(public_key_to_pem(key))
    except OSError as exc:
        _usage_error(f"cannot write key: {exc}")
    click.echo(kid_for(key))
    err.print(f"private key: {out_path} ({'encrypted' if passphrase else 'unencrypted'})")
    err.print(f"public key:  {pub_path}")


# --- sign ---
@click.command()
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key (PEM).",
)
@click.option(
    "--context",
    "context_path",
    required=True,
    help="Transaction context as a JSON file ('-' for stdin).",
)
@click.option("--aud", required=True, help="Audience: the relying party the proof is for.")
@click.option("--sub", required=True, help="Subject: the user id of the signer.")
@click.option(
    "--ttl",
    default=300,
    show_default=True,
    type=click.IntRange(1, 86400),
    help="Seconds until the proof expires.",
)
@click.option("--nonce", "nonce_hex", help="Nonce as hex (16-64 bytes); random if omitted.")
@click.option("--passphrase-env", metavar="VAR", help="Passphrase of an encrypted key.")
@click.option("--cbor", "as_cbor", is_flag=True, help="Write the CBOR envelope to stdout.")
@click.option("--no-public-key", is_flag=True, help="Leave public_key out of the envelope.")
def sign(
    key_path: Path,
    context_path: str,
    aud: str,
    sub: str,
    ttl: int,
    nonce_hex: str | None,
    passphrase_env: str | None,
    as_cbor: bool,
    no_public_key: bool,
) -> None:
    """Sign a transaction context and print the proof envelope (JSON)."""
    try:
        key = load_private_key_pem(_read_input(str(key_path)), _passphrase(passphrase_env))
    except KeyFormatError as exc:
        _usage_error(f"{key_path}: {exc}")
    try:
        ctx = json.loads(_read_input(context_path))
    except (ValueError, RecursionError) as exc:
        _usage_error(f"{context_path}: not valid JSON: {str(exc)[:200] or 'nested too deeply'}")
    nonce: bytes | None = None
    if nonce_hex is not None:
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            _usage_error("--nonce must be hex")
    try:
        proof = create_proof(
            key, ctx, aud=aud, sub=sub, ttl=ttl, nonce=nonce, include_public_key=not no_public_key
        )
    except ProofError as exc:
        _usage_error(f"{exc.code}: {exc.detail}")
    except ValueError as exc:
        _usage_error(str(exc))
    if as_cbor:
        sys.stdout.buffer.write(proof.to_cbor())
    else:
        click.echo(proof.to_json())


# --- verify ---
@click.command()
@click.option(
    "--proof", "proof_path", required=True, help="Proof envelope, JSON or CBOR ('-' for stdin)."
)
@click.option(
    "--public-key",
    "public_key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signer's public key (PEM or DER).",
)
@click.option("--aud", required=True, help="Your audience; the proof must be for it.")
@click.option("--sub", help="Require the proof's subject to be this user (the key's owner).")
@click.option(
    "--at", "at_time", type=int, metavar="UNIX_TIME", help="Verify as of this time instead of now."
)
@click.option(
    "--skew",
    default=60,
    show_default=True,
    type=click.IntRange(0, 3600),
    help="Allowed clock skew in seconds.",
)
@click.option(
    "--max-lifetime",
    default=300,
    show_default=True,
    type=click.IntRange(1, 86400 * 365),
    help="Maximum exp - iat in seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    proof_path: str,
    public_key_path: Path,
    aud: str,
    sub: str | None,
    at_time: int | None,
    skew: int,
    max_lifetime: int,
    as_json: bool,
) -> None:
    """Verify a proof offline (protocol checks 1-6) against one public key."""
    try:
        public_key = load_public_key(_read_input(str(public_key_path)))
    except KeyFormatError as exc:
        _usage_error(f"{public_key_path}: {exc}")
    raw, is_cbor = _load_proof(_read_input(proof_path))
    try:
        settings = VerifierSettings(audience=aud, clock_skew=skew, max_lifetime=max_lifetime)
    except ValueError as exc:
        _usage_error(f"--aud: {exc}")
    verifier = Verifier(
        settings,
        keys=single_key_resolver(public_key, sub=sub),
        clock=(lambda: float(at_time)) if at_time is not None else time.time,
    )
    try:
        result = verifier.verify(raw, cbor=is_cbor)
    except ProofError as exc:
        _rejected(exc)
    intent = result.intent
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "proof_id": result.proof_id,
                    "sub": intent.sub,
                    "kid": result.key.kid,
                    "aud": intent.aud,
                    "iat": intent.iat,
                    "exp": intent.exp,
                    "context": intent.ctx,
                }
            )
        )
        return
    out.print("[bold green]valid proof[/]")
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    summary.add_row("proof id", result.proof_id)
    summary.add_row("subject", intent.sub)
    summary.add_row("audience", intent.aud)
    summary.add_row("key id", result.key.kid)
    summary.add_row("issued", _time(intent.iat))
    summary.add_row("expires", _time(intent.exp))
    out.print(summary)
    out.print(_context_table(intent.ctx))


# --- inspect ---
@click.command(name="inspect")
@click.argument("proof_path")
@click.option("--json", "as_json", is_flag=True, help="Print the decoded proof as JSON.")
def inspect_cmd(proof_path: str, as_json: bool) -> None:
    """Decode a proof and pretty-print its intent WITHOUT verifying anything."""
    raw, is_cbor = _load_proof(_read_input(proof_path))
    try:
        proof = Proof.from_cbor(raw) if is_cbor else Proof.from_json(raw)
        intent = Intent.from_bytes(proof.intent, ContextLimits(max_depth=30, max_bytes=1 << 20))
    except ProofError as exc:
        _rejected(exc)
    d = digest(proof.intent)
    view = {
        "alg": proof.alg,
        "kid": proof.kid,
        "proof_id": proof_id(d),
        "digest": d.hex(),
        "intent": intent.to_json_dict(),
        "has_public_key": proof.public_key is not None,
    }
    if as_json:
        click.echo(json.dumps(view, indent=2, ensure_ascii=False))
        return
    out.print("[bold yellow]NOT VERIFIED[/] - decoded only")
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    for label, value in (
        ("algorithm", proof.alg),
        ("key id", proof.kid),
        ("proof id", view["proof_id"]),
        ("subject", intent.sub),
        ("audience", intent.aud),
        ("issued", _time(intent.iat)),
        ("expires", _time(intent.exp)),
        ("nonce", intent.nonce.hex()),
    ):
        summary.add_row(label, str(value))
    out.print(summary)
    out.print(_context_table(intent.ctx))
