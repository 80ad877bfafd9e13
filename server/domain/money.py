"""Money as integer micro-units of one currency: parsed from and shown as decimal text.

Amounts are never floats: 0.1 + 0.2 is not 0.3 in binary floating point, and a ledger that
must reconcile to the last unit cannot afford that. One micro-unit is a millionth of the
currency's unit (a micro-dollar), fine enough for prices of half a cent with room for
volume discounts, and an int64 holds nine trillion units of it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
# ISO 4217 alphabetic codes: three capital letters.
_CURRENCY = re.compile(r"[A-Z]{3}")
# The largest amount a price or a top-up may carry: an int64 of micro-units, with headroom so
# that a sum of many of them is still far from overflowing the store's 64-bit integers.
MAX_AMOUNT_MICROS = 10**15


class AmountError(ValueError):
    """A decimal amount that is not a whole number of micro-units, or out of range."""


def parse_amount(text: str | int | float | Decimal, *, field: str = "amount") -> int:
    """Micro-units of a decimal amount such as "0.025" (2.5 cents -> 25000).

    A float is refused: it has already lost the exact value the operator wrote ("0.1" becomes
    0.1000000000000000055...). Write amounts as strings (or integers of whole units).
    """
    if isinstance(text, (bool, float)):
        raise AmountError(
            f'{field} {text!r} must be written as a decimal string such as "0.025" '
            "(a float cannot hold it exactly)"
        )
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise AmountError(f'{field} {text!r} is not a decimal amount such as "0.025"') from None
    if not value.is_finite():
        raise AmountError(f"{field} {text!r} is not a finite amount")
    micros = value * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise AmountError(
            f"{field} {text!r} has more than 6 decimal places; amounts are kept in millionths "
            "of the currency unit"
        )
    if value < 0:
        raise AmountError(f"{field} {text!r} is negative")
    result = int(micros)
    if result > MAX_AMOUNT_MICROS:
        raise AmountError(
            f"{field} {text!r} is above the largest amount, {format_amount(MAX_AMOUNT_MICROS)}"
        )
    return result


def format_amount(micros: int, currency: str = "") -> str:
    """Decimal text of an amount: at least 2 decimals, more only when they are not zero
    ("0.005", "1.50", "-0.0125"), with the currency code after it when given."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    text = f"{sign}{whole}.{digits}"
    return f"{text} {currency}" if currency else text


def currency_code(text: str) -> str:
    """An ISO 4217 code such as "USD", or AmountError."""
    code = text.strip().upper()
    if not _CURRENCY.fullmatch(code):
        raise AmountError(f'currency {text!r} must be an ISO 4217 code such as "USD"')
    return code
