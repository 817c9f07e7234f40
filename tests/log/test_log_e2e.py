"""End to end over HTTP: receipts verify offline, rewrites are caught, keys are watched."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .relay_harness import Relay

pytestmark = pytest.mark.slow


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    r = Relay(tmp_path)
    r.create_api_key()
    r.start()
    try:
        yield r
    finally:
        r.stop()


def _pin(relay: Relay, where: Path) -> Path:
    pem = httpx.get(f"{relay.url}/log/public-key", params={"format": "pem"}, timeout=10).text
    where.write_text(pem)
    return where


def _bump_size(note: str) -> str:
    lines = note.split("\n")
    lines[1] = str(int(lines[1]) + 1)
    return "\n".join(lines)


def _checkpoint_now(relay: Relay) -> None:
    with relay.http() as http:
        assert http.post("/log/checkpoint").status_code == 200


def test_receipt_verifies_offline_and_tampering_is_caught(relay: Relay, tmp_path: Path) -> None:
    answers = relay.approve(3)
    assert [a["leaf_index"] for a in answers] == sorted(a["leaf_index"] for a in answers)
    event_id = answers[1]["audit_event_id"]
    receipt = tmp_path / "receipt.json"
    relay.cli("log", "receipt", event_id, "--relay", relay.url, "--out", str(receipt), check=True)
    # "another machine": a copy of the receipt and the public key, no relay, no database
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(receipt, other / "receipt.json")
    pub = _pin(relay, other / "log.pub")
    relay.stop()
    ok = relay.cli("log", "check-receipt", str(other / "receipt.json"), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert f"leaf {answers[1]['leaf_index']}" in ok.stdout

    doc = json.loads(receipt.read_text())
    mutations: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
        (
            "entry",
            lambda d: {
                **d,
                "entry": d["entry"][:-4] + ("AAAA" if d["entry"][-4:] != "AAAA" else "BBBB"),
            },
        ),
        ("leaf_index", lambda d: {**d, "leaf_index": d["leaf_index"] + 1}),
        ("inclusion_proof", lambda d: {**d, "inclusion_proof": d["inclusion_proof"][::-1]}),
        ("checkpoint", lambda d: {**d, "checkpoint": _bump_size(d["checkpoint"])}),
    ]
    for field, mutate in mutations:
        bad = other / f"bad-{field}.json"
        bad.write_text(json.dumps(mutate(doc)))
        res = relay.cli("log", "check-receipt", str(bad), "--public-key", str(pub))
        assert res.returncode == 1, (field, res.stdout, res.stderr)
        assert "FAILED" in res.stderr


def test_checkpoints_survive_restart_and_verify_keeps_state(relay: Relay, tmp_path: Path) -> None:
    relay.approve(2)
    _checkpoint_now(relay)
    pub = _pin(relay, tmp_path / "log.pub")
    state = tmp_path / "state.json"
    first = relay.cli(
        "log", "verify", "--relay", relay.url, "--public-key", str(pub), "--state", str(state)
    )
    assert first.returncode == 0, first.stderr
    saved = json.loads(state.read_text())["checkpoint"]
    relay.stop()
    relay.start()
    assert httpx.get(f"{relay.url}/log/checkpoint", timeout=10).text == saved
    relay.approve(2)
    _checkpoint_now(relay)
    again = relay.cli(
        "log",
        "verify",
        "--relay",
        relay.url,
        "--public-key",
        str(pub),
        "--state",
        str(state),
        "--full",
    )
    assert again.returncode == 0, again.stderr
    assert "consistent with the checkpoint of size" in again.stdout
    assert "full check OK" in again.stdout


@pytest.mark.parametrize("how", ["alter", "insert", "reorder", "delete"])
def test_rewritten_history_is_detected(relay: Relay, tmp_path: Path, how: str) -> None:
    relay.approve(4)
    _checkpoint_now(relay)
    pub = _pin(relay, tmp_path / "log.pub")
    state = tmp_path / "state.json"
    args = ["log", "verify", "--relay", relay.url, "--public-key", str(pub), "--state", str(state)]
    assert relay.cli(*args).returncode == 0
    snapshot = state.read_text()
    relay.stop()
    relay.rewrite_history(how)
    relay.start()
    relay.approve(1)  # the log moves on; a fresh checkpoint is signed over the forged tree
    _checkpoint_now(relay)
    res = relay.cli(*args)
    assert res.returncode == 1, res.stdout
    assert "history was rewritten" in res.stderr or "truncated" in res.stderr, res.stderr
    state.write_text(snapshot)
    full = relay.cli(*args, "--full")
    assert full.returncode == 1
    assert "FAILED" in full.stderr


def test_row_edit_without_tree_rewrite_is_caught_by_full_check(
    relay: Relay, tmp_path: Path
) -> None:
    relay.approve(3)
    _checkpoint_now(relay)
    pub = _pin(relay, tmp_path / "log.pub")
    state = tmp_path / "state.json"
    args = ["log", "verify", "--relay", relay.url, "--public-key", str(pub), "--state", str(state)]
    assert relay.cli(*args).returncode == 0
    relay.alter_row_only(seq=3)
    full = relay.cli(*args, "--full")
    assert full.returncode == 1
    assert "leaf 2" in full.stderr and "altered" in full.stderr, full.stderr


def test_replaced_key_is_flagged_and_rotation_is_accepted(relay: Relay, tmp_path: Path) -> None:
    relay.approve(1)
    _checkpoint_now(relay)
    pub = _pin(relay, tmp_path / "log.pub")
    state = tmp_path / "state.json"
    args = ["log", "verify", "--relay", relay.url, "--public-key", str(pub), "--state", str(state)]
    assert relay.cli(*args).returncode == 0
    relay.stop()

    # 1. the key file is swapped behind the log's back
    original = relay.key_file.read_bytes()
    relay.key_file.unlink()
    relay.start()
    relay.approve(1)
    _checkpoint_now(relay)
    r = httpx.get(f"{relay.url}/log/checkpoint", timeout=10)
    assert "rotation record" in r.headers["proof-messenger-log-warning"]
    assert (
        httpx.get(f"{relay.url}/log/public-key", timeout=10).json()["key_status"]
        == "unrecorded_change"
    )
    res = relay.cli(*args)
    assert res.returncode == 1
    assert "without a valid rotation record" in res.stderr
    relay.stop()

    # 2. put the recorded key back, then rotate properly
    relay.key_file.write_bytes(original)
    rot = relay.cli("log", "rotate-key", check=True)
    assert "log key rotated" in rot.stdout
    relay.start()
    relay.approve(1)
    _checkpoint_now(relay)
    r = httpx.get(f"{relay.url}/log/checkpoint", timeout=10)
    assert "proof-messenger-log-warning" not in r.headers
    res = relay.cli(*args)
    assert res.returncode == 0, res.stderr
    assert "verified rotation note" in res.stdout
