from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from billing.domain.money import Money, is_fen_exact, sum_money, to_fen
from billing.domain.pricing import (
    CST,
    AdjustmentKind,
    CommitmentTier,
    EnergyInputs,
    GreenDiscount,
    InterruptibleCurve,
    LockedPrice,
    PriceRules,
    PricingError,
    PricingType,
    TimeOfUse,
    VolumeTier,
    charge,
    commission_rate_for,
    green_discount,
    interruptible_ratio,
    peak_share,
    quote,
    split_commission,
    time_of_use_factor,
    unit_price,
    volume_weighted_units,
    window_time_of_use_factor,
)

PROPERTY = settings(max_examples=200, deadline=None)
MONDAY = datetime(2025, 3, 3, tzinfo=UTC)  # 08:00 CST
PEAK_8_TO_22 = TimeOfUse(peak_hours=frozenset(range(8, 22)), peak_factor=D("1.20"), off_peak_factor=D("0.80"))


def cst(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=CST).astimezone(UTC)


def scaled(low: int, high: int, places: int) -> st.SearchStrategy[D]:
    return st.integers(min_value=low, max_value=high).map(lambda n: D(n).scaleb(-places))


prices = scaled(1, 10**6, 4)  # 0.0001 .. 100 CNY per NCU-hour
usage = scaled(0, 10**8, 4)  # 0 .. 10,000 NCU-hours, to four decimals like units.ncu_hours
shares = scaled(0, 1000, 3)
rates = scaled(0, 300, 3)
discounts = scaled(0, 900, 3)
fen = st.integers(min_value=0, max_value=10**10).map(lambda n: D(n) * D("0.01"))


@st.composite
def volume_tiers(draw: st.DrawFn) -> tuple[VolumeTier, ...]:
    thresholds = sorted(draw(st.sets(scaled(0, 10**7, 2), max_size=4)))
    cuts = sorted(draw(st.lists(discounts, min_size=len(thresholds), max_size=len(thresholds))))
    return tuple(VolumeTier(t, d) for t, d in zip(thresholds, cuts, strict=True))


@st.composite
def windows(draw: st.DrawFn) -> tuple[datetime, datetime]:
    start = MONDAY + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)), microseconds=draw(st.integers(0, 10**6)))
    length = timedelta(seconds=draw(st.integers(1, 10 * 24 * 3600)))
    return start, start + length


@st.composite
def curves(draw: st.DrawFn) -> InterruptibleCurve:
    floor, cap = sorted(draw(st.lists(scaled(1, 1000, 3), min_size=2, max_size=2)))
    low, high = sorted(draw(st.lists(scaled(0, 1000, 3), min_size=2, max_size=2, unique=True)))
    return InterruptibleCurve(floor_ratio=floor, cap_ratio=cap, low_utilisation=low, high_utilisation=high)


@st.composite
def price_rules(draw: st.DrawFn) -> PriceRules:
    commitment = sorted(draw(st.sets(scaled(1, 10000, 0), max_size=3)))
    cuts = sorted(draw(st.lists(discounts, min_size=len(commitment), max_size=len(commitment))))
    peak, off_peak = draw(scaled(1, 300, 2)), draw(scaled(1, 300, 2))
    tou = draw(st.none() | st.just(TimeOfUse(frozenset(draw(st.sets(st.integers(0, 23)))), peak, off_peak)))
    green = draw(st.none() | st.builds(GreenDiscount, max_discount=scaled(0, 300, 3), from_share=scaled(0, 999, 3)))
    return PriceRules(
        list_price=draw(prices),
        pricing_type=draw(st.sampled_from(PricingType)),
        commitment_tiers=tuple(CommitmentTier(h, d) for h, d in zip(commitment, cuts, strict=True)),
        interruptible=draw(curves()),
        time_of_use=tou,
        green=green,
        volume_tiers=draw(volume_tiers()),
    )


# --- the stories -------------------------------------------------------------------------


def test_a_123_45_charge_with_8_percent_commission_gives_9_88_to_the_platform_and_113_57_to_the_provider():
    assert split_commission(D("123.45"), D("0.08")) == (D("9.88"), D("113.57"))  # 9.876 rounds up
    locked = LockedPrice(pricing_type=PricingType.ON_DEMAND, unit_price=D("1.2345"), commission_rate=D("0.08"))
    metered = charge(locked, D(100), month_to_date_ncu_hours=D(0))
    assert (metered.gross, metered.commission, metered.provider_share) == (D("123.45"), D("9.88"), D("113.57"))
    assert metered.pricing_type is PricingType.ON_DEMAND


def test_time_of_use_across_a_window_straddling_the_end_of_peak_pays_each_part_at_its_rate():
    # 21:00–22:30 CST: an hour at peak (×1.2) then half an hour off-peak (×0.8).
    rules = PriceRules(list_price=D("2.00"), time_of_use=PEAK_8_TO_22)
    start, end = cst(3, 21), cst(3, 22, 30)
    assert peak_share(PEAK_8_TO_22, start, end) == D(2) / D(3)
    q = quote(rules, ncu_hours=D(30), start=start, end=end, commission_rate=D("0.08"))
    assert q.base == Money("60.00")
    assert q.adjustment(AdjustmentKind.TIME_OF_USE) == Money("4.00")  # 20 × 2.40 + 10 × 1.60 = 64.00
    assert q.subtotal == Money("64.00")
    assert q.pricing_type is PricingType.ON_DEMAND


def test_time_of_use_follows_china_standard_time_not_utc():
    # 23:30 UTC on Sunday is 07:30 CST on Monday, off-peak; 00:30 UTC is 08:30 CST, peak.
    assert time_of_use_factor(PEAK_8_TO_22, datetime(2025, 3, 2, 23, 30, tzinfo=UTC)) == D("0.80")
    assert time_of_use_factor(PEAK_8_TO_22, datetime(2025, 3, 3, 0, 30, tzinfo=UTC)) == D("1.20")
    # three whole days: 14 of every 24 hours are peak
    assert peak_share(PEAK_8_TO_22, cst(3, 5), cst(6, 5)) == D(14) / D(24)


def test_an_off_peak_night_job_gets_the_off_peak_discount():
    rules = PriceRules(list_price=D("1.50"), time_of_use=PEAK_8_TO_22)
    q = quote(rules, ncu_hours=D(100), start=cst(3, 22), end=cst(4, 6), commission_rate=D("0.10"))
    assert q.adjustment(AdjustmentKind.TIME_OF_USE) == Money("-30.00")
    assert q.subtotal == Money("120.00")
    assert (q.commission, q.provider_share) == (Money("12.00"), Money("108.00"))


def test_a_reserved_commitment_of_a_thousand_hours_gets_the_720_hour_discount():
    rules = PriceRules(
        list_price=D("0.80"),
        pricing_type=PricingType.RESERVED,
        commitment_tiers=(CommitmentTier(D(720), D("0.10")), CommitmentTier(D(8760), D("0.25"))),
    )
    q = quote(rules, ncu_hours=D(500), start=MONDAY, end=MONDAY + timedelta(hours=10), commission_rate=D("0.08"))
    assert q.adjustment(AdjustmentKind.RESERVED) == Money("0.00")  # commitment defaults to the 10-hour window
    q = quote(
        rules,
        ncu_hours=D(500),
        start=MONDAY,
        end=MONDAY + timedelta(hours=10),
        commission_rate=D("0.08"),
        commitment_hours=D(1000),
    )
    assert q.base == Money("400.00")
    assert q.adjustment(AdjustmentKind.RESERVED) == Money("-40.00")
    assert q.subtotal == Money("360.00")
    assert q.pricing_type is PricingType.RESERVED
    exactly_a_month = {"commission_rate": D("0.08"), "commitment_hours": D(720)}
    q = quote(rules, ncu_hours=D(500), start=MONDAY, end=MONDAY + timedelta(hours=10), **exactly_a_month)
    assert q.adjustment(AdjustmentKind.RESERVED) == Money("-40.00")


def test_interruptible_price_follows_the_documented_curve_and_ignores_time_of_use():
    curve = InterruptibleCurve(
        floor_ratio=D("0.30"), cap_ratio=D("0.80"), low_utilisation=D("0.30"), high_utilisation=D("0.80")
    )
    assert interruptible_ratio(curve, D("0.10")) == D("0.30")
    assert interruptible_ratio(curve, D("0.55")) == D("0.55")
    assert interruptible_ratio(curve, D("0.95")) == D("0.80")
    rules = PriceRules(
        list_price=D("2.00"), pricing_type=PricingType.INTERRUPTIBLE, interruptible=curve, time_of_use=PEAK_8_TO_22
    )
    at_noon = cst(3, 12)
    assert unit_price(rules, at=at_noon, utilisation=D("0.55")) == D("1.10")
    q = quote(
        rules,
        ncu_hours=D(10),
        start=at_noon,
        end=at_noon + timedelta(hours=2),
        commission_rate=D("0.08"),
        utilisation=D("0.10"),
    )
    assert q.adjustment(AdjustmentKind.INTERRUPTIBLE) == Money("-14.00")
    assert q.adjustment(AdjustmentKind.TIME_OF_USE) == Money("0")
    assert q.subtotal == Money("6.00")
    assert q.pricing_type is PricingType.INTERRUPTIBLE


def test_an_interruptible_price_needs_the_utilisation():
    rules = PriceRules(list_price=D("2.00"), pricing_type=PricingType.INTERRUPTIBLE)
    with pytest.raises(PricingError, match="utilisation"):
        unit_price(rules, at=MONDAY)


def test_green_discount_grows_from_the_threshold_to_full_green_power():
    green = GreenDiscount(max_discount=D("0.05"), from_share=D("0.50"))
    assert green_discount(green, D("0.40")) == 0
    assert green_discount(green, D("0.75")) == D("0.025")
    assert green_discount(green, D("1")) == D("0.05")
    assert green_discount(None, D("1")) == 0
    rules = PriceRules(list_price=D("1.00"), green=green)
    q = quote(
        rules,
        ncu_hours=D(200),
        start=MONDAY,
        end=MONDAY + timedelta(hours=1),
        commission_rate=D("0.08"),
        green_share=D("0.75"),
    )
    assert q.adjustment(AdjustmentKind.GREEN) == Money("-5.00")


def test_volume_tiers_apply_to_the_ncu_hours_beyond_each_threshold_like_tax_brackets():
    rules = PriceRules(
        list_price=D("1.00"), volume_tiers=(VolumeTier(D(1000), D("0.10")), VolumeTier(D(5000), D("0.20")))
    )
    window = {"start": MONDAY, "end": MONDAY + timedelta(hours=5), "commission_rate": D("0.08")}
    # 800 already bought: 200 at full price, 4000 at 10% off, 800 at 20% off
    q = quote(rules, ncu_hours=D(5000), month_to_date_ncu_hours=D(800), **window)
    assert q.adjustment(AdjustmentKind.VOLUME) == Money("-560.00")
    assert q.subtotal == Money("4440.00")
    # a buyer new this month pays more for the same usage, never less
    assert quote(rules, ncu_hours=D(5000), **window).subtotal == Money("4600.00")


def test_a_sample_is_cheaper_when_the_buyers_other_leases_reached_a_volume_tier_meanwhile():
    rules = PriceRules(list_price=D("1.00"), volume_tiers=(VolumeTier(D(1000), D("0.20")),))
    q = quote(rules, ncu_hours=D(100), start=MONDAY, end=MONDAY + timedelta(hours=5), commission_rate=D("0.08"))
    assert q.subtotal == Money("100.00")
    first = charge(q.locked, D(50), month_to_date_ncu_hours=D(0))
    # another lease of the same buyer used 2,000 NCU-hours before the second sample
    second = charge(q.locked, D(50), month_to_date_ncu_hours=D(2050), lease_ncu_hours_before=D(50))
    assert (first.gross, second.gross) == (D("50.00"), D("40.00"))


def test_a_lease_running_into_a_new_month_keeps_the_volume_tier_it_was_quoted():
    rules = PriceRules(list_price=D("1.00"), volume_tiers=(VolumeTier(D(1000), D("0.20")),))
    q = quote(
        rules,
        ncu_hours=D(100),
        start=MONDAY,
        end=MONDAY + timedelta(hours=5),
        commission_rate=D("0.08"),
        month_to_date_ncu_hours=D(5000),
    )
    assert q.subtotal == Money("80.00")
    after_month_end = charge(q.locked, D(100), month_to_date_ncu_hours=D(0))
    assert after_month_end.gross == D("80.00")


def test_a_quote_shows_the_breakdown_and_the_voucher_lowers_what_the_buyer_pays():
    rules = PriceRules(
        list_price=D("2.00"),
        time_of_use=PEAK_8_TO_22,
        green=GreenDiscount(),
        volume_tiers=(VolumeTier(D(20), D("0.10")),),
    )
    q = quote(
        rules,
        ncu_hours=D(30),
        start=cst(3, 21),
        end=cst(3, 22, 30),
        commission_rate=D("0.08"),
        green_share=D("0.90"),
        energy=EnergyInputs(
            device_power_watts=D(700), device_count=8, pue=D("1.25"), grid_factor_kg_per_kwh=D("0.5703")
        ),
    )
    assert [(line.kind, line.amount) for line in q.adjustments] == [
        (AdjustmentKind.TIME_OF_USE, Money("4.00")),
        (AdjustmentKind.GREEN, Money("-2.56")),  # 4% off 64.00
        (AdjustmentKind.VOLUME, Money("-2.05")),  # 10 of 30 NCU-hours 10% off
    ]
    assert q.subtotal == Money("59.39")
    assert q.voucher_subsidy == Money.zero()
    assert q.buyer_pays == Money("59.39")
    # 700 W × 8 × 1.5 h × PUE 1.25 = 10.5 kWh; × 0.5703 kg/kWh × (1 − 0.9) = 0.599 kg
    assert (q.energy_kwh, q.carbon_kg) == (D("10.500"), D("0.599"))
    subsidised = q.with_voucher_subsidy(Money("23.76"))
    assert subsidised.buyer_pays == Money("35.63")
    assert subsidised.commission + subsidised.provider_share == subsidised.subtotal
    with pytest.raises(PricingError):
        q.with_voucher_subsidy(Money("59.40"))


def test_commission_rates_come_from_the_callers_mapping_per_provider_category():
    rates = {"cloud": D("0.08"), "telecom": D("0.06")}
    assert commission_rate_for("telecom", rates) == D("0.06")
    assert commission_rate_for("third_party", rates, default=D("0.10")) == D("0.10")
    with pytest.raises(PricingError, match="third_party"):
        commission_rate_for("third_party", rates)
    with pytest.raises(PricingError):
        commission_rate_for("cloud", {"cloud": D("1.5")})


def test_bad_rules_and_inputs_are_refused_with_a_reason():
    with pytest.raises(TypeError, match="float"):
        PriceRules(list_price=1.5)  # type: ignore[arg-type]
    with pytest.raises(PricingError, match="on_demand, reserved, interruptible"):
        PriceRules(list_price=D(1), pricing_type="spot")  # type: ignore[arg-type]
    assert PriceRules(list_price=D(1), pricing_type="reserved").pricing_type is PricingType.RESERVED  # type: ignore[arg-type]
    with pytest.raises(PricingError, match="ten decimal places"):
        PriceRules(list_price=D("0.00000000001"))
    with pytest.raises(PricingError, match="increasing"):
        PriceRules(list_price=D(1), volume_tiers=(VolumeTier(D(100), D("0.1")), VolumeTier(D(50), D("0.2"))))
    with pytest.raises(PricingError, match="decrease"):
        PriceRules(list_price=D(1), volume_tiers=(VolumeTier(D(50), D("0.2")), VolumeTier(D(100), D("0.1"))))
    with pytest.raises(PricingError, match="floor_ratio"):
        InterruptibleCurve(floor_ratio=D("0.9"), cap_ratio=D("0.5"))
    with pytest.raises(PricingError, match="timezone-aware"):
        quote(
            PriceRules(list_price=D(1)),
            ncu_hours=D(1),
            start=datetime(2025, 3, 3),  # noqa: DTZ001
            end=MONDAY,
            commission_rate=D(0),
        )
    with pytest.raises(PricingError, match="end after it starts"):
        quote(PriceRules(list_price=D(1)), ncu_hours=D(1), start=MONDAY, end=MONDAY, commission_rate=D(0))
    with pytest.raises(PricingError, match="ncu_hours"):
        charge(LockedPrice(PricingType.ON_DEMAND, D(1), D(0)), D(-1), month_to_date_ncu_hours=D(0))


# --- properties ------------------------------------------------------------------------


@PROPERTY
@given(curves(), shares, shares)
def test_interruptible_price_stays_within_floor_and_cap_and_rises_with_utilisation(curve, u1, u2):
    low, high = sorted((u1, u2))
    r_low, r_high = interruptible_ratio(curve, low), interruptible_ratio(curve, high)
    assert curve.floor_ratio <= r_low <= r_high <= curve.cap_ratio


@PROPERTY
@given(prices, curves(), shares, windows())
def test_interruptible_is_never_dearer_than_on_demand(price, curve, utilisation, window):
    on_demand = PriceRules(list_price=price, time_of_use=TimeOfUse(peak_factor=D(1), off_peak_factor=D(1)))
    spot = PriceRules(list_price=price, pricing_type=PricingType.INTERRUPTIBLE, interruptible=curve)
    at = window[0]
    assert price * curve.floor_ratio <= unit_price(spot, at=at, utilisation=utilisation) <= price * curve.cap_ratio
    assert unit_price(spot, at=at, utilisation=utilisation) <= unit_price(on_demand, at=at)


@PROPERTY
@given(volume_tiers(), usage, usage, usage)
def test_volume_tiers_total_never_falls_and_unit_price_never_rises_with_usage(tiers, month_to_date, a, b):
    low, high = sorted((a, b))
    w_low = volume_weighted_units(tiers, month_to_date, low)
    w_high = volume_weighted_units(tiers, month_to_date, high)
    assert D(0) <= w_low <= w_high <= high  # total monotone, never above the undiscounted total
    if low > 0:
        assert w_high * low <= w_low * high  # average unit price non-increasing
    # the next NCU-hour costs no more after more usage this month
    first = volume_weighted_units(tiers, month_to_date, D(1))
    later = volume_weighted_units(tiers, month_to_date + high, D(1))
    assert later <= first
    # additive: pricing a usage in two parts equals pricing it at once
    assert volume_weighted_units(tiers, month_to_date, a + b) == w_low + volume_weighted_units(
        tiers, month_to_date + low, high
    )


@PROPERTY
@given(price_rules(), usage, usage, usage)
def test_quote_total_is_monotone_in_usage_and_in_month_to_date(rules, a, b, month_to_date):
    low, high = sorted((a, b))
    window = {"start": MONDAY, "end": MONDAY + timedelta(hours=3), "commission_rate": D("0.08")}
    extra = {"utilisation": D("0.5")}
    q_low = quote(rules, ncu_hours=low, month_to_date_ncu_hours=month_to_date, **window, **extra)
    q_high = quote(rules, ncu_hours=high, month_to_date_ncu_hours=month_to_date, **window, **extra)
    assert q_low.subtotal <= q_high.subtotal
    q_later = quote(rules, ncu_hours=high, month_to_date_ncu_hours=month_to_date + low, **window, **extra)
    assert q_later.subtotal <= q_high.subtotal


@PROPERTY
@given(price_rules(), usage, windows(), shares, shares, rates, usage)
def test_quote_breakdown_adds_up_exactly_in_whole_fen(rules, units, window, utilisation, green, rate, mtd):
    q = quote(
        rules,
        ncu_hours=units,
        start=window[0],
        end=window[1],
        commission_rate=rate,
        utilisation=utilisation,
        green_share=green,
        month_to_date_ncu_hours=mtd,
    )
    amounts = [q.base, q.subtotal, q.commission, q.provider_share, *(line.amount for line in q.adjustments)]
    assert all(amount.is_fen_exact for amount in amounts)
    assert q.base + sum_money(line.amount for line in q.adjustments) == q.subtotal
    assert q.commission + q.provider_share == q.subtotal
    assert q.subtotal >= Money.zero()
    assert q.provider_share >= Money.zero()
    assert q.commission == Money(to_fen(q.subtotal.amount * rate))
    assert q.pricing_type is rules.pricing_type is q.locked.pricing_type
    assert q.adjustment(AdjustmentKind.VOLUME) <= Money.zero()
    assert q.adjustment(AdjustmentKind.GREEN) <= Money.zero()
    assert q.adjustment(AdjustmentKind.RESERVED) <= Money.zero()


@PROPERTY
@given(price_rules(), windows(), shares, shares)
def test_the_locked_price_is_the_unit_price_when_the_window_has_one_rate(rules, window, utilisation, green):
    start = window[0].replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(minutes=59)  # inside one CST hour, so one time-of-use rate
    q = quote(
        rules,
        ncu_hours=D(1),
        start=start,
        end=end,
        commission_rate=D(0),
        utilisation=utilisation,
        green_share=green,
        commitment_hours=D(100),
    )
    exact = unit_price(rules, at=start, utilisation=utilisation, green_share=green, commitment_hours=D(100))
    assert abs(q.unit_price - exact) <= D("3e-10") * (1 + exact)


@PROPERTY
@given(windows(), st.integers(min_value=1, max_value=10**6))
def test_time_of_use_over_a_window_is_a_weighted_average_and_splits_exactly(window, cut_seconds):
    start, end = window
    assume(start + timedelta(seconds=cut_seconds) < end)
    middle = start + timedelta(seconds=cut_seconds)
    factor = window_time_of_use_factor(PEAK_8_TO_22, start, end)
    assert D("0.80") <= factor <= D("1.20")
    whole = peak_share(PEAK_8_TO_22, start, end) * D((end - start).total_seconds())
    left = peak_share(PEAK_8_TO_22, start, middle) * D((middle - start).total_seconds())
    right = peak_share(PEAK_8_TO_22, middle, end) * D((end - middle).total_seconds())
    assert abs(whole - left - right) < D("1e-15")


@PROPERTY
@given(fen, rates)
def test_commission_and_provider_share_add_up_to_the_charge_exactly(gross, rate):
    commission, provider_share = split_commission(gross, rate)
    assert commission + provider_share == gross
    assert commission >= 0
    assert provider_share >= 0
    assert is_fen_exact(commission)
    assert is_fen_exact(provider_share)
    assert abs(commission - gross * rate) <= D("0.005")


@PROPERTY
@given(price_rules(), usage, usage, rates, shares)
def test_charge_for_the_quoted_usage_is_exactly_the_quote(rules, units, mtd, rate, utilisation):
    q = quote(
        rules,
        ncu_hours=units,
        start=MONDAY,
        end=MONDAY + timedelta(hours=7),
        commission_rate=rate,
        utilisation=utilisation,
        month_to_date_ncu_hours=mtd,
    )
    metered = charge(q.locked, units, month_to_date_ncu_hours=mtd)
    assert Money(metered.gross) == q.subtotal
    assert Money(metered.commission) == q.commission
    assert Money(metered.provider_share) == q.provider_share
    assert metered.pricing_type is rules.pricing_type


@PROPERTY
@given(
    price_rules(),
    usage,
    st.lists(usage, min_size=1, max_size=8),
    st.lists(usage, min_size=8, max_size=8),
    st.integers(min_value=-1, max_value=7),
    rates,
)
def test_a_lease_billed_in_samples_never_costs_more_than_its_quote(rules, mtd, samples, others, new_month_at, rate):
    """Other leases may add to the buyer's month in between, and the month may
    roll over (month-to-date back to zero) part-way through the lease."""
    total = sum(samples, D(0))
    q = quote(
        rules,
        ncu_hours=total,
        start=MONDAY,
        end=MONDAY + timedelta(hours=7),
        commission_rate=rate,
        utilisation=D("0.6"),
        month_to_date_ncu_hours=mtd,
    )
    month_to_date, before, billed = mtd, D(0), []
    for index, sample in enumerate(samples):
        month_to_date += others[index]
        if index == new_month_at:
            month_to_date = D(0)
        metered = charge(q.locked, sample, month_to_date_ncu_hours=month_to_date, lease_ncu_hours_before=before)
        assert metered.gross >= 0
        assert metered.commission + metered.provider_share == metered.gross
        assert is_fen_exact(metered.gross)
        billed.append(metered.gross)
        before += sample
        month_to_date += sample
    assert sum(billed, D(0)) <= q.subtotal.amount
