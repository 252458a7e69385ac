"""Providers list offers on their own pools; the market shows only verified providers' offers."""

from decimal import Decimal

import pytest

from core.models import AuditEntry
from scheduler import services
from scheduler.models import Job, Lease, Offer
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

OFFERS = "/api/v1/offers"


def names_field(reported: str | None, field: str) -> bool:
    """Whether an error names ``field`` (or a part of it, like ``price_rules.green``)."""
    return reported is not None and (reported == field or reported.startswith((f"{field}.", f"{field}[")))


def offer_body(pool_, **overrides) -> dict:
    body = {"pool": pool_.identifier, "nodes_offered": 2, "list_price": "0.0250", "pricing_type": "on_demand"}
    body.update(overrides)
    return body


def test_a_provider_lists_nodes_of_its_own_pool(provider):
    pool = factories.pool(provider, factories.site(provider), node_count=4)
    response = client_for(provider).post(OFFERS, offer_body(pool, max_lease_hours="48"), format="json")
    assert response.status_code == 201, response.data
    offer = Offer.objects.get(pk=response.data["id"])
    assert response.data["pool_identifier"] == pool.identifier
    assert response.data["hub"] == "GZ"
    assert response.data["status"] == "active"
    assert response.data["nodes_offered"] == 2
    assert Decimal(response.data["list_price"]) == Decimal("0.025")
    assert offer.pool == pool and offer.max_lease_hours == Decimal("48")
    assert AuditEntry.objects.filter(action="offer.created", entity_id=str(offer.pk), actor=provider).exists()


def test_a_pool_is_named_by_its_identifier_in_any_case_or_by_its_id(provider):
    pool = factories.pool(provider, factories.site(provider), node_count=4)
    client = client_for(provider)
    by_identifier = client.post(OFFERS, offer_body(pool, pool=f"  {pool.identifier.lower()} "), format="json")
    by_id = client.post(OFFERS, offer_body(pool, pool=str(pool.pk)), format="json")
    assert (by_identifier.status_code, by_id.status_code) == (201, 201)
    assert Offer.objects.filter(pool=pool).count() == 2


def test_offering_more_nodes_than_the_pool_has_left_is_refused_naming_nodes_offered(provider):
    pool = factories.pool(provider, factories.site(provider), node_count=4)
    client = client_for(provider)
    too_many = client.post(OFFERS, offer_body(pool, nodes_offered=5), format="json")
    assert too_many.status_code == 400
    assert too_many.data["field"] == "nodes_offered"
    assert "4 nodes" in too_many.data["detail"]
    assert client.post(OFFERS, offer_body(pool, nodes_offered=3), format="json").status_code == 201
    over = client.post(OFFERS, offer_body(pool, nodes_offered=2), format="json")
    assert over.status_code == 400
    assert over.data["field"] == "nodes_offered"
    assert "3 are already offered" in over.data["detail"] and "at most 1 more" in over.data["detail"]
    assert Offer.objects.filter(pool=pool).count() == 1


def test_a_provider_cannot_offer_another_providers_pool(provider):
    other = factories.provider()
    pool = factories.pool(other, factories.site(other))
    response = client_for(provider).post(OFFERS, offer_body(pool), format="json")
    assert response.status_code == 400
    assert response.data["field"] == "pool"
    by_id = client_for(provider).post(OFFERS, offer_body(pool, pool=str(pool.pk)), format="json")
    assert by_id.status_code == 400 and by_id.data["field"] == "pool"
    assert not Offer.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param(*({"nodes_offered": 0}, "nodes_offered"), id="no-nodes"),
        pytest.param(*({"nodes_offered": "many"}, "nodes_offered"), id="nodes-not-a-number"),
        pytest.param(*({"list_price": "0"}, "list_price"), id="free"),
        pytest.param(*({"list_price": "-1"}, "list_price"), id="negative-price"),
        pytest.param(*({"list_price": "cheap"}, "list_price"), id="price-not-a-number"),
        pytest.param(*({"pricing_type": "barter"}, "pricing_type"), id="unknown-pricing-type"),
        pytest.param(
            *({"window_start": "2031-01-02T00:00:00Z", "window_end": "2031-01-01T00:00:00Z"}, "window_end"),
            id="window-backwards",
        ),
        pytest.param(*({"window_end": "not a date"}, "window_end"), id="window-end-not-a-date"),
        pytest.param(*({"min_lease_hours": "-1"}, "min_lease_hours"), id="negative-minimum-lease"),
        pytest.param(
            *({"min_lease_hours": "10", "max_lease_hours": "5"}, "max_lease_hours"), id="maximum-below-minimum"
        ),
        pytest.param(*({"price_rules": "discounts please"}, "price_rules"), id="rules-not-an-object"),
        pytest.param(*({"pool": ""}, "pool"), id="blank-pool"),
        pytest.param(*({"pool": "9" * 30}, "pool"), id="absurd-pool-id"),
        pytest.param(*({"nodes_offered": 10**30}, "nodes_offered"), id="absurd-node-count"),
        pytest.param(
            *({"price_rules": {"commitment_tiers": [{"min_hours": "x", "discount": "0.1"}]}}, "price_rules"),
            id="tier-hours-not-a-number",
        ),
        pytest.param(
            *({"price_rules": {"commitment_tiers": [{"min_hours": "10"}]}}, "price_rules"), id="tier-without-discount"
        ),
        pytest.param(
            *({"price_rules": {"commitment_tiers": [{"min_hours": "10", "discount": "1.5"}]}}, "price_rules"),
            id="tier-discount-above-one",
        ),
        pytest.param(
            *({"price_rules": {"green": {"max_discount": "-1"}}}, "price_rules"), id="negative-green-discount"
        ),
        pytest.param(*({"price_rules": {"volume_tiers": "lots"}}, "price_rules"), id="volume-tiers-not-a-list"),
        pytest.param(
            *({"pricing_type": "interruptible", "price_rules": {"interruptible": {"floor_ratio": "2"}}}, "price_rules"),
            id="interruptible-floor-above-one",
        ),
    ],
)
def test_bad_offer_input_is_a_400_naming_the_field(provider, overrides, field):
    pool = factories.pool(provider, factories.site(provider), node_count=4)
    response = client_for(provider).post(OFFERS, offer_body(pool, **overrides), format="json")
    assert response.status_code == 400, response.data
    assert names_field(response.data["field"], field), response.data
    assert response.data["detail"]
    assert not Offer.objects.exists()


def test_buyers_cannot_list_offers(buyer, provider):
    pool = factories.pool(provider, factories.site(provider))
    response = client_for(buyer).post(OFFERS, offer_body(pool), format="json")
    assert response.status_code == 403
    assert not Offer.objects.exists()


def test_anonymous_callers_cannot_see_or_list_offers(api, provider):
    pool = factories.pool(provider, factories.site(provider))
    assert api.get(OFFERS).status_code == 401
    assert api.post(OFFERS, offer_body(pool), format="json").status_code == 401


def test_an_unverified_providers_offers_are_invisible_to_buyers_but_not_to_it(buyer, operator):
    _verified, [listed] = factories.market(nodes=1)
    pending = factories.provider(verified=False)
    hidden = factories.offer(pending, factories.pool(pending, factories.site(pending)))
    seen_by_buyer = {o["id"] for o in client_for(buyer).get(OFFERS).data["results"]}
    assert listed.offers.get().pk in seen_by_buyer
    assert hidden.pk not in seen_by_buyer
    assert hidden.pk in {o["id"] for o in client_for(pending).get(OFFERS).data["results"]}
    assert hidden.pk in {o["id"] for o in client_for(operator).get(OFFERS).data["results"]}


def test_an_unverified_providers_offer_is_never_matched(buyer):
    _verified, [verified_pool] = factories.market(nodes=1)
    pending = factories.provider(verified=False)
    hidden = factories.offer(pending, factories.pool(pending, factories.site(pending), node_count=4))
    first, second = factories.submit(buyer), factories.submit(buyer)
    services.cycle_run()
    services.cycle_run()
    assert not Lease.objects.filter(offer=hidden).exists()
    assert Lease.objects.get(job=first).pool == verified_pool
    second.refresh_from_db()
    assert second.status == "queued"
    assert second.pending_reason.startswith("0/1 pools fit"), "the unverified pool is not even counted"


def test_a_job_only_an_unverified_provider_could_run_is_refused_at_submission(buyer):
    pending = factories.provider(verified=False)
    factories.offer(pending, factories.pool(pending, factories.site(pending)))
    response = client_for(buyer).post("/api/v1/jobs", factories.job_values(), format="json")
    assert response.status_code == 422
    assert response.data["code"] == "job_never_fits"
    assert not Job.objects.exists()


def test_a_provider_withdraws_its_offer_and_the_market_stops_using_it(provider, buyer):
    pool = factories.pool(provider, factories.site(provider), node_count=2)
    offer = factories.offer(provider, pool)
    response = client_for(provider).post(f"{OFFERS}/{offer.pk}/withdraw")
    assert response.status_code == 200, response.data
    assert response.data["status"] == "withdrawn"
    assert AuditEntry.objects.filter(action="offer.withdrawn", entity_id=str(offer.pk), actor=provider).exists()
    assert offer.pk not in {o["id"] for o in client_for(buyer).get(OFFERS).data["results"]}
    again = client_for(provider).post(f"{OFFERS}/{offer.pk}/withdraw")
    assert again.status_code == 409
    assert again.data["current"] == "withdrawn"
    refused = client_for(buyer).post("/api/v1/jobs", factories.job_values(), format="json")
    assert refused.status_code == 422 and refused.data["code"] == "job_never_fits"


def test_withdrawing_frees_the_nodes_for_a_new_offer(provider):
    pool = factories.pool(provider, factories.site(provider), node_count=2)
    offer = factories.offer(provider, pool)
    client = client_for(provider)
    assert client.post(OFFERS, offer_body(pool, nodes_offered=1), format="json").status_code == 400
    client.post(f"{OFFERS}/{offer.pk}/withdraw")
    assert client.post(OFFERS, offer_body(pool, nodes_offered=2), format="json").status_code == 201


def test_a_withdrawn_offers_leases_run_on(provider, buyer):
    pool = factories.pool(provider, factories.site(provider), node_count=1)
    offer = factories.offer(provider, pool)
    job = factories.submit(buyer)
    services.cycle_run()
    client_for(provider).post(f"{OFFERS}/{offer.pk}/withdraw")
    assert Lease.objects.get(job=job).status == "scheduled"
    job.refresh_from_db()
    assert job.status == "scheduled"


def test_only_the_offers_provider_may_withdraw_it(provider, buyer):
    other = factories.provider()
    offer = factories.offer(other, factories.pool(other, factories.site(other)))
    assert client_for(provider).post(f"{OFFERS}/{offer.pk}/withdraw").status_code == 404
    assert client_for(buyer).post(f"{OFFERS}/{offer.pk}/withdraw").status_code == 403
    offer.refresh_from_db()
    assert offer.status == "active"


def test_offers_filter_by_hub_and_stack(buyer):
    _gz_provider, [gz_pool] = factories.market(nodes=1)
    east = factories.provider(home_hub="JJJ", city="beijing")
    east_pool = factories.pool(east, factories.site(east, hub="JJJ", city="beijing"))
    factories.offer(east, east_pool)
    client = client_for(buyer)
    by_hub = client.get(OFFERS, {"hub": "JJJ"}).data["results"]
    assert [o["pool_identifier"] for o in by_hub] == [east_pool.identifier]
    assert client.get(OFFERS, {"software_stack": "cann"}).data["results"] == []
    assert {o["pool_identifier"] for o in client.get(OFFERS, {"software_stack": "cuda"}).data["results"]} == {
        gz_pool.identifier,
        east_pool.identifier,
    }


def test_listing_offers_costs_a_constant_number_of_queries(buyer, django_assert_max_num_queries):
    factories.market(pools=12, nodes=1)
    client = client_for(buyer)
    with django_assert_max_num_queries(4):
        response = client.get(OFFERS, {"limit": 100})
    assert response.data["count"] == 12
