"""The policy in force: loading from the relay config or its own file, hot reload, enforcement.

Reload: a SIGHUP or a change of the watched file (mtime/size/inode polled every
``reload_interval_seconds``) re-reads the policy. A valid policy replaces the old one
atomically (one reference swap; a request evaluates against one policy from start to
end); an invalid one is refused, logged, counted in
``proof_messenger_policy_reload_failures_total``, and the old policy stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from prometheus_client import Counter

from ..protocol import VerifiedProof
from ..protocol.errors import PolicyDenied
from ..store.base import AuditRecord, PolicyApproval, Store
from .policy import ApprovalRule, Decision, Facts, Policy, PolicyError, evaluate, parse_policy
from .policy import transaction_key as tx_key_of
from .service import Identity, iso

__all__ = [
    "PolicyEnforcer",
    "PolicyManager",
    "authorization_body",
    "load_policy_config",
]

log = structlog.get_logger("proof_messenger.policy")
_SECTION_KEYS = frozenset({"rules", "file", "reload_interval_seconds"})
_reload_failures: Counter | None = None


def _failures_counter() -> Counter:
    global _reload_failures
    if _reload_failures is None:
        _reload_failures = Counter(
            "proof_messenger_policy_reload_failures_total",
            "Policy reloads refused because the new policy was invalid or unreadable.",
        )
    return _reload_failures


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    policy: Policy
    #: The file a reload re-reads: the policy file, or the relay config for an inline policy.
    watch: Path | None
    reload_interval: float
    loader: Callable[[], Policy]


def load_policy_config(section: Any, config_path: Path | None) -> PolicyConfig | None:
    """Validate ``policy:`` (inline ``rules`` or ``file``); None when there is no policy."""
    if section is None:
        return None
    interval = _interval(section)
    base = config_path.parent if config_path is not None else Path.cwd()
    if isinstance(section, Mapping) and "file" in section:
        raw_file = section["file"]
        if not isinstance(raw_file, str) or not raw_file:
            raise PolicyError("policy.file: must be a path")
        path = (base / raw_file).resolve()

        def from_file() -> Policy:
            return _read_policy_file(path)

        return PolicyConfig(from_file(), path, interval, from_file)
    policy = _parse_section(section)
    if config_path is None:
        return PolicyConfig(policy, None, interval, lambda: policy)
    cfg = config_path.resolve()

    def from_config() -> Policy:
        doc = _read_yaml(cfg)
        new_section = doc.get("policy") if isinstance(doc, Mapping) else None
        if new_section is None:
            raise PolicyError(f"{cfg}: the policy section was removed (refusing to drop policy)")
        if isinstance(new_section, Mapping) and "file" in new_section:
            raise PolicyError("policy.file: switching to a policy file needs a restart")
        return _parse_section(new_section)

    return PolicyConfig(policy, cfg, interval, from_config)


def _interval(section: Any) -> float:
    if not isinstance(section, Mapping):
        raise PolicyError("policy: must be a mapping with 'rules' or 'file'")
    unknown = set(section) - _SECTION_KEYS
    if unknown:
        raise PolicyError(f"policy.{sorted(unknown)[0]}: unknown setting")
    if "rules" in section and "file" in section:
        raise PolicyError("policy: give either 'rules' or 'file', not both")
    value = section.get("reload_interval_seconds", 2)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise PolicyError("policy.reload_interval_seconds: a number from 0 (off) to 3600")
    return float(value)


def _parse_section(section: Mapping[str, Any]) -> Policy:
    return parse_policy({k: v for k, v in section.items() if k == "rules"}, "policy")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc


def _read_policy_file(path: Path) -> Policy:
    return parse_policy(_read_yaml(path), f"policy.file ({path})")


class PolicyManager:
    """Holds the policy in force and swaps it on a valid reload."""

    def __init__(self, config: PolicyConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.current: Policy = config.policy
        self.loaded_at = clock()
        self.clock = clock
        self.failures = 0
        self.last_error: str | None = None
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.config.watch is None:
            return None
        try:
            st = os.stat(self.config.watch)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, reason: str) -> bool:
        """Re-read the policy; True if a valid policy is now in force (changed or not)."""
        self._stamp = self._file_stamp()
        try:
            policy = self.config.loader()
        except PolicyError as exc:
            self.failures += 1
            self.last_error = str(exc)
            _failures_counter().inc()
            log.error(
                "policy.reload_refused",
                reason=reason,
                error=str(exc)[:500],
                version_in_force=self.current.version,
            )
            return False
        self.last_error = None
        if policy.version != self.current.version:
            log.info("policy.reloaded", reason=reason, old=self.current.version, new=policy.version)
            self.current = policy
            self.loaded_at = self.clock()
        return True

    def changed_on_disk(self) -> bool:
        return self.config.watch is not None and self._file_stamp() != self._stamp

    async def watch(self) -> None:
        """Poll the watched file; reload when it changes (runs until cancelled)."""
        interval = self.config.reload_interval
        if self.config.watch is None or interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            if self.changed_on_disk():
                self.reload("file_changed")

    def install_sighup(self) -> bool:
        """Reload on SIGHUP (main thread of a POSIX process only)."""
        if not hasattr(signal, "SIGHUP"):
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload, "sighup")
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        return True

    def remove_sighup(self) -> None:
        if hasattr(signal, "SIGHUP"):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.current.version,
            "loaded_at": iso(self.loaded_at),
            "source": str(self.config.watch) if self.config.watch else "inline",
            "reload": {
                "interval_seconds": self.config.reload_interval,
                "failures": self.failures,
                "last_error": self.last_error,
            },
            "rules": self.current.raw.get("rules", []),
        }


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """What check 9 hands to the service for a proof that counts as an approval.

    ``approval_row`` is written by ``Store.append`` in the audit row's transaction.
    """

    decision: Decision
    approval_row: PolicyApproval


class PolicyEnforcer:
    """The ``service.policy`` hook: check 9, then the N-of-M bookkeeping after the commit."""

    def __init__(
        self, manager: PolicyManager, store: Store, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.manager = manager
        self.store = store
        self.clock = clock

    async def check(self, verified: VerifiedProof, identity: Identity | None) -> Any:
        intent = verified.intent
        facts = Facts(
            ctx=intent.ctx,
            sub=intent.sub,
            roles=identity.roles if identity is not None else None,
            alg=verified.parsed.proof.alg,
            user_verified=verified.user_verified,
            iat=intent.iat,
            now=self.clock(),
        )
        decision = evaluate(self.manager.current, facts)
        if decision.outcome == "deny":
            raise PolicyDenied(decision.reason, rule=decision.rule)
        if decision.outcome == "approval":
            row = PolicyApproval(
                tx_key=tx_key_of(intent.ctx),
                sub=intent.sub,
                proof_id=verified.proof_id,
                rule=decision.rule,
                roles=tuple(sorted(facts.roles or ())),
                at=facts.now,
            )
            return PendingApproval(decision, row)
        return None

    async def after_accept(
        self, verified: VerifiedProof, record: AuditRecord, pending: Any
    ) -> dict[str, Any]:
        """The N-of-M state after the approval row committed with the audit row.

        The row was inserted with ``ON CONFLICT (tx_key, sub) DO NOTHING``: the same
        approver counts once, whichever relay instance saw which proof.
        """
        if not isinstance(pending, PendingApproval):
            return {}
        tx_key = pending.approval_row.tx_key
        approvals = await self.store.list_policy_approvals(tx_key)
        assert pending.decision.approval is not None
        return {
            "authorization": authorization_body(
                tx_key, pending.decision.rule, pending.decision.approval, approvals
            )
        }


def authorization_body(
    tx_key: str, rule: str, requirement: ApprovalRule | None, approvals: list[PolicyApproval]
) -> dict[str, Any]:
    """The N-of-M state: approvals by distinct subjects holding a qualifying role."""
    roles = requirement.roles if requirement is not None else frozenset()
    counted = [a for a in approvals if roles & set(a.roles)]
    body: dict[str, Any] = {
        "transaction_key": tx_key,
        "rule": rule,
        "approvals": [
            {"sub": a.sub, "proof_id": a.proof_id, "roles": list(a.roles), "at": iso(a.at)}
            for a in counted
        ],
    }
    if requirement is None:
        body.update(status="unknown", required=None, still_needed=None)
        return body
    missing = max(0, requirement.required - len(counted))
    body.update(
        status="complete" if missing == 0 else "pending",
        required=requirement.required,
        still_needed={"count": missing, "roles": sorted(requirement.roles)},
    )
    return body
