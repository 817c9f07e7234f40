"""Business policy (protocol check 9): rules per transaction type, evaluated purely.

This module holds the rule model, its validation (every error names the setting, e.g.
``policy.rules[2].max_amount.currency``) and :func:`evaluate`, a pure function of the
rules and the facts about one proof (context, verified roles, algorithm, UV flag,
issued-at, now). Loading, reloading and the HTTP/DB side live in ``policy_runtime.py``.

Every denial names the rule and says why in words an operator can act on; a rule that
cannot be evaluated (no amount in the context, a currency the limit is not in, no
verified roles where roles matter) denies rather than guesses.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..protocol import cbor
from ..protocol.encoding import b64u_encode
from .config import ConfigError
from .money import format_amount

__all__ = [
    "AmountLimit",
    "ApprovalRule",
    "Decision",
    "Facts",
    "HoursWindow",
    "Money",
    "Policy",
    "PolicyError",
    "Rule",
    "evaluate",
    "parse_policy",
    "transaction_key",
]

NO_RULE = "no-matching-rule"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TX_TYPE = re.compile(r"[a-z0-9_.-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RULE_KEYS = frozenset(
    {
        "name",
        "match",
        "default",
        "roles_allowed",
        "max_amount",
        "require_user_verification_above",
        "max_proof_age_seconds",
        "allowed_hours",
        "approvals",
        "description",
    }
)
_MAX_ROLE = 128
_MAX_RULES = 1000


class PolicyError(ConfigError):
    """An invalid policy document; the message names the setting."""


# --- the model -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __str__(self) -> str:
        return format_amount(self.amount_minor, self.currency)


@dataclass(frozen=True, slots=True)
class AmountLimit:
    """A maximum amount in one currency, optionally different per role (the highest wins)."""

    currency: str
    amount_minor: int | None = None  # for subjects none of whose roles is in by_role
    by_role: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HoursWindow:
    """Local business hours ``[start, end)``; ``end < start`` spans midnight."""

    start: dtime
    end: dtime
    timezone: str
    weekdays: frozenset[int]  # 0 = Monday

    def contains(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        if local.weekday() not in self.weekdays:
            return False
        t = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def describe(self) -> str:
        days = ",".join(_WEEKDAYS[d] for d in sorted(self.weekdays))
        end = "24:00" if self.end == dtime(0) and self.start != dtime(0) else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end} {days} ({self.timezone})"


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """N-of-M: ``required`` distinct subjects holding one of ``roles`` must each sign."""

    required: int
    roles: frozenset[str]
    above: Money | None = None  # None: every transaction of the rule needs approvals


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match_type: str | None  # None for the default rule
    roles_allowed: frozenset[str] | None = None
    max_amount: AmountLimit | None = None
    uv_above: Money | None = None
    max_proof_age: int | None = None
    hours: HoursWindow | None = None
    approvals: ApprovalRule | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    #: Short hash of the canonical JSON of the rules, to see which policy is in force.
    version: str
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def rule_for(self, tx_type: str | None) -> Rule | None:
        default = None
        for rule in self.rules:
            if rule.match_type is None:
                default = rule
            elif rule.match_type == tx_type:
                return rule
        return default


@dataclass(frozen=True, slots=True)
class Facts:
    """What the relay knows about one verified proof when it applies the policy."""

    ctx: Mapping[str, Any]
    sub: str
    roles: frozenset[str] | None  # None: no verified identity (no user token)
    alg: str
    user_verified: bool
    iat: int
    now: float


Outcome = Literal["allow", "deny", "approval"]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    rule: str
    reason: str
    approval: ApprovalRule | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome != "deny"


# --- evaluation ------------------------------------------------------------------------------
def evaluate(policy: Policy, facts: Facts) -> Decision:
    """Apply the rule for the context's ``type`` (or the default rule) to ``facts``."""
    tx_type = facts.ctx.get("type")
    rule = policy.rule_for(tx_type if isinstance(tx_type, str) else None)
    if rule is None:
        return Decision(
            "deny",
            NO_RULE,
            f"no rule matches transaction type {tx_type!r} and there is no default rule",
        )
    return _evaluate_rule(rule, facts)


def _evaluate_rule(rule: Rule, f: Facts) -> Decision:
    def deny(reason: str) -> Decision:
        return Decision("deny", rule.name, reason)

    roles = f.roles
    if rule.roles_allowed is not None:
        allowed = ", ".join(sorted(rule.roles_allowed))
        if roles is None:
            return deny(f"no verified roles: this rule allows only role {allowed}")
        if not roles & rule.roles_allowed:
            return deny(f"subject {_holds(roles)}; this rule allows only role {allowed}")
    if rule.max_proof_age is not None:
        age = int(f.now - f.iat)
        if age > rule.max_proof_age:
            return deny(f"proof age {age} s exceeds the maximum of {rule.max_proof_age} s")
    if rule.hours is not None and not rule.hours.contains(f.now):
        local = datetime.fromtimestamp(f.now, ZoneInfo(rule.hours.timezone))
        return deny(f"{local:%a %H:%M} is outside the allowed hours {rule.hours.describe()}")
    needs_amount = (
        rule.max_amount is not None
        or rule.uv_above is not None
        or (rule.approvals is not None and rule.approvals.above is not None)
    )
    amount: Money | None = None
    if needs_amount:
        amount, problem = _amount_of(f.ctx)
        if amount is None:
            return deny(f"{problem}, which this rule needs")
    if rule.max_amount is not None:
        assert amount is not None
        over = _check_limit(rule.max_amount, amount, roles)
        if over is not None:
            return deny(over)
    if rule.uv_above is not None:
        assert amount is not None
        if amount.currency != rule.uv_above.currency:
            return deny(_currency_mismatch(amount, rule.uv_above.currency))
        if amount.amount_minor > rule.uv_above.amount_minor and not f.user_verified:
            how = (
                "the passkey assertion did not set the UV flag"
                if f.alg.startswith("webauthn")
                else f"{f.alg} device keys cannot prove user verification; sign with a passkey"
            )
            return deny(
                f"amount {amount} is above {rule.uv_above}: user verification required ({how})"
            )
    if rule.approvals is not None:
        ap = rule.approvals
        if ap.above is not None:
            assert amount is not None
            if amount.currency != ap.above.currency:
                return deny(_currency_mismatch(amount, ap.above.currency))
            if amount.amount_minor <= ap.above.amount_minor:
                return Decision("allow", rule.name, "allowed")
        wanted = ", ".join(sorted(ap.roles))
        why = f"amount {amount} is above {ap.above}" if ap.above and amount else "this rule"
        if roles is None:
            return deny(f"no verified roles: {why} needs {ap.required} approvals by role {wanted}")
        if not roles & ap.roles:
            return deny(
                f"{why} needs {ap.required} approvals by role {wanted}; subject {_holds(roles)}"
            )
        return Decision("approval", rule.name, f"{why} needs {ap.required} approvals", ap)
    return Decision("allow", rule.name, "allowed")


def _holds(roles: frozenset[str]) -> str:
    return f"holds role {', '.join(sorted(roles))}" if roles else "holds no roles"


def _amount_of(ctx: Mapping[str, Any]) -> tuple[Money | None, str]:
    raw, currency = ctx.get("amount_minor"), ctx.get("currency")
    if type(raw) is not int:
        return None, "the context has no integer amount_minor"
    if not isinstance(currency, str) or _CURRENCY.fullmatch(currency) is None:
        return None, "the context has no ISO 4217 currency"
    return Money(raw, currency), ""


def _currency_mismatch(amount: Money, currency: str) -> str:
    return f"amount {amount} is not in {currency}, the currency of the rule's limits"


def _check_limit(limit: AmountLimit, amount: Money, roles: frozenset[str] | None) -> str | None:
    if amount.currency != limit.currency:
        return _currency_mismatch(amount, limit.currency)
    best: tuple[int, str | None] | None = None
    for role in sorted(roles or ()):
        value = limit.by_role.get(role)
        if value is not None and (best is None or value > best[0]):
            best = (value, role)
    if best is None and limit.amount_minor is not None:
        best = (limit.amount_minor, None)
    if best is None:
        who = "no verified roles" if roles is None else f"subject {_holds(roles)}"
        listed = ", ".join(sorted(limit.by_role))
        return f"{who}: no amount limit applies (limits exist for role {listed})"
    value, best_role = best
    if amount.amount_minor > value:
        cap = Money(value, limit.currency)
        suffix = f" for role {best_role}" if best_role else ""
        return f"amount {amount} exceeds {cap}{suffix}"
    return None


def transaction_key(ctx: Mapping[str, Any]) -> str:
    """The id approvals of one transaction are grouped under: a hash of the whole context.

    Approvers sign the *same* context, so equal contexts are one transaction. Put a
    ``transaction_id`` into the context to keep two otherwise identical payments apart.
    """
    data = b"proof-messenger/tx/v1\x00" + cbor.encode(dict(ctx))
    return b64u_encode(hashlib.sha256(data).digest())


# --- validation ------------------------------------------------------------------------------
def parse_policy(doc: Any, where: str = "policy") -> Policy:
    """Validate a policy document ``{"rules": [...]}``; raise :class:`PolicyError`."""
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{where}: must be a mapping with a 'rules' list")
    unknown = set(doc) - {"rules"}
    if unknown:
        raise PolicyError(f"{where}.{sorted(unknown)[0]}: unknown setting")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyError(f"{where}.rules: must be a non-empty list of rules")
    if len(raw_rules) > _MAX_RULES:
        raise PolicyError(f"{where}.rules: at most {_MAX_RULES} rules")
    rules: list[Rule] = []
    names: set[str] = set()
    types: set[str | None] = set()
    for i, raw in enumerate(raw_rules):
        at = f"{where}.rules[{i}]"
        rule = _parse_rule(raw, at)
        if rule.name in names:
            raise PolicyError(f"{at}.name: duplicate rule name {rule.name!r}")
        if rule.match_type in types:
            what = (
                "default rule" if rule.match_type is None else f"rule for type {rule.match_type!r}"
            )
            raise PolicyError(f"{at}: a second {what} (one rule per transaction type)")
        names.add(rule.name)
        types.add(rule.match_type)
        rules.append(rule)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    version = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return Policy(tuple(rules), version, raw=dict(doc))


def _parse_rule(raw: Any, at: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{at}: must be a mapping")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise PolicyError(f"{at}.{sorted(unknown)[0]}: unknown setting")
    name = raw.get("name")
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise PolicyError(f"{at}.name: required, 1-64 characters [A-Za-z0-9_.-]")
    is_default = raw.get("default", False)
    if not isinstance(is_default, bool):
        raise PolicyError(f"{at}.default: must be true or false")
    match = raw.get("match")
    match_type: str | None = None
    if is_default:
        if match is not None:
            raise PolicyError(f"{at}: a default rule has no 'match'")
    else:
        if not isinstance(match, Mapping) or set(match) != {"type"}:
            raise PolicyError(
                f"{at}.match: must be {{type: <transaction type>}} (or default: true)"
            )
        match_type = match["type"]
        if not isinstance(match_type, str) or _TX_TYPE.fullmatch(match_type) is None:
            raise PolicyError(f"{at}.match.type: must be a transaction type [a-z0-9_.-]{{1,64}}")
    roles_allowed = None
    if raw.get("roles_allowed") is not None:
        roles_allowed = _roles(raw["roles_allowed"], f"{at}.roles_allowed")
    max_age = raw.get("max_proof_age_seconds")
    if max_age is not None and (type(max_age) is not int or not 1 <= max_age <= 86400):
        raise PolicyError(f"{at}.max_proof_age_seconds: must be an integer from 1 to 86400")
    return Rule(
        name=name,
        match_type=match_type,
        roles_allowed=roles_allowed,
        max_amount=_limit(raw["max_amount"], f"{at}.max_amount")
        if raw.get("max_amount") is not None
        else None,
        uv_above=_money(
            raw["require_user_verification_above"], f"{at}.require_user_verification_above"
        )
        if raw.get("require_user_verification_above") is not None
        else None,
        max_proof_age=max_age,
        hours=_hours(raw["allowed_hours"], f"{at}.allowed_hours")
        if raw.get("allowed_hours") is not None
        else None,
        approvals=_approvals(raw["approvals"], f"{at}.approvals")
        if raw.get("approvals") is not None
        else None,
    )


def _roles(value: Any, at: str) -> frozenset[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(r, str) and 0 < len(r) <= _MAX_ROLE for r in value)
    ):
        raise PolicyError(f"{at}: must be a non-empty list of role names")
    return frozenset(value)


def _currency(value: Any, at: str) -> str:
    if not isinstance(value, str) or _CURRENCY.fullmatch(value) is None:
        raise PolicyError(f"{at}: must be an ISO 4217 code such as EUR")
    return value


def _minor(value: Any, at: str) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise PolicyError(f"{at}: must be a non-negative integer in minor units (cents)")
    return value


def _money(value: Any, at: str) -> Money:
    if not isinstance(value, Mapping) or set(value) != {"amount_minor", "currency"}:
        raise PolicyError(f"{at}: must be {{amount_minor: <int>, currency: <ISO 4217>}}")
    return Money(
        _minor(value["amount_minor"], f"{at}.amount_minor"),
        _currency(value["currency"], f"{at}.currency"),
    )


def _limit(value: Any, at: str) -> AmountLimit:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{at}: must be {{amount_minor, currency[, by_role]}}")
    unknown = set(value) - {"amount_minor", "currency", "by_role"}
    if unknown:
        raise PolicyError(f"{at}.{sorted(unknown)[0]}: unknown setting")
    currency = _currency(value.get("currency"), f"{at}.currency")
    amount = value.get("amount_minor")
    default = None if amount is None else _minor(amount, f"{at}.amount_minor")
    by_role: dict[str, int] = {}
    raw_by_role = value.get("by_role")
    if raw_by_role is not None:
        if not isinstance(raw_by_role, Mapping) or not raw_by_role:
            raise PolicyError(f"{at}.by_role: must map role names to amounts in minor units")
        for role, minor in raw_by_role.items():
            if not isinstance(role, str) or not 0 < len(role) <= _MAX_ROLE:
                raise PolicyError(f"{at}.by_role: role names must be non-empty strings")
            by_role[role] = _minor(minor, f"{at}.by_role.{role}")
    if default is None and not by_role:
        raise PolicyError(f"{at}: needs amount_minor, by_role or both")
    return AmountLimit(currency, default, by_role)


def _hours(value: Any, at: str) -> HoursWindow:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{at}: must be {{from, to, timezone[, weekdays]}}")
    unknown = set(value) - {"from", "to", "timezone", "weekdays"}
    if unknown:
        raise PolicyError(f"{at}.{sorted(unknown)[0]}: unknown setting")
    start, end = _hhmm(value.get("from"), f"{at}.from"), _hhmm(value.get("to"), f"{at}.to")
    if start == end:
        raise PolicyError(f"{at}: 'from' and 'to' must differ")
    tz = value.get("timezone")
    if not isinstance(tz, str) or not tz:
        raise PolicyError(f"{at}.timezone: required, an IANA zone such as Europe/Berlin")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PolicyError(
            f"{at}.timezone: unknown time zone {tz!r} (is the system tz database or the "
            "tzdata package installed?)"
        ) from exc
    days = value.get("weekdays", list(_WEEKDAYS))
    if not isinstance(days, list) or not days or not all(d in _WEEKDAYS for d in days):
        raise PolicyError(f"{at}.weekdays: must be a non-empty list of {', '.join(_WEEKDAYS)}")
    return HoursWindow(start, end, tz, frozenset(_WEEKDAYS.index(d) for d in days))


def _hhmm(value: Any, at: str) -> dtime:
    if not isinstance(value, str) or _HHMM.fullmatch(value) is None:
        raise PolicyError(f'{at}: must be a quoted time "HH:MM" (24-hour)')
    if value == "24:00":
        return dtime(0)
    hours, minutes = value.split(":")
    return dtime(int(hours), int(minutes))


def _approvals(value: Any, at: str) -> ApprovalRule:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{at}: must be {{required, roles[, above]}}")
    unknown = set(value) - {"required", "roles", "above"}
    if unknown:
        raise PolicyError(f"{at}.{sorted(unknown)[0]}: unknown setting")
    required = value.get("required")
    if type(required) is not int or not 1 <= required <= 20:
        raise PolicyError(f"{at}.required: must be an integer from 1 to 20")
    roles = _roles(value.get("roles"), f"{at}.roles")
    above = _money(value["above"], f"{at}.above") if value.get("above") is not None else None
    return ApprovalRule(required, roles, above)
