from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain.money import CNY, FEN, Money, is_fen_exact, sum_money, to_fen

PROPERTY = settings(max_examples=200, deadline=None)

fen_amounts = st.integers(min_value=-(10**12), max_value=10**12).map(lambda fen: Decimal(fen) * FEN)
amounts = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=6, allow_nan=False)
ratios = st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=12).filter(any)


def test_money_refuses_float():
    with pytest.raises(TypeError, match="float"):
        Money(0.1)


def test_money_cannot_be_multiplied_by_a_float():
    with pytest.raises(TypeError, match="float"):
        Money("10.00") * 1.1
    with pytest.raises(TypeError):
        1.1 * Money("10.00")


def test_to_fen_refuses_float():
    with pytest.raises(TypeError):
        to_fen(0.125)


def test_money_refuses_mixed_currencies():
    with pytest.raises(ValueError, match="CNY and USD"):
        Money("1.00") + Money("1.00", "USD")
    with pytest.raises(ValueError):
        Money("1.00") - Money("1.00", "USD")
    with pytest.raises(ValueError):
        Money("1.00") < Money("2.00", "USD")  # noqa: B015


def test_money_in_different_currencies_is_not_equal():
    assert Money("1.00") != Money("1.00", "USD")


def test_money_refuses_nonsense():
    with pytest.raises(ValueError):
        Money("twelve")
    with pytest.raises(ValueError):
        Money("NaN")
    with pytest.raises(ValueError):
        Money("1.00", "yuan")


def test_money_is_a_value():
    assert Money("1.0") == Money(Decimal("1.00"))
    assert hash(Money("1.0")) == hash(Money("1.00"))
    assert Money(5).currency == CNY
    assert str(Money("12.30")) == "12.30 CNY"
    with pytest.raises(AttributeError):
        Money(1).amount = Decimal(2)  # type: ignore[misc]


def test_arithmetic_and_comparison():
    assert Money("1.10") + Money("2.25") == Money("3.35")
    assert Money("1.10") - Money("2.25") == Money("-1.15")
    assert -Money("1.10") == Money("-1.10")
    assert Money("10.00") * Decimal("0.08") == Money("0.8")
    assert 3 * Money("0.10") == Money("0.30")
    assert Money("0.99") < Money("1.00") <= Money("1.00") < Money("1.01")
    assert max(Money("2"), Money("3")) == Money("3")


def test_rounding_is_half_up_away_from_zero_to_the_fen():
    assert to_fen(Decimal("123.455")) == Decimal("123.46")
    assert to_fen(Decimal("123.454999")) == Decimal("123.45")
    assert to_fen(Decimal("-0.005")) == Decimal("-0.01")
    assert to_fen(Decimal("9.876")) == Decimal("9.88")
    assert Money("0.125").quantize() == Money("0.13")
    assert not Money("0.125").is_fen_exact
    assert Money("0.1").is_fen_exact
    assert is_fen_exact(Decimal("7"))


def test_zero_and_sum():
    assert Money.zero() == Money(0)
    assert sum_money([]) == Money.zero()
    assert sum_money([], "USD") == Money.zero("USD")
    assert sum_money([Money("0.10"), Money("0.20"), Money("0.30")]) == Money("0.60")
    with pytest.raises(ValueError):
        sum_money([Money(1), Money(1, "USD")])


def test_a_dime_split_three_ways():
    assert Money("0.10").allocate([1, 1, 1]) == (Money("0.04"), Money("0.03"), Money("0.03"))


def test_allocate_refuses_amounts_smaller_than_a_fen_and_bad_ratios():
    with pytest.raises(ValueError):
        Money("0.105").allocate([1, 1])
    with pytest.raises(ValueError):
        Money("1.00").allocate([0, 0])
    with pytest.raises(ValueError):
        Money("1.00").allocate([1, -1])
    with pytest.raises(TypeError):
        Money("1.00").allocate([0.5, 0.5])


@PROPERTY
@given(fen_amounts, ratios)
def test_allocate_parts_are_fen_exact_and_sum_to_the_whole(amount, weights):
    parts = Money(amount).allocate(weights)
    assert len(parts) == len(weights)
    assert sum_money(parts) == Money(amount)
    assert all(part.is_fen_exact for part in parts)
    total_weight = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = amount * weight / total_weight
        assert abs(part.amount - exact) < FEN  # within one fen of the exact share
        if weight == 0:
            assert part.amount == 0


@PROPERTY
@given(amounts)
def test_to_fen_moves_an_amount_by_at_most_half_a_fen_and_is_idempotent(value):
    rounded = to_fen(value)
    assert is_fen_exact(rounded)
    assert abs(rounded - value) <= FEN / 2
    assert to_fen(rounded) == rounded
    assert to_fen(-value) == -rounded  # symmetric: refunds round like charges


@PROPERTY
@given(amounts, amounts)
def test_to_fen_is_monotone(a, b):
    low, high = sorted((a, b))
    assert to_fen(low) <= to_fen(high)


@PROPERTY
@given(fen_amounts, fen_amounts, fen_amounts)
def test_addition_is_exact_associative_and_reversible(a, b, c):
    x, y, z = Money(a), Money(b), Money(c)
    assert (x + y) + z == x + (y + z)
    assert x + y - y == x
    assert x - x == Money.zero()
