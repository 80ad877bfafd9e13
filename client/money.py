"""Amounts as the client shows and reads them: integer micro-units <-> decimal text.

The server keeps money as integer micro-units (a millionth of the currency unit) and so does
every ``*_micros`` field of ``parley.v1.BillingService``; the client must never pass through a
float either, or a statement would not add up to the last unit. The client cannot import the
server's package (they ship and run apart), so this is the client's one place for it: every
command and the invoice format amounts with :func:`format_micros`, and ``parley admin top-up``
reads the operator's decimal with :func:`parse_amount`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

MICROS: Final = 1_000_000
"""Micro-units per unit of the currency."""
MAX_DECIMALS: Final = 6


class AmountError(ValueError):
    """Decimal text that is not an exact, positive number of micro-units; the message says how
    to write it."""


def format_micros(micros: int, currency: str = "", *, grouped: bool = False) -> str:
    """``1234500`` -> ``"1.2345"``: at least two decimals, more only when they are not zero,
    so a half-cent price reads "0.005" and a balance "25.00"; the currency code after it when
    given. `grouped` separates thousands ("12,345.00") for statements people read."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS)
    decimals = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    units = f"{whole:,}" if grouped else str(whole)
    text = f"{sign}{units}.{decimals}"
    return f"{text} {currency}" if currency else text


def parse_amount(text: str) -> int:
    """Micro-units of a positive decimal such as ``"25.00"`` or ``"0.005"``, exactly: more than
    six decimals, a sign, an exponent or anything but digits and one point is refused rather
    than rounded (a top-up is money; a silent rounding is a wrong ledger line)."""
    word = text.strip()
    digits = word.replace(".", "", 1)
    if not word or not digits.isascii() or not digits.isdigit():
        raise AmountError(
            f"{text!r} is not an amount: write digits with at most one decimal point, e.g. 25.00"
        )
    try:
        value = Decimal(word)
    except InvalidOperation:  # pragma: no cover - the checks above admit only decimals
        raise AmountError(f"{text!r} is not an amount, e.g. 25.00") from None
    decimals = len(word.partition(".")[2])
    if decimals > MAX_DECIMALS:
        raise AmountError(
            f"{text!r} has {decimals} decimals: amounts are kept in millionths of the currency"
            f" unit, so write at most {MAX_DECIMALS} (e.g. 0.000001)"
        )
    micros = int(value * MICROS)
    if micros <= 0:
        raise AmountError(f"{text!r} is zero: write an amount above 0, e.g. 25.00")
    return micros
