"""Money: exact decimal amounts with a currency, and the one rounding rule.

Amounts are :class:`~decimal.Decimal`, never ``float``: a float cannot hold
0.1 exactly, so :class:`Money` refuses one with ``TypeError``. Adding,
subtracting or comparing two currencies raises ``ValueError``.

**The rounding rule.** Every amount that is charged, posted or shown is
rounded to the fen (分, ``FEN`` = 0.01) with ``ROUND_HALF_UP``: a half fen or
more rounds away from zero, less than half a fen rounds toward zero
(123.455 → 123.46, −0.005 → −0.01, 9.876 → 9.88, 9.874 → 9.87). The only way
to round is :func:`to_fen` (or :meth:`Money.quantize`, which calls it), so a
reader finds every rounding point by searching for those names; arithmetic in
between stays exact. Splitting an amount into parts uses :meth:`Money.allocate`
(largest remainder), whose parts are fen-exact and always sum to the whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction

CNY = "CNY"
FEN = Decimal("0.01")


def to_fen(value: Decimal) -> Decimal:
    """The named rounding point: ``value`` rounded to the fen, half away from zero."""
    return as_decimal(value, "value").quantize(FEN, rounding=ROUND_HALF_UP)


def is_fen_exact(value: Decimal) -> bool:
    """Whether ``value`` is a whole number of fen (e.g. 1.20 or 1.2, not 1.205)."""
    value = as_decimal(value, "value")
    return value == value.quantize(FEN, rounding=ROUND_HALF_UP)


def as_decimal(value: object, name: str) -> Decimal:
    """``value`` (a Decimal, int or numeric string) as a finite Decimal.

    Floats and bools are refused with ``TypeError`` naming ``name``; anything
    that is not a finite number raises ``ValueError``."""
    if isinstance(value, float):
        raise TypeError(
            f"{name} must be a Decimal, str or int, not a float ({value!r}); floats cannot hold fen exactly"
        )
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a Decimal, str or int, not a bool")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name} {value!r} is not a decimal number") from None
    else:
        raise TypeError(f"{name} must be a Decimal, str or int, not {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{name} must be a finite number, not {result}")
    return result


def _currency(value: object) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isascii() or not value.isalpha():
        raise ValueError(f"currency must be a three-letter ISO 4217 code such as 'CNY', not {value!r}")
    return value.upper()


@dataclass(frozen=True, slots=True, init=False)
class Money:
    """An exact amount in one currency. Immutable; ``+``, ``-``, comparison and
    multiplication by a Decimal or int return new values without rounding."""

    amount: Decimal
    currency: str

    def __init__(self, amount: Decimal | str | int, currency: str = CNY) -> None:
        object.__setattr__(self, "amount", as_decimal(amount, "amount"))
        object.__setattr__(self, "currency", _currency(currency))

    @classmethod
    def zero(cls, currency: str = CNY) -> Money:
        return cls(Decimal("0.00"), currency)

    def _same_currency(self, other: Money, verb: str) -> None:
        if self.currency != other.currency:
            raise ValueError(f"cannot {verb} {self.currency} and {other.currency}")

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __pos__(self) -> Money:
        return self

    def __abs__(self) -> Money:
        return Money(abs(self.amount), self.currency)

    def __mul__(self, factor: object) -> Money:
        if isinstance(factor, float):
            raise TypeError("Money can be multiplied by a Decimal or an int, not a float")
        if isinstance(factor, bool) or not isinstance(factor, (Decimal, int)):
            return NotImplemented
        return Money(self.amount * factor, self.currency)

    __rmul__ = __mul__

    def _compare(self, other: object) -> Decimal:
        if not isinstance(other, Money):
            raise TypeError(f"cannot compare Money with {type(other).__name__}")
        self._same_currency(other, "compare")
        return self.amount - other.amount

    def __lt__(self, other: object) -> bool:
        return self._compare(other) < 0

    def __le__(self, other: object) -> bool:
        return self._compare(other) <= 0

    def __gt__(self, other: object) -> bool:
        return self._compare(other) > 0

    def __ge__(self, other: object) -> bool:
        return self._compare(other) >= 0

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def quantize(self) -> Money:
        """This amount rounded to the fen by the one rounding rule (:func:`to_fen`)."""
        return Money(to_fen(self.amount), self.currency)

    @property
    def is_fen_exact(self) -> bool:
        return is_fen_exact(self.amount)

    def allocate(self, ratios: Sequence[Decimal | int]) -> tuple[Money, ...]:
        """Split this fen-exact amount into ``len(ratios)`` fen-exact parts in
        proportion to ``ratios`` that sum exactly to the whole.

        Each part first gets its proportional share rounded down to the fen
        (toward zero for a negative amount); the fen left over go one each to
        the parts with the largest remainders, earlier parts winning ties
        (the largest-remainder method). ``Money("0.10").allocate([1, 1, 1])``
        is 0.04, 0.03, 0.03.
        """
        if not self.is_fen_exact:
            raise ValueError(f"only a fen-exact amount can be allocated, not {self.amount}")
        weights = [Fraction(as_decimal(ratio, "ratio")) for ratio in ratios]
        if not weights:
            raise ValueError("allocate needs at least one ratio")
        if any(weight < 0 for weight in weights):
            raise ValueError("allocation ratios cannot be negative")
        total_weight = sum(weights, Fraction(0))
        if total_weight == 0:
            raise ValueError("allocation ratios must not all be zero")
        sign = -1 if self.amount < 0 else 1
        total_fen = int(abs(self.amount).scaleb(2))
        shares = [total_fen * weight / total_weight for weight in weights]
        parts = [int(share) for share in shares]  # floor: shares are non-negative
        leftover = total_fen - sum(parts)
        by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - parts[i]), i))
        for index in by_remainder[:leftover]:
            parts[index] += 1
        return tuple(Money(sign * part * FEN, self.currency) for part in parts)


def sum_money(values: Iterable[Money], currency: str = CNY) -> Money:
    """The sum of ``values`` (all in one currency); zero in ``currency`` if empty."""
    total: Money | None = None
    for value in values:
        if not isinstance(value, Money):
            raise TypeError(f"sum_money adds Money, not {type(value).__name__}")
        total = value if total is None else total + value
    return Money.zero(currency) if total is None else total
