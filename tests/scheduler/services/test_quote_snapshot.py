"""Quotes reuse a market snapshot only while the market is unchanged: a
lease made, an offer listed or a pool edited is seen by the next quote."""

from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace import services as marketplace_services
from scheduler import selectors, services
from tests import factories

pytestmark = pytest.mark.django_db


def quote_pools(buyer) -> list[int]:
    result = services.quote_for(user=buyer, values=factories.job_values())
    return [option["offer"].pool_id for option in result["options"]]


def test_the_snapshot_is_reused_while_nothing_changes(django_assert_max_num_queries):
    factories.market(pools=2, nodes=1)
    first = selectors.quote_inputs(now=timezone.now())
    with django_assert_max_num_queries(1):  # the fingerprint only
        again = selectors.quote_inputs(now=timezone.now())
    assert again is first


def test_a_lease_made_meanwhile_is_seen_by_the_next_quote():
    _provider, pools = factories.market(pools=2, nodes=1)
    buyer = factories.buyer()
    assert sorted(quote_pools(buyer)) == sorted(p.pk for p in pools)
    factories.submit(buyer)
    services.cycle_run()  # one of the two one-node pools is taken now
    options = services.quote_for(user=buyer, values=factories.job_values())["options"]
    now_free = [o for o in options if o["assignment"].start <= timezone.now()]
    assert len(now_free) == 1


def test_an_offer_listed_meanwhile_is_quoted_at_once():
    provider, pools = factories.market(pools=1, nodes=1)
    buyer = factories.buyer()
    assert quote_pools(buyer) == [pools[0].pk]
    new_pool = factories.pool(provider, pools[0].site, name="new", node_count=1)
    factories.offer(provider, new_pool)
    assert sorted(quote_pools(buyer)) == sorted([pools[0].pk, new_pool.pk])


def test_a_zero_lifetime_turns_the_snapshot_off(settings):
    settings.CX_QUOTE_SNAPSHOT_SECONDS = 0
    factories.market(pools=1, nodes=1)
    assert selectors.quote_inputs(now=timezone.now()) is not selectors.quote_inputs(now=timezone.now())


def test_when_only_leases_changed_the_offers_are_kept_and_the_leases_read_again(django_assert_max_num_queries):
    factories.market(pools=2, nodes=1)
    buyer = factories.buyer()
    first = selectors.quote_inputs(now=timezone.now())
    factories.submit(buyer)
    services.cycle_run()  # a lease on one of the offers
    with django_assert_max_num_queries(2):  # the fingerprint and the leases
        again = selectors.quote_inputs(now=timezone.now())
    assert again is not first
    assert len(again[1]) == len(first[1]) + 1
    # the rows of the earlier inputs keep their own utilisation
    assert all(first[2][key] is not again[2][key] for key in first[2])
    options = services.quote_for(user=buyer, values=factories.job_values())["options"]
    assert len([o for o in options if o["assignment"].start <= timezone.now()]) == 1


def test_a_site_edited_meanwhile_is_quoted_with_its_new_carbon_at_once():
    provider, pools = factories.market(pools=1, nodes=1)
    buyer = factories.buyer()
    first = services.quote_for(user=buyer, values=factories.job_values())["options"][0]["assignment"]
    assert first.carbon_kg > 0
    marketplace_services.site_update(site=pools[0].site, actor=provider, green_share=Decimal("1.00"))
    after = services.quote_for(user=buyer, values=factories.job_values())["options"][0]["assignment"]
    assert after.carbon_kg == 0, "all green: no carbon, though the market was read a moment ago"
