"""``proof-messenger log ...``: verify the relay's Merkle log, print and check receipts.

Exit codes: 0 verified, 1 a verification failed (the reason is printed), 2 usage/input error.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..audit.checkpoint import Checkpoint, CheckpointError, LogSigner, NoteVerifier, key_id_of
from ..audit.merkle import CompactTree, leaf_hash
from ..client.receipts import (
    Receipt,
    ReceiptError,
    check_consistency,
    decode_entry,
    fetch_receipt,
    load_verifier,
    rotation_text,
    verify_receipt,
    verify_rotation,
)
from ._relay import config_option, fail, settings_from, with_store

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@click.group("log")
def command() -> None:
    """Verify the relay's verifiable audit log (RFC 6962 Merkle tree, signed checkpoints)."""


def _bad(message: str) -> NoReturn:
    err.print(f"[bold red]FAILED:[/] {message}")
    sys.exit(1)


def _api_key(var: str | None) -> str | None:
    return os.environ.get(var) if var else None


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _get(http: Any, url: str, **params: Any) -> Any:
    import httpx

    try:
        r = http.get(url, params=params or None)
    except httpx.HTTPError as exc:
        fail(f"{url}: {exc}")
    if r.status_code != 200:
        fail(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return r


def _trusted_chain(pinned: NoteVerifier, http: Any, base: str) -> list[NoteVerifier]:
    """The pinned key plus every key reached from it through valid rotation notes."""
    doc = _get(http, f"{base}/log/public-key").json()
    chain = [pinned]
    current = pinned
    by_parent = {h["rotated_from"]: h for h in doc.get("history", []) if h.get("rotated_from")}
    seen = {key_id_of(pinned.public_key)}
    while (nxt := by_parent.get(key_id_of(current.public_key))) is not None:
        try:
            current = verify_rotation(nxt.get("rotation_note") or "", current)
        except ReceiptError as exc:
            _bad(f"log key rotation from {key_id_of(current.public_key)}: {exc}")
        kid = key_id_of(current.public_key)
        if kid in seen:
            break
        seen.add(kid)
        chain.append(current)
        out.print(f"log key rotated (verified rotation note) to {current.verifier_key}")
    return chain


@command.command("verify")
@click.option("--relay", "relay_url", required=True, help="Relay base URL.")
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pinned log key: PEM public key or note verifier key string.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("log-state.json"),
    show_default=True,
    help="Where the last verified checkpoint is kept.",
)
@click.option("--full", is_flag=True, help="Recompute the whole tree from the entries.")
@click.option("--api-key-env", default="PROOF_MESSENGER_API_KEY", show_default=True)
def verify_cmd(
    relay_url: str, public_key: Path, state_path: Path, full: bool, api_key_env: str
) -> None:
    """Check the latest checkpoint's signature and its consistency with the last one seen."""
    import httpx

    base = relay_url.rstrip("/")
    state: dict[str, Any] = {}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            fail(f"{state_path}: not a state file ({exc})")
    key = _api_key(api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=30, headers=headers) as http:
        r = _get(http, f"{base}/log/checkpoint")
        note = r.text
        warning = r.headers.get("proof-messenger-log-warning")
        if warning:
            err.print(f"[bold yellow]relay warns:[/] {warning}")
        try:
            origin = Checkpoint.from_body(note[: note.rfind("\n\n") + 1]).origin
        except CheckpointError as exc:
            _bad(f"checkpoint is malformed: {exc}")
        if state.get("origin") and state["origin"] != origin:
            _bad(f"log origin changed from {state['origin']!r} to {origin!r}")
        try:
            pinned = load_verifier(public_key.read_text(encoding="utf-8"), origin)
        except ReceiptError as exc:
            fail(f"--public-key: {exc}")
        trusted = _trusted_chain(pinned, http, base)
        try:
            new = Checkpoint.parse(note, trusted, origin=origin)
        except CheckpointError as exc:
            _bad(
                f"checkpoint signature: {exc} -- the log key changed without a valid "
                "rotation record"
            )
        out.print(
            f"checkpoint OK: {origin} size {new.size} root {base64.b64encode(new.root_hash).decode()}"
        )
        old: Checkpoint | None = None
        if state.get("checkpoint"):
            try:
                old = Checkpoint.parse(state["checkpoint"], trusted, origin=origin)
            except CheckpointError as exc:
                fail(f"{state_path}: saved checkpoint does not verify: {exc}")
            proof: list[bytes] = []
            if 0 < old.size < new.size:
                doc = _get(
                    http, f"{base}/log/proof/consistency", **{"from": old.size, "to": new.size}
                )
                proof = [_unb64(h) for h in doc.json()["hashes"]]
            try:
                check_consistency(old, new, proof)
            except ReceiptError as exc:
                _bad(f"consistency with the checkpoint of size {old.size} seen earlier: {exc}")
            out.print(f"consistent with the checkpoint of size {old.size} seen earlier")
        if full:
            _full_check(http, base, new, old)
    state_path.write_text(
        json.dumps({"origin": origin, "checkpoint": note, "verified_at": time.time()}, indent=2),
        encoding="utf-8",
    )
    out.print(f"[green]OK[/] state saved to {state_path}")


def _full_check(http: Any, base: str, new: Checkpoint, old: Checkpoint | None) -> None:
    """Recompute every leaf from its entry bytes and the roots of both checkpoints."""
    tree = CompactTree()
    first_stale: str | None = None
    columns = (
        TextColumn("recomputing tree"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("tree", total=new.size)
        while tree.size < new.size:
            r = http.get(
                f"{base}/log/entries",
                params={"start": tree.size, "end": min(new.size, tree.size + 1000)},
            )
            if r.status_code != 200:
                fail(f"/log/entries: HTTP {r.status_code}: {r.text[:200]} (needs audit:read)")
            entries = r.json()["entries"]
            if not entries:
                _bad(f"entries end at leaf {tree.size} but the checkpoint has {new.size}: deleted")
            for e in entries:
                index = tree.size
                entry = _unb64(e["entry"])
                try:
                    fields = decode_entry(entry)
                except ReceiptError as exc:
                    _bad(f"leaf {index}: {exc}")
                if e["leaf_index"] != index or fields.get("seq") != index + 1:
                    _bad(
                        f"leaf {index}: the relay served seq {fields.get('seq')} "
                        "(entries missing, inserted or reordered)"
                    )
                leaf = leaf_hash(entry)
                if first_stale is None and e.get("leaf_hash") and _unb64(e["leaf_hash"]) != leaf:
                    first_stale = (
                        f"leaf {index} (event {e['event_id']}) was altered after it was logged"
                    )
                tree.append(leaf)
                if old is not None and tree.size == old.size and tree.root() != old.root_hash:
                    _bad(
                        f"entries 0..{old.size - 1} no longer hash to the checkpoint of size "
                        f"{old.size} seen earlier" + (f"; {first_stale}" if first_stale else "")
                    )
                if tree.size == new.size:
                    break
            progress.update(task, completed=tree.size)
    if tree.root() != new.root_hash:
        _bad(
            f"the entries do not hash to the signed root of size {new.size}"
            + (f": {first_stale}" if first_stale else "")
        )
    out.print(f"full check OK: {new.size} entries recomputed, root matches")


@command.command("receipt")
@click.argument("event_id")
@click.option("--relay", "relay_url", required=True, help="Relay base URL.")
@click.option("--api-key-env", default="PROOF_MESSENGER_API_KEY", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path))
def receipt_cmd(event_id: str, relay_url: str, api_key_env: str, out_path: Path | None) -> None:
    """Print an offline-verifiable receipt: entry, inclusion proof, signed checkpoint."""
    try:
        receipt = fetch_receipt(relay_url, event_id, _api_key(api_key_env))
    except ReceiptError as exc:
        fail(str(exc))
    text = receipt.to_json() + "\n"
    if out_path:
        out_path.write_text(text, encoding="utf-8")
        err.print(f"receipt written to {out_path}")
    else:
        click.echo(text, nl=False)


@command.command("check-receipt")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
def check_receipt_cmd(file: Path, public_key: Path) -> None:
    """Verify a receipt with no network: signature, leaf hash, inclusion proof."""
    try:
        receipt = Receipt.from_json(file.read_bytes())
        note = receipt.checkpoint
        origin = Checkpoint.from_body(note[: note.rfind("\n\n") + 1]).origin
        verifier = load_verifier(public_key.read_text(encoding="utf-8"), origin)
        verified = verify_receipt(receipt, verifier)
    except (ReceiptError, CheckpointError) as exc:
        _bad(str(exc))
    f = verified.fields
    out.print(
        f"[green]receipt OK[/]: event {verified.event_id} ({f.get('type')}, {f.get('st')}) is "
        f"leaf {verified.leaf_index} of {verified.checkpoint.origin} at size "
        f"{verified.checkpoint.size}, signed by {verified.signed_by}"
    )


@command.command("public-key")
@config_option
def public_key_cmd(config_path: Path | None) -> None:
    """Print the log's verifier key string and PEM public key (from the key file)."""
    from ..audit.checkpoint import public_key_pem
    from ..relay.log_keys import load_or_create_log_key, log_config

    settings = settings_from(config_path)
    cfg = log_config(settings)
    key = load_or_create_log_key(settings.log_key_file)
    click.echo(LogSigner(cfg.origin, key).verifier_key)
    click.echo(public_key_pem(key), nl=False)


@command.command("rotate-key")
@config_option
def rotate_key_cmd(config_path: Path | None) -> None:
    """Replace the log key; the old key signs a rotation note recorded in the database.

    Restart the relay afterwards so it signs with the new key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..audit.checkpoint import LogKeyError, load_log_key
    from ..relay.log_keys import check_log_key, log_config
    from ..store.base import LogKeyRecord, Store

    settings = settings_from(config_path)
    cfg = log_config(settings)
    path = Path(settings.log_key_file)
    try:
        old_key = load_log_key(path)
    except LogKeyError as exc:
        fail(f"log_key_file: {exc}")
    new_key = Ed25519PrivateKey.generate()
    old, new = LogSigner(cfg.origin, old_key), LogSigner(cfg.origin, new_key)
    text = rotation_text(cfg.origin, old.verifier, new.verifier)
    note = old.sign_note(text).rstrip("\n") + "\n" + new.signature_line(text)
    verify_rotation(note, old.verifier)  # self-check before anything is written

    async def record(store: Store) -> str | None:
        warning = await check_log_key(store, old_key, time.time())
        if warning:
            return warning
        raw = new_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        await store.add_log_key(
            LogKeyRecord(
                key_id=key_id_of(new_key.public_key()),
                public_key=raw,
                created_at=time.time(),
                rotated_from=key_id_of(old_key.public_key()),
                rotation_note=note,
            )
        )
        return None

    # New key on disk first, then the record, then the swap: no step loses a key.
    backup = path.with_name(f"{path.name}.{key_id_of(old_key.public_key())}.retired")
    pem = new_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    warning = with_store(settings, record)
    if warning:
        tmp.unlink()
        fail(f"refusing to rotate: {warning}")
    os.replace(path, backup)
    os.replace(tmp, path)
    out.print(f"log key rotated: {old.verifier_key} -> {new.verifier_key}")
    out.print(f"old key kept at {backup}; restart the relay to sign with the new key")
