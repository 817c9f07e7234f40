"""Amounts in minor units, shown the way a treasury desk reads them: ``2,500,000.00 EUR``.

Contexts carry money as integers in minor units (protocol §1, no floats); a policy
denial must still name the amount in major units, with the currency's ISO 4217
exponent, or an operator misreads a limit by a factor of 100 or 1000.
"""

from __future__ import annotations

__all__ = ["currency_exponent", "format_amount"]

#: ISO 4217 currencies whose minor unit is not 1/100. Everything else uses 2.
_EXPONENTS: dict[str, int] = {
    # no minor unit
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # thousandths
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
}


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point for ``currency`` (2 unless ISO 4217 says otherwise)."""
    return _EXPONENTS.get(currency.upper(), 2)


def format_amount(amount_minor: int, currency: str) -> str:
    """``250000000, "EUR"`` -> ``"2,500,000.00 EUR"``; ``1500, "JPY"`` -> ``"1,500 JPY"``."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 10**exponent)
    text = f"{major:,}"
    if exponent:
        text += f".{minor:0{exponent}d}"
    return f"{sign}{text} {currency.upper()}"
