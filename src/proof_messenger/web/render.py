"""Transaction contexts in plain words, for the approval page (pure functions, no I/O).

A person approving a payment must see what they sign, in words they understand: the
amount with its currency in the currency's own minor units, the recipient, the kind of
transaction. Anything else in the context is listed too: a field the page does not know
is still part of what gets signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "describe", "format_amount", "humanize", "minor_unit_exponent"]

#: ISO 4217 currencies whose minor unit is not 1/100 (the default exponent is 2).
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
_KNOWN_LABELS = {
    "type": "Type",
    "recipient": "Recipient",
    "amount_minor": "Amount",
    "currency": "Currency",
    "reference": "Reference",
    "iban": "IBAN",
    "bic": "BIC",
    "name": "Name",
    "account": "Account",
    "description": "Description",
    "memo": "Memo",
}


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    value: str


def minor_unit_exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def format_amount(amount_minor: int, currency: str) -> str:
    """``1250000, "EUR"`` -> ``"12,500.00 EUR"``; ``5000, "JPY"`` -> ``"5,000 JPY"``."""
    exp = minor_unit_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exp)
    text = f"{whole:,}"
    if exp:
        text += "." + str(frac).rjust(exp, "0")
    return f"{sign}{text} {currency.upper()}"


def humanize(key: str) -> str:
    """``wire_transfer`` -> ``Wire transfer``."""
    if key in _KNOWN_LABELS:
        return _KNOWN_LABELS[key]
    words = key.replace("_", " ").replace("-", " ").replace(".", " ").strip()
    return words[:1].upper() + words[1:] if words else key


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{humanize(str(k))}: {_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    return str(value)


def _recipient(value: Any) -> str:
    if isinstance(value, Mapping):
        name = value.get("name")
        rest = {k: v for k, v in value.items() if k != "name"}
        parts = [str(name)] if name is not None else []
        parts += [f"{humanize(str(k))} {_value(v)}" for k, v in rest.items()]
        return " · ".join(parts)
    return _value(value)


def describe(ctx: Mapping[str, Any]) -> tuple[str, list[Row]]:
    """A headline (``Wire transfer of 12,500.00 EUR``) and the rows to show, in order."""
    kind = humanize(str(ctx.get("type", "transaction")))
    amount_text: str | None = None
    currency = ctx.get("currency")
    amount_minor = ctx.get("amount_minor")
    if type(amount_minor) is int and isinstance(currency, str):
        amount_text = format_amount(amount_minor, currency)
    elif isinstance(ctx.get("amount"), str) and isinstance(currency, str):
        amount_text = f"{ctx['amount']} {currency.upper()}"
    rows: list[Row] = []
    if amount_text is not None:
        rows.append(Row("Amount", amount_text))
    if "recipient" in ctx:
        rows.append(Row("Recipient", _recipient(ctx["recipient"])))
    rows.append(Row("Type", kind))
    shown = {"type", "recipient"}
    if amount_text is not None:
        shown |= {"amount_minor", "amount", "currency"}
    for key, value in ctx.items():
        if key not in shown:
            rows.append(Row(humanize(str(key)), _value(value)))
    headline = f"{kind} of {amount_text}" if amount_text else kind
    return headline, rows
