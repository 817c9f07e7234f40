"""The policy engine as a pure function: every rule allowing and denying, amounts, hours."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proof_messenger.relay.money import currency_exponent, format_amount
from proof_messenger.relay.policy import (
    NO_RULE,
    Facts,
    PolicyError,
    evaluate,
    parse_policy,
    transaction_key,
)

BERLIN = ZoneInfo("Europe/Berlin")
# Wednesday 2026-11-25 10:00 in Berlin.
WED_10 = datetime(2026, 11, 25, 10, 0, tzinfo=BERLIN).timestamp()

POLICY = parse_policy(
    {
        "rules": [
            {
                "name": "wire-over-limit",
                "match": {"type": "wire_transfer"},
                "roles_allowed": ["clerk", "treasury"],
                "max_amount": {
                    "currency": "EUR",
                    "by_role": {"clerk": 100_000_000, "treasury": 500_000_000},
                },
                "approvals": {
                    "required": 2,
                    "roles": ["treasury"],
                    "above": {"amount_minor": 100_000_000, "currency": "EUR"},
                },
            },
            {
                "name": "card-uv",
                "match": {"type": "card_payment"},
                "require_user_verification_above": {"amount_minor": 50_000, "currency": "EUR"},
                "max_proof_age_seconds": 60,
            },
            {
                "name": "fx-hours",
                "match": {"type": "fx_trade"},
                "allowed_hours": {
                    "from": "08:00",
                    "to": "18:00",
                    "timezone": "Europe/Berlin",
                    "weekdays": ["mon", "tue", "wed", "thu", "fri"],
                },
            },
            {
                "name": "yen-limit",
                "match": {"type": "yen_transfer"},
                "max_amount": {"amount_minor": 1_000_000, "currency": "JPY"},
            },
            {
                "name": "default",
                "default": True,
                "max_amount": {"amount_minor": 1_000_00, "currency": "EUR"},
            },
        ]
    }
)


def facts(
    ctx: dict[str, Any],
    roles: set[str] | None = None,
    *,
    uv: bool = False,
    alg: str = "ES256",
    age: int = 0,
    now: float = WED_10,
) -> Facts:
    return Facts(
        ctx=ctx,
        sub="alice",
        roles=None if roles is None else frozenset(roles),
        alg=alg,
        user_verified=uv,
        iat=int(now) - age,
        now=now,
    )


def wire(amount: int, currency: str = "EUR") -> dict[str, Any]:
    return {"type": "wire_transfer", "amount_minor": amount, "currency": currency}


# --- max_amount and roles_allowed -----------------------------------------------------------
def test_clerk_within_limit_is_allowed() -> None:
    d = evaluate(POLICY, facts(wire(50_000_00), {"clerk"}))
    assert (d.outcome, d.rule) == ("allow", "wire-over-limit")


def test_clerk_over_limit_is_denied_naming_rule_and_amounts() -> None:
    d = evaluate(POLICY, facts(wire(2_500_000_00), {"clerk"}))
    assert d.outcome == "deny"
    assert d.rule == "wire-over-limit"
    assert d.reason == "amount 2,500,000.00 EUR exceeds 1,000,000.00 EUR for role clerk"


def test_highest_role_limit_wins() -> None:
    d = evaluate(POLICY, facts(wire(4_000_000_00), {"clerk", "treasury"}))
    assert d.outcome == "approval"  # treasury limit 5M applies, above 1M -> approvals
    d = evaluate(POLICY, facts(wire(6_000_000_00), {"clerk", "treasury"}))
    assert d.reason == "amount 6,000,000.00 EUR exceeds 5,000,000.00 EUR for role treasury"


def test_role_not_allowed() -> None:
    d = evaluate(POLICY, facts(wire(100), {"intern"}))
    assert d.outcome == "deny"
    assert "holds role intern" in d.reason and "clerk, treasury" in d.reason


def test_no_verified_roles_denies_role_gated_rule() -> None:
    d = evaluate(POLICY, facts(wire(100), None))
    assert d.outcome == "deny"
    assert d.reason.startswith("no verified roles")


def test_currency_mismatch_denies() -> None:
    d = evaluate(POLICY, facts(wire(100, "USD"), {"clerk"}))
    assert d.outcome == "deny"
    assert "not in EUR" in d.reason


def test_missing_amount_denies() -> None:
    d = evaluate(POLICY, facts({"type": "wire_transfer"}, {"clerk"}))
    assert d.outcome == "deny"
    assert "amount_minor" in d.reason


def test_amount_equal_to_limit_is_allowed_and_yen_has_no_decimals() -> None:
    assert (
        evaluate(
            POLICY, facts({"type": "yen_transfer", "amount_minor": 1_000_000, "currency": "JPY"})
        ).outcome
        == "allow"
    )
    d = evaluate(
        POLICY, facts({"type": "yen_transfer", "amount_minor": 1_000_001, "currency": "JPY"})
    )
    assert d.reason == "amount 1,000,001 JPY exceeds 1,000,000 JPY"


# --- approvals ------------------------------------------------------------------------------
def test_treasury_above_threshold_needs_approvals() -> None:
    d = evaluate(POLICY, facts(wire(2_500_000_00), {"treasury"}))
    assert d.outcome == "approval"
    assert d.approval is not None and d.approval.required == 2
    assert d.approval.roles == frozenset({"treasury"})


def test_treasury_at_threshold_needs_no_approvals() -> None:
    assert evaluate(POLICY, facts(wire(1_000_000_00), {"treasury"})).outcome == "allow"


def test_non_qualifying_role_cannot_approve() -> None:
    policy = parse_policy(
        {
            "rules": [
                {
                    "name": "wires",
                    "match": {"type": "wire_transfer"},
                    "approvals": {"required": 2, "roles": ["treasury"]},
                }
            ]
        }
    )
    d = evaluate(policy, facts(wire(10), {"clerk"}))
    assert d.outcome == "deny"
    assert d.reason == "this rule needs 2 approvals by role treasury; subject holds role clerk"


# --- user verification, proof age -----------------------------------------------------------
def card(amount: int) -> dict[str, Any]:
    return {"type": "card_payment", "amount_minor": amount, "currency": "EUR"}


def test_uv_not_needed_below_threshold() -> None:
    assert evaluate(POLICY, facts(card(50_000))).outcome == "allow"


def test_es256_above_uv_threshold_is_denied() -> None:
    d = evaluate(POLICY, facts(card(50_001)))
    assert d.outcome == "deny" and d.rule == "card-uv"
    assert "ES256 device keys cannot prove user verification" in d.reason


def test_passkey_without_uv_is_denied_with_uv_allowed() -> None:
    d = evaluate(POLICY, facts(card(60_000), alg="webauthn.ES256"))
    assert "did not set the UV flag" in d.reason
    assert evaluate(POLICY, facts(card(60_000), alg="webauthn.ES256", uv=True)).outcome == "allow"


def test_proof_age() -> None:
    assert evaluate(POLICY, facts(card(1), age=60)).outcome == "allow"
    d = evaluate(POLICY, facts(card(1), age=61))
    assert d.reason == "proof age 61 s exceeds the maximum of 60 s"


# --- hours ----------------------------------------------------------------------------------
FX = {"type": "fx_trade"}


@pytest.mark.parametrize(
    ("local", "allowed"),
    [
        (datetime(2026, 11, 25, 8, 0), True),
        (datetime(2026, 11, 25, 17, 59), True),
        (datetime(2026, 11, 25, 18, 0), False),
        (datetime(2026, 11, 25, 7, 59), False),
        (datetime(2026, 11, 28, 10, 0), False),  # Saturday
    ],
)
def test_allowed_hours_in_berlin(local: datetime, allowed: bool) -> None:
    now = local.replace(tzinfo=BERLIN).timestamp()
    d = evaluate(POLICY, facts(FX, now=now))
    assert (d.outcome == "allow") is allowed
    if not allowed:
        assert (
            "outside the allowed hours 08:00-18:00 mon,tue,wed,thu,fri (Europe/Berlin)" in d.reason
        )


def test_hours_follow_daylight_saving() -> None:
    # 07:30 UTC is 09:30 in Berlin in summer (CEST) but 08:30 in winter: both inside;
    # 06:30 UTC is 08:30 CEST (inside) but 07:30 CET (outside).
    summer = datetime(2026, 7, 1, 6, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    winter = datetime(2026, 12, 2, 6, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    assert evaluate(POLICY, facts(FX, now=summer)).outcome == "allow"
    assert evaluate(POLICY, facts(FX, now=winter)).outcome == "deny"


def test_overnight_window() -> None:
    policy = parse_policy(
        {
            "rules": [
                {
                    "name": "night",
                    "default": True,
                    "allowed_hours": {"from": "22:00", "to": "06:00", "timezone": "Asia/Tokyo"},
                }
            ]
        }
    )
    tokyo = ZoneInfo("Asia/Tokyo")

    def at(hour: int) -> float:
        return datetime(2026, 11, 25, hour, 0, tzinfo=tokyo).timestamp()

    assert evaluate(policy, facts(FX, now=at(23))).outcome == "allow"
    assert evaluate(policy, facts(FX, now=at(5))).outcome == "allow"
    assert evaluate(policy, facts(FX, now=at(12))).outcome == "deny"


# --- matching -------------------------------------------------------------------------------
def test_default_rule_applies_to_other_types() -> None:
    d = evaluate(POLICY, facts({"type": "refund", "amount_minor": 1_000_01, "currency": "EUR"}))
    assert (d.outcome, d.rule) == ("deny", "default")


def test_no_rule_and_no_default_denies() -> None:
    policy = parse_policy({"rules": [{"name": "w", "match": {"type": "wire_transfer"}}]})
    d = evaluate(policy, facts({"type": "refund"}))
    assert (d.outcome, d.rule) == ("deny", NO_RULE)


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [{"name": "a", "default": True, "max_amount": {"amount_minor": -1, "currency": "EUR"}}],
            "policy.rules[0].max_amount.amount_minor: must be a non-negative integer",
        ),
        (
            [{"name": "a", "default": True}, {"name": "b", "default": True}],
            "policy.rules[1]: a second default rule",
        ),
        (
            [{"name": "a", "default": True}, {"name": "a", "match": {"type": "x"}}],
            "policy.rules[1].name: duplicate",
        ),
        (
            [{"name": "a", "default": True, "max_amount": {"amount_minor": 1, "currency": "eur"}}],
            "policy.rules[0].max_amount.currency",
        ),
        (
            [
                {
                    "name": "a",
                    "default": True,
                    "allowed_hours": {"from": "8:00", "to": "18:00", "timezone": "UTC"},
                }
            ],
            "policy.rules[0].allowed_hours.from",
        ),
        (
            [
                {
                    "name": "a",
                    "default": True,
                    "allowed_hours": {"from": "08:00", "to": "18:00", "timezone": "Mars/Base"},
                }
            ],
            "policy.rules[0].allowed_hours.timezone: unknown time zone",
        ),
        (
            [{"name": "a", "default": True, "approvals": {"required": 0, "roles": ["t"]}}],
            "policy.rules[0].approvals.required",
        ),
        (
            [{"name": "a", "default": True, "approvals": {"required": 2, "roles": []}}],
            "policy.rules[0].approvals.roles",
        ),
        (
            [{"name": "a", "default": True, "max_amount_eur": 1}],
            "policy.rules[0].max_amount_eur: unknown setting",
        ),
        ([{"name": "a", "match": {"type": "Wire"}}], "policy.rules[0].match.type"),
        (
            [{"name": "a", "default": True, "max_proof_age_seconds": True}],
            "policy.rules[0].max_proof_age_seconds",
        ),
    ],
)
def test_invalid_rules_name_the_setting(rules: list[Any], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"rules": rules})
    assert message in str(info.value)


def test_version_changes_with_content() -> None:
    a = parse_policy({"rules": [{"name": "a", "default": True}]})
    b = parse_policy({"rules": [{"name": "b", "default": True}]})
    assert a.version != b.version
    assert a.version == parse_policy({"rules": [{"default": True, "name": "a"}]}).version


# --- money and transaction keys ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (250_000_000, "EUR", "2,500,000.00 EUR"),
        (5, "EUR", "0.05 EUR"),
        (0, "USD", "0.00 USD"),
        (-123_456, "EUR", "-1,234.56 EUR"),
        (1_500, "JPY", "1,500 JPY"),
        (1_234_567, "KWD", "1,234.567 KWD"),
        (1, "BHD", "0.001 BHD"),
    ],
)
def test_format_amount(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from(["EUR", "JPY", "KWD"]))
def test_format_amount_round_trips(minor: int, currency: str) -> None:
    text, code = format_amount(minor, currency).split(" ")
    digits = text.replace(",", "").replace(".", "")
    assert int(digits) == minor and code == currency
    assert text.count(".") == (1 if currency_exponent(currency) else 0)


def test_transaction_key_is_order_independent_and_content_bound() -> None:
    a = transaction_key({"type": "wire_transfer", "amount_minor": 1, "currency": "EUR"})
    b = transaction_key({"currency": "EUR", "amount_minor": 1, "type": "wire_transfer"})
    c = transaction_key({"type": "wire_transfer", "amount_minor": 2, "currency": "EUR"})
    assert a == b != c and len(a) == 43
