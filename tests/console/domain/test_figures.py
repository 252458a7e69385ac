"""The dashboard's arithmetic: utilisation, carbon per NCU-hour, green share, price index, median wait."""

from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from console.domain import figures

units = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False)
shares = st.decimals(min_value=0, max_value=1, places=4, allow_nan=False, allow_infinity=False)


def pool(**overrides) -> figures.PoolCapacity:
    values = {
        "hub": "GZ",
        "compute_class": "intelligent",
        "ncu": Decimal(1000),
        "offered_ncu": Decimal(800),
        "held_ncu": Decimal(200),
        "watts_per_ncu": Decimal("1.2"),
        "pue": Decimal("1.20"),
        "grid_factor": Decimal("0.5703"),
        "green_share": Decimal("0.6"),
    }
    values.update(overrides)
    return figures.PoolCapacity(**values)


pools = st.builds(
    pool,
    hub=st.sampled_from(["JJJ", "GZ", "NX"]),
    compute_class=st.sampled_from(["general", "intelligent"]),
    ncu=units.filter(lambda v: v > 0),
    offered_ncu=units,
    held_ncu=units,
    green_share=shares,
    pue=st.decimals(min_value=1, max_value=2, places=2),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(pools, max_size=30))
def test_utilisation_of_every_hub_and_class_is_a_share_of_what_is_offered(rows):
    for cell in figures.cells(rows):
        assert 0 <= cell.utilisation <= 1
        assert cell.held_ncu <= cell.offered_ncu
    assert sum(c.pools for c in figures.cells(rows)) == len(rows)


@settings(max_examples=200, deadline=None)
@given(st.lists(pools, min_size=1, max_size=30))
def test_a_hubs_green_share_lies_between_its_sites_shares(rows):
    for green in figures.hub_green(rows):
        mine = [r.green_share for r in rows if r.hub == green.hub]
        assert min(mine) - Decimal("0.0001") <= green.green_share <= max(mine) + Decimal("0.0001")


def test_carbon_per_ncu_hour_is_power_times_pue_times_grid_times_brown_share():
    # 1.2 W per NCU for an hour is 0.0012 kWh; × PUE 1.2 × 0.5703 kg/kWh × 40% brown power = 0.3285 g.
    grams = figures.carbon_g_per_ncu_hour(
        watts_per_ncu=Decimal("1.2"), pue=Decimal("1.2"), grid_factor=Decimal("0.5703"), green_share=Decimal("0.6")
    )
    assert grams.quantize(Decimal("0.0001")) == Decimal("0.3285")
    all_green = figures.carbon_g_per_ncu_hour(
        watts_per_ncu=Decimal("1.2"), pue=Decimal("1.2"), grid_factor=Decimal("0.5703"), green_share=Decimal(1)
    )
    assert all_green == 0


def test_a_western_hub_on_green_power_emits_less_per_ncu_hour_than_an_eastern_one():
    east = pool(hub="JJJ", pue=Decimal("1.35"), green_share=Decimal("0.2"))
    west = pool(hub="NX", pue=Decimal("1.12"), green_share=Decimal("0.7"))
    by_hub = {g.hub: g for g in figures.hub_green([east, west])}
    assert by_hub["NX"].carbon_g_per_ncu_hour < by_hub["JJJ"].carbon_g_per_ncu_hour
    assert by_hub["NX"].green_share == Decimal("0.7000")


def test_nothing_offered_is_zero_utilisation_not_a_division_by_zero():
    assert figures.utilisation(Decimal(5), Decimal(0)) == 0
    assert figures.utilisation(Decimal(50), Decimal(100)) == Decimal("0.5000")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.decimals(min_value="0.0001", max_value=100, places=4), min_size=1, max_size=20))
def test_the_price_index_starts_at_100_and_moves_with_the_mean_price(prices):
    start = date(2026, 3, 1)
    days = [(start + timedelta(days=i), price) for i, price in enumerate(prices)]
    index = figures.price_index(list(reversed(days)))
    assert index[0] == (start, Decimal("100.00"))
    assert [day for day, _ in index] == [day for day, _ in days]
    for (_, value), (_, price) in zip(index, days, strict=True):
        assert abs(value - price * 100 / prices[0]) <= Decimal("0.005")


def test_the_median_wait_ignores_clock_skew_below_zero():
    assert figures.median_seconds([]) is None
    assert figures.median_seconds([30, -5, 90]) == 30
    assert figures.median_seconds([10, 20]) == 15
