"""Money: exact ``Decimal`` arithmetic in chainkit's own context, whatever the caller's is.

An application may set ``decimal.getcontext().prec = 5`` for its own reasons; chainkit's prices
and sums must not change with it, nor differ between threads (each thread has its own context).
Every sum, product and quotient of money in chainkit runs inside :data:`CONTEXT`.

>>> import decimal
>>> decimal.getcontext().prec = 3
>>> with decimal.localcontext(CONTEXT):
...     Decimal("0.000003") * 123_456_789
Decimal('370.370367')
>>> decimal.getcontext().prec = 28
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal

from chainkit.errors import ConfigError

__all__ = ["CONTEXT", "check_money", "exact_sum"]

# 60 digits hold a token count times a price per million with room to spare; the traps turn a
# lost digit or a NaN into an error instead of a wrong number.
CONTEXT = decimal.Context(
    prec=60,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow, decimal.Inexact],
)
"""Exact by construction: an operation that would round raises ``decimal.Inexact``."""

MAX_AMOUNT = Decimal(10) ** 12
"""The largest amount one entry may carry, in USD: sums of many stay exact within 60 digits."""
MIN_EXPONENT = -24
"""The finest amount one entry may carry is 1e-24 USD."""

ROUNDING = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
"""For the few places that divide on purpose (per-request averages, projections)."""


def check_money(value: object, what: str) -> Decimal | None:
    """Return ``value`` as a plain ``Decimal`` (or ``None``) if it is money; else raise.

    Money is finite, non-negative, at most :data:`MAX_AMOUNT` and no finer than 1e-24 USD. Floats
    are refused: 0.1 dollars as a float is not 0.1 dollars.
    """
    if value is None:
        return None
    if type(value) is Decimal and value.is_finite() and 0 <= value <= MAX_AMOUNT:
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= MIN_EXPONENT:
            return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            reason = "is not finite"
        elif value < 0:
            reason = "is negative"
        elif value > MAX_AMOUNT:
            reason = f"is over {MAX_AMOUNT:,} USD"
        else:
            # Trailing zeros (0E-30, a subclass) are not precision: compare the value itself.
            try:
                plain = Decimal(value).normalize(CONTEXT) if value else Decimal(0)
            except decimal.DecimalException:  # more digits than any amount of money has
                plain = Decimal(value)
            exponent = plain.as_tuple().exponent
            if isinstance(exponent, int) and exponent >= MIN_EXPONENT:
                return plain
            reason = f"has more than {-MIN_EXPONENT} decimal places"
    else:
        reason = f"is a {type(value).__name__}, not a Decimal (or None for unknown)"
    raise ConfigError(f"{what} {value!r} {reason}; money is a finite, non-negative Decimal.")


def to_units(amount: Decimal) -> int:
    """``amount`` (checked money) as an exact count of 1e-24 USD: compact, and summed by ``+``."""
    return int(amount.scaleb(-MIN_EXPONENT, CONTEXT))


def from_units(units: int) -> Decimal:
    """The amount ``units`` of 1e-24 USD make, without trailing zeros (``to_units`` undone)."""
    amount = Decimal(units).scaleb(MIN_EXPONENT, CONTEXT)
    if not units:
        return Decimal(0)
    # Strip trailing zeros but keep integers plain (1800, not 1.8E+3).
    plain = amount.normalize(CONTEXT)
    exponent = plain.as_tuple().exponent
    return (
        plain.quantize(Decimal(1), context=CONTEXT)
        if isinstance(exponent, int) and exponent > 0
        else plain
    )


def exact_sum(amounts: Iterable[Decimal | None]) -> Decimal | None:
    """The exact sum of ``amounts``; ``None`` if any is unknown (then the sum is unknown too)."""
    with decimal.localcontext(CONTEXT):
        total = Decimal(0)
        for amount in amounts:
            if amount is None:
                return None
            total += amount
        return total


def usd(amount: Decimal | None, *, digits: int = 4) -> str:
    """Money for people: cents where they matter, significant digits where amounts are small.

    Amounts of a cent or more show at least two decimals; smaller ones show ``digits``
    significant digits, so a small amount is never printed as $0.00 or $0.0000. Exact amounts
    with few digits are shown exactly. ``None`` (unknown) is "unknown".

    >>> usd(Decimal("1800")), usd(Decimal("4.98")), usd(Decimal("0.0000288")), usd(Decimal(0))
    ('$1,800.00', '$4.98', '$0.0000288', '$0.00')
    >>> usd(Decimal("0.123456789")), usd(Decimal("12345.678912")), usd(Decimal("4.98765"))
    ('$0.1235', '$12,345.68', '$4.988')
    >>> usd(Decimal("0.999999"), digits=8)
    '$0.999999'

    """
    if amount is None:
        return "unknown"
    with decimal.localcontext(ROUNDING) as ctx:
        if amount == 0:
            return "$0.00"
        sign = "-" if amount < 0 else ""
        value = abs(amount)
        if value >= Decimal("0.01"):
            places = max(2, digits - value.adjusted() - 1)
            shown = value.quantize(Decimal(1).scaleb(-places))
            text = f"{shown:,.{places}f}"
            # Drop zeros beyond the cents that carry nothing: $4.9800 -> $4.98.
            if "." in text:
                whole, frac = text.split(".")
                frac = frac.rstrip("0").ljust(2, "0")
                text = f"{whole}.{frac}"
            return f"{sign}${text}"
        ctx.prec = digits
        shown = +value  # rounds to `digits` significant digits
        return f"{sign}${shown.normalize():f}"
