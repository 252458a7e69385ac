"""Quotes: the best few placements for a job spec, priced, without submitting anything."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from core.models import AuditEntry
from scheduler import services
from scheduler.models import Job, Lease, Offer
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

QUOTES = "/api/v1/quotes"
OPTION_KEYS = {
    "pool_identifier",
    "offer",
    "hub",
    "city",
    "compute_class",
    "pricing_type",
    "expected_start",
    "expected_end",
    "nodes",
    "ncu",
    "ncu_hours",
    "unit_price",
    "price",
    "estimated_cost",
    "energy_kwh",
    "carbon_kg",
}


def quote(user, **overrides):
    return client_for(user).post(QUOTES, factories.job_values(**overrides), format="json")


def money(value) -> Decimal:
    return Decimal(str(value))


def priced_market(prices: list[str], *, nodes: int = 1):
    provider = factories.provider()
    site = factories.site(provider)
    pools = []
    for i, price in enumerate(prices):
        pool = factories.pool(provider, site, name=f"pool {i}", node_count=nodes)
        factories.offer(provider, pool, list_price=Decimal(price))
        pools.append(pool)
    return provider, pools


def test_a_quote_lists_the_three_cheapest_placements_with_their_breakdown(buyer):
    _provider, pools = priced_market(["0.05", "0.02", "0.06", "0.03", "0.04"])
    before = timezone.now()
    response = quote(buyer)
    assert response.status_code == 200, response.data
    options = response.data["options"]
    assert len(options) == 3
    assert [o["pool_identifier"] for o in options] == [pools[1].identifier, pools[3].identifier, pools[4].identifier]
    for option in options:
        assert set(option) == OPTION_KEYS
        assert option["hub"] == "GZ"
        assert before - timedelta(seconds=5) <= option["expected_start"] <= timezone.now() + timedelta(seconds=5)
        assert option["expected_end"] - option["expected_start"] == timedelta(hours=2)
        price = option["price"]
        assert money(price["buyer_pays"]) == money(price["subtotal"]) > 0, "no voucher: the buyer pays the subtotal"
        assert money(price["commission"]) + money(price["provider_share"]) == money(price["subtotal"])
        assert money(option["energy_kwh"]) > 0
        assert money(option["carbon_kg"]) > 0
    paid = [money(o["price"]["buyer_pays"]) for o in options]
    assert paid == sorted(paid) and paid[0] < paid[1] < paid[2]
    assert response.data["explanation"]["message"].startswith("5/5 pools fit")


def test_a_quote_with_one_pool_offers_one_option(buyer):
    factories.market(nodes=2)
    assert len(quote(buyer).data["options"]) == 1


def test_a_quote_writes_nothing(buyer):
    priced_market(["0.02", "0.03"])
    counts = (Job.objects.count(), Lease.objects.count(), AuditEntry.objects.count())
    generations = list(Offer.objects.order_by("pk").values_list("generation", flat=True))
    for _ in range(3):
        assert quote(buyer).status_code == 200
    assert (Job.objects.count(), Lease.objects.count(), AuditEntry.objects.count()) == counts
    assert list(Offer.objects.order_by("pk").values_list("generation", flat=True)) == generations


def test_the_expected_start_of_a_full_market_is_when_capacity_frees(buyer):
    factories.market(nodes=1)
    running = factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=running)
    options = quote(buyer).data["options"]
    assert len(options) == 1
    assert options[0]["expected_start"] == lease.end


def test_a_greener_western_pool_wins_when_the_buyer_asks_for_greenest(buyer):
    east = factories.provider(home_hub="JJJ", city="beijing")
    east_site = factories.site(
        east, hub="JJJ", city="beijing", kind="general", pue=Decimal("1.50"), green_share=Decimal("0.1000")
    )
    east_pool = factories.pool(east, east_site, node_count=1)
    factories.offer(east, east_pool, list_price=Decimal("0.0200"))
    west = factories.provider(home_hub="NX", city="zhongwei")
    west_site = factories.site(west, hub="NX", city="zhongwei", pue=Decimal("1.15"), green_share=Decimal("0.9000"))
    west_pool = factories.pool(west, west_site, node_count=1)
    factories.offer(west, west_pool, list_price=Decimal("0.0300"))

    cheapest = quote(buyer, objective="cheapest").data["options"]
    assert cheapest[0]["pool_identifier"] == east_pool.identifier, "the eastern pool is cheaper"
    greenest = quote(buyer, objective="greenest").data["options"]
    assert [o["pool_identifier"] for o in greenest] == [west_pool.identifier, east_pool.identifier]
    assert greenest[0]["hub"] == "NX"
    assert money(greenest[0]["carbon_kg"]) < money(greenest[1]["carbon_kg"])
    assert money(greenest[0]["energy_kwh"]) < money(greenest[1]["energy_kwh"]), "a lower PUE uses less energy"


def frozen_at(monkeypatch, moment: datetime) -> None:
    monkeypatch.setattr(timezone, "now", lambda: moment)


PRICE_RULES = [
    pytest.param("on_demand", {}, Decimal(0), id="on-demand"),
    pytest.param("on_demand", {"green": {"max_discount": "0.10", "from_share": "0.50"}}, Decimal(0), id="green"),
    pytest.param(
        "reserved",
        {"commitment_tiers": [{"min_hours": "1", "discount": "0.15"}, {"min_hours": "100", "discount": "0.30"}]},
        Decimal(2),
        id="reserved",
    ),
    pytest.param(
        "on_demand",
        {"volume_tiers": [{"from_ncu_hours": "0", "discount": "0.05"}]},
        Decimal(0),
        id="volume-tiers",
    ),
    pytest.param("on_demand", {"time_of_use": {"peak_factor": "1.25"}}, Decimal(0), id="time-of-use-in-peak"),
]


@pytest.mark.parametrize(("pricing_type", "rules", "min_lease_hours"), PRICE_RULES)
def test_the_buyer_is_billed_exactly_what_was_quoted(buyer, monkeypatch, pricing_type, rules, min_lease_hours):
    frozen_at(monkeypatch, datetime(2030, 3, 4, 2, 0, tzinfo=UTC))  # 10:00 in Beijing, peak time
    provider = factories.provider()
    pool = factories.pool(provider, factories.site(provider), node_count=1)
    factories.offer(
        provider,
        pool,
        list_price=Decimal("0.0300"),
        pricing_type=pricing_type,
        price_rules=rules,
        min_lease_hours=min_lease_hours,
    )
    [option] = quote(buyer).data["options"]
    job = factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=job)
    assert lease.pool == pool
    assert lease.start == option["expected_start"]
    assert lease.estimated_cost == money(option["price"]["buyer_pays"]) == money(option["price"]["subtotal"])
    assert lease.estimated_cost == money(option["estimated_cost"])
    assert lease.ncu_hours == money(option["ncu_hours"])


def test_a_job_across_the_evening_peak_boundary_is_never_billed_above_its_quote(buyer, monkeypatch):
    """Starts 21:00 in Beijing: one hour at the peak factor, one off peak."""
    frozen_at(monkeypatch, datetime(2030, 3, 4, 13, 0, tzinfo=UTC))
    provider = factories.provider()
    pool = factories.pool(provider, factories.site(provider), node_count=1)
    factories.offer(provider, pool, list_price=Decimal("0.0300"), price_rules={"time_of_use": {}})
    [option] = quote(buyer).data["options"]
    job = factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=job)
    assert lease.estimated_cost <= money(option["price"]["buyer_pays"])
    assert money(option["estimated_cost"]) == money(option["price"]["buyer_pays"]), "one figure per quote"


def test_an_interruptible_job_is_quoted_on_an_interruptible_offer(buyer):
    provider = factories.provider()
    site = factories.site(provider)
    spot = factories.pool(provider, site, name="spot", node_count=1)
    factories.offer(
        provider,
        spot,
        pricing_type="interruptible",
        list_price=Decimal("0.0300"),
        price_rules={"interruptible": {"floor_ratio": "0.30", "cap_ratio": "0.80"}},
    )
    response = quote(buyer, interruptible=True)
    assert response.status_code == 200, response.data
    [option] = response.data["options"]
    assert option["pricing_type"] == "interruptible"
    assert money(option["unit_price"]) == Decimal("0.009"), "an idle pool sells at the floor"
    job = factories.submit(buyer, interruptible=True)
    services.cycle_run()
    assert Lease.objects.get(job=job).estimated_cost == money(option["price"]["buyer_pays"])


def test_a_quote_nothing_can_take_says_why(buyer):
    factories.market(pools=2, nodes=1)
    response = quote(buyer, software_stack="cann")
    assert response.status_code == 200
    assert response.data["options"] == []
    assert response.data["explanation"]["message"] == "0/2 pools fit: 2 wrong software stack"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"accelerators_per_node": 8, "capacity_tflops": "100", "capacity_precision": "fp16"}, "accelerators_per_node"),
        ({"allowed_hubs": ["ATLANTIS"]}, "allowed_hubs"),
        ({"duration_seconds": -1}, "duration_seconds"),
        ({"earliest_start": "9999-12-31T23:00:00Z"}, "earliest_start"),
        ({"deadline": "9999-12-31T23:59:59Z", "earliest_start": "9999-12-31T20:00:00Z"}, "earliest_start"),
    ],
)
def test_a_bad_quote_request_is_a_400_naming_the_field(buyer, overrides, field):
    factories.market(nodes=1)
    response = quote(buyer, **overrides)
    assert response.status_code == 400, response.data
    assert response.data["field"] is not None
    assert response.data["field"].split(".")[0] == field


def test_only_buyers_ask_for_quotes(provider, operator):
    factories.market(nodes=1)
    assert quote(provider).status_code == 403
    assert quote(operator).status_code == 403
