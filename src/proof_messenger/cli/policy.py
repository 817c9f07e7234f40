"""``proof-messenger policy``: validate the policy and evaluate a rule offline.

``check`` exit codes: 0 allow, 1 deny, 2 usage or invalid configuration, 3 allowed
only with N-of-M approvals (the proof would be accepted and counted as one approval).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..relay.config import ConfigError
from ..relay.policy import Facts, Policy, evaluate
from ..relay.policy_runtime import load_policy_config
from ._relay import config_option, fail, settings_from


def _load(config_path: Path | None) -> Policy:
    settings = settings_from(config_path)
    try:
        cfg = load_policy_config(settings.extra.get("policy"), config_path)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}")
    if cfg is None:
        fail("the configuration has no policy: section")
    return cfg.policy


@click.group("policy")
def command() -> None:
    """Business policy (protocol check 9)."""


@command.command("validate")
@config_option
def validate(config_path: Path | None) -> None:
    """Validate the policy (inline or policy.file); exit 0 if valid, 2 if not."""
    policy = _load(config_path)
    click.echo(f"policy valid: {len(policy.rules)} rules, version {policy.version}")
    for rule in policy.rules:
        click.echo(f"  {rule.name}: {'default' if rule.match_type is None else rule.match_type}")


@command.command("check")
@config_option
@click.option(
    "--context",
    "context_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Transaction context as JSON ('-' for stdin).",
)
@click.option("--roles", default="", help="Comma-separated roles of the signer (none: no token).")
@click.option("--sub", default="offline-check", show_default=True, help="Subject of the signer.")
@click.option(
    "--user-verified",
    "--amount-uv",
    "user_verified",
    is_flag=True,
    help="The proof is a passkey assertion with the UV flag set.",
)
@click.option("--at", "at", default=None, help="Evaluate at this ISO 8601 time (default: now).")
@click.option("--proof-age", default=0, show_default=True, help="Seconds between iat and --at.")
def check(
    config_path: Path | None,
    context_path: Path,
    roles: str,
    sub: str,
    user_verified: bool,
    at: str | None,
    proof_age: int,
) -> None:
    """Evaluate the policy for one context, offline; print the rule and the decision."""
    policy = _load(config_path)
    ctx = _read_context(context_path)
    now = time.time()
    if at is not None:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            fail(f"--at: {at!r} is not an ISO 8601 time")
        if moment.tzinfo is None:
            fail("--at: give a time zone offset, e.g. 2026-11-25T10:00:00+01:00")
        now = moment.timestamp()
    role_set = frozenset(r.strip() for r in roles.split(",") if r.strip())
    facts = Facts(
        ctx=ctx,
        sub=sub,
        roles=role_set if roles.strip() else None,
        alg="webauthn.ES256" if user_verified else "ES256",
        user_verified=user_verified,
        iat=int(now) - proof_age,
        now=now,
    )
    decision = evaluate(policy, facts)
    click.echo(f"rule: {decision.rule}")
    if decision.outcome == "allow":
        click.echo("ALLOW")
        sys.exit(0)
    if decision.outcome == "deny":
        click.echo(f"DENY: {decision.reason}")
        sys.exit(1)
    ap = decision.approval
    assert ap is not None
    click.echo(
        f"NEEDS-APPROVALS: {decision.reason}: {ap.required} distinct approvers with role "
        f"{', '.join(sorted(ap.roles))} (this signer qualifies)"
    )
    sys.exit(3)


def _read_context(path: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"--context {path}: {exc.strerror}")
    try:
        ctx = json.loads(text)
    except ValueError as exc:
        fail(f"--context {path}: not valid JSON: {exc}")
    if not isinstance(ctx, dict):
        fail(f"--context {path}: must be a JSON object")
    return ctx
