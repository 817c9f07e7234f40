"""``proof-messenger policy check|validate`` as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .harness import cli
from .test_policy_e2e import policy_doc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy_doc()))
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(yaml.safe_dump({"policy": {"file": "policy.yaml"}}))
    return cfg


def check(cfg: Path, ctx: dict[str, object], *args: str) -> tuple[int, str]:
    ctx_file = cfg.parent / "ctx.json"
    ctx_file.write_text(json.dumps(ctx))
    result = cli(cfg.parent, cfg, "policy", "check", "--context", str(ctx_file), *args)
    return result.returncode, result.stdout + result.stderr


WIRE = {"type": "wire_transfer", "amount_minor": 250_000_000, "currency": "EUR"}


def test_deny_prints_rule_and_reason(config: Path) -> None:
    code, out = check(config, WIRE, "--roles", "clerk")
    assert code == 1
    assert "rule: wire-over-limit" in out
    assert "DENY: amount 2,500,000.00 EUR exceeds 1,000,000.00 EUR for role clerk" in out


def test_allow(config: Path) -> None:
    code, out = check(config, {**WIRE, "amount_minor": 100}, "--roles", "clerk,other")
    assert (code, "ALLOW" in out) == (0, True)


def test_needs_approvals(config: Path) -> None:
    code, out = check(config, WIRE, "--roles", "treasury")
    assert code == 3
    assert "NEEDS-APPROVALS" in out and "2 distinct approvers with role treasury" in out


def test_uv_flag_and_time(config: Path) -> None:
    card = {"type": "card_payment", "amount_minor": 60_000, "currency": "EUR"}
    assert check(config, card)[0] == 1
    assert check(config, card, "--user-verified")[0] == 0
    assert check(config, {"type": "fx_closed"}, "--at", "not-a-time")[0] == 2


def test_validate(config: Path, tmp_path: Path) -> None:
    ok = cli(tmp_path, config, "policy", "validate")
    assert ok.returncode == 0 and "policy valid: 6 rules" in ok.stdout
    (tmp_path / "policy.yaml").write_text("rules:\n  - name: x\n")
    bad = cli(tmp_path, config, "policy", "validate")
    assert bad.returncode == 2
    assert "rules[0].match" in bad.stderr
