"""Quotes reuse a market snapshot brought up to date on every call: a lease
made or ended, an offer listed or a pool edited is seen by the next quote;
what follows the clock is read again once the snapshot is old."""

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from marketplace import services as marketplace_services
from scheduler import selectors, services
from scheduler.domain.matching import quote
from scheduler.models import Lease, LeaseStatus, Offer
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


def test_when_only_leases_changed_only_the_moved_offers_leases_are_read_again(django_assert_max_num_queries):
    factories.market(pools=2, nodes=1)
    buyer = factories.buyer()
    first = selectors.quote_inputs(now=timezone.now())
    factories.submit(buyer)
    services.cycle_run()  # a lease on one of the offers
    # the fingerprint, the offers' generations, the moved offer's holding lease ids, the one new lease's row
    with django_assert_max_num_queries(4):
        again = selectors.quote_inputs(now=timezone.now())
    assert again is not first
    assert len(again[1]) == len(first[1]) + 1
    moved = {f"offer:{lease.offer_id}" for lease in Lease.objects.all()}
    assert len(moved) == 1
    for key in first[2]:
        if key in moved:  # a row of its own: the earlier inputs' row keeps its utilisation
            assert again[2][key] is not first[2][key]
            assert again[2][key].utilisation == 1
            assert first[2][key].utilisation == 0
        else:
            assert again[2][key] is first[2][key]
    options = services.quote_for(user=buyer, values=factories.job_values())["options"]
    assert len([o for o in options if o["assignment"].start <= timezone.now()]) == 1


def test_a_moved_offers_leases_seen_before_are_not_read_again(django_assert_max_num_queries):
    factories.market(pools=1, nodes=4)
    buyer = factories.buyer()
    factories.submit(buyer)
    services.cycle_run()
    first = selectors.quote_inputs(now=timezone.now())
    factories.submit(buyer)
    services.cycle_run()  # a second lease on the same offer
    with CaptureQueriesContext(connection) as queries:
        again = selectors.quote_inputs(now=timezone.now())
    rows_read = [q["sql"] for q in queries.captured_queries if '"allocations"' in q["sql"]]
    assert len(rows_read) == 1 and len(again[1]) == 2
    assert again[1][0] is first[1][0], "the lease seen before is kept as it was read"


def test_inputs_brought_up_to_date_lease_by_lease_equal_inputs_read_afresh():
    factories.market(pools=3, nodes=2)
    buyers = [factories.buyer(), factories.buyer()]
    selectors.quote_inputs(now=timezone.now())
    for round_ in range(4):
        for buyer in buyers:
            factories.submit(buyer)
        services.cycle_run()
        if round_ == 2:  # a lease ends early: its offer moves too
            lease = Lease.objects.order_by("id").first()
            services.lease_transition(lease=lease, to=LeaseStatus.CANCELLED, actor=None, reason="test")
        now = timezone.now()
        kept, fresh = selectors.quote_inputs(now=now), selectors.engine_inputs(now=now)
        assert sorted(kept[0], key=lambda p: p.pool_id) == sorted(fresh[0], key=lambda p: p.pool_id)
        assert sorted(kept[1], key=lambda x: x.lease_id) == sorted(fresh[1], key=lambda x: x.lease_id)
        assert {k: o.utilisation for k, o in kept[2].items()} == {k: o.utilisation for k, o in fresh[2].items()}


def test_an_old_snapshot_of_an_unchanged_market_is_read_again(monkeypatch):
    _provider, pools = factories.market(pools=1, nodes=1)
    first = selectors.quote_inputs(now=timezone.now())
    Offer.objects.filter(pool=pools[0]).update(list_price=Decimal("99.00"))  # terms: not in the fingerprint
    assert selectors.quote_inputs(now=timezone.now()) is first
    later = time.monotonic() + 3
    monkeypatch.setattr(time, "monotonic", lambda: later)
    again = selectors.quote_inputs(now=timezone.now())
    assert again is not first
    assert next(iter(again[2].values())).list_price == Decimal("99.00")


def test_while_one_thread_reads_an_old_snapshot_again_the_others_answer_from_it(
    monkeypatch, django_assert_max_num_queries
):
    factories.market(pools=1, nodes=1)
    first = selectors.quote_inputs(now=timezone.now())
    later = time.monotonic() + 3
    monkeypatch.setattr(time, "monotonic", lambda: later)
    # another thread is reading it again; this one asks the fingerprint only: no waiting, no reading
    with selectors._refresh_lock, django_assert_max_num_queries(1):
        assert selectors.quote_inputs(now=timezone.now()) is first


def test_a_site_edited_meanwhile_is_quoted_with_its_new_carbon_at_once():
    provider, pools = factories.market(pools=1, nodes=1)
    buyer = factories.buyer()
    first = services.quote_for(user=buyer, values=factories.job_values())["options"][0]["assignment"]
    assert first.carbon_kg > 0
    marketplace_services.site_update(site=pools[0].site, actor=provider, green_share=Decimal("1.00"))
    after = services.quote_for(user=buyer, values=factories.job_values())["options"][0]["assignment"]
    assert after.carbon_kg == 0, "all green: no carbon, though the market was read a moment ago"


def test_a_request_that_read_the_clock_just_before_the_market_was_prepared_quotes_on_it():
    """Threads of one process: the one that read the clock first may come second. It quotes on the
    market the other prepared, at the moment that one was prepared for, instead of preparing it again."""
    from datetime import timedelta

    factories.market(pools=2, nodes=1)
    later = timezone.now()
    prepared = selectors.quote_market(now=later)
    earlier = selectors.quote_market(now=later - timedelta(milliseconds=5))
    assert earlier.market is prepared.market
    assert earlier.now == later == prepared.market.prepared_at
    much_later = selectors.quote_market(now=later + timedelta(milliseconds=5))
    assert much_later.market is prepared.market and much_later.now == later + timedelta(milliseconds=5)


def test_the_market_prepared_after_a_lease_was_made_starts_from_the_one_before():
    """The pool the new lease took is worked out again; the other keeps its state, and both their answers
    are what a market prepared from scratch gives."""
    _provider, pools = factories.market(pools=2, nodes=1)
    buyer = factories.buyer()
    factories.submit(buyer)
    services.cycle_run()  # a lease on one pool
    before = selectors.quote_market(now=timezone.now()).market
    services.quote_for(user=buyer, values=factories.job_values())
    factories.submit(buyer)
    services.cycle_run()  # a lease on the other pool
    now = timezone.now()
    after = selectors.quote_market(now=now)
    taken = {lease.offer.pool_id: f"offer:{lease.offer_id}" for lease in Lease.objects.select_related("offer")}
    assert len(taken) == 2
    first, second = (taken[p.pk] for p in sorted(pools, key=lambda p: Lease.objects.get(offer__pool=p).pk))
    assert after.market is not before
    assert after.market._market.states[first] is before._market.states[first]
    assert after.market._market.states[second] is not before._market.states.get(second)
    pool_offers, leases, _rows = selectors.engine_inputs(now=now)
    job = services.job_spec(services.job_draft(user=buyer, values=factories.job_values()))
    assert after.market.quote(job, now=now) == quote(job, pool_offers, leases, now=now)


def _refreshed() -> None:
    """Wait for the background reading of the quote snapshot, if one runs."""
    for thread in threading.enumerate():
        if thread.name == "quote-snapshot-refresh":
            thread.join(timeout=30)
    assert not selectors._refresh_lock.locked(), "the refresh lock is released when the reading is done"


@pytest.mark.django_db(transaction=True)  # the background thread reads on a connection of its own
def test_an_old_snapshot_is_read_again_in_the_background_while_the_request_answers_from_it(settings, monkeypatch):
    settings.CX_QUOTE_REFRESH_IN_BACKGROUND = True
    _provider, pools = factories.market(pools=1, nodes=1)
    first = selectors.quote_inputs(now=timezone.now())
    Offer.objects.filter(pool=pools[0]).update(list_price=Decimal("99.00"))  # terms: not in the fingerprint
    later = time.monotonic() + 3
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert selectors.quote_inputs(now=timezone.now()) is first, "the request does not wait for the reading"
    _refreshed()
    again = selectors._quote_snapshot
    assert again.inputs is not first and again.taken == later
    assert next(iter(again.inputs[2].values())).list_price == Decimal("99.00")
    assert again.market is not None and again.market.usable_at(timezone.now()), "its market is prepared too"
    buyer = factories.buyer()
    pool_offers, leases, _rows = selectors.engine_inputs(now=timezone.now())
    now = timezone.now()
    job = services.job_spec(services.job_draft(user=buyer, values=factories.job_values()))
    prepared = selectors.quote_market(now=now)
    assert prepared.market is again.market
    assert prepared.market.quote(job, now=now) == quote(job, pool_offers, leases, now=now)


@pytest.mark.django_db(transaction=True)
def test_a_reading_that_fails_in_the_background_leaves_the_snapshot_and_is_tried_again(settings, monkeypatch):
    settings.CX_QUOTE_REFRESH_IN_BACKGROUND = True
    factories.market(pools=1, nodes=1)
    first = selectors.quote_inputs(now=timezone.now())
    later = time.monotonic() + 3
    monkeypatch.setattr(time, "monotonic", lambda: later)
    reading = selectors._snapshot_read

    def broken(**kwargs):
        raise ConnectionError("the database went away")

    monkeypatch.setattr(selectors, "_snapshot_read", broken)
    assert selectors.quote_inputs(now=timezone.now()) is first
    _refreshed()
    assert selectors._quote_snapshot.inputs is first
    monkeypatch.setattr(selectors, "_snapshot_read", reading)
    assert selectors.quote_inputs(now=timezone.now()) is first
    _refreshed()
    assert selectors._quote_snapshot.inputs is not first


@pytest.mark.django_db(transaction=True)
def test_a_background_reading_does_not_replace_a_snapshot_the_market_moved_on_to(settings):
    settings.CX_QUOTE_REFRESH_IN_BACKGROUND = True
    factories.market(pools=2, nodes=1)
    buyer = factories.buyer()
    first = selectors.quote_inputs(now=timezone.now())
    old = selectors._quote_snapshot
    factories.submit(buyer)
    services.cycle_run()  # a lease: the next call brings the snapshot up to date
    selectors.quote_inputs(now=timezone.now())
    moved_on = selectors._quote_snapshot
    assert moved_on is not old and len(moved_on.inputs[1]) == len(first[1]) + 1
    selectors._refresh_lock.acquire()
    refresh = threading.Thread(target=selectors._refresh, args=(old,), name="quote-snapshot-refresh")
    refresh.start()  # a reading of the old snapshot that ends after the market moved
    _refreshed()
    assert selectors._quote_snapshot is moved_on


def _leases_read_afresh(now) -> dict[int, list]:
    offers = list(Offer.objects.filter(status="active").values_list("id", flat=True))
    return dict(selectors._leases_by_offer(offers, now=now))


@pytest.mark.postgres  # SQLite gives an id again after a rollback: there every row is read each time
def test_a_cycles_leases_are_those_read_afresh_though_only_new_rows_are_read():
    factories.market(pools=3, nodes=2)
    buyers = [factories.buyer(), factories.buyer()]
    for round_ in range(4):
        for buyer in buyers:
            factories.submit(buyer)
        services.cycle_run()
        if round_ == 2:  # a lease ends early: it holds nothing from then on
            lease = Lease.objects.order_by("id").first()
            services.lease_transition(lease=lease, to=LeaseStatus.CANCELLED, actor=None, reason="test")
        now = timezone.now()
        offers = list(Offer.objects.filter(status="active").values_list("id", flat=True))
        with CaptureQueriesContext(connection) as queries:
            kept = selectors._holding_leases_of(offers, now=now)
        fresh = _leases_read_afresh(now)
        assert {pk: held for pk, held in kept.items() if held} == {pk: held for pk, held in fresh.items() if held}
        rows_read = [q["sql"] for q in queries.captured_queries if '"allocations"' in q["sql"]]
        assert len(rows_read) <= 1
        with CaptureQueriesContext(connection) as queries:
            again = selectors._holding_leases_of(offers, now=now)
        assert again == kept
        assert not [q for q in queries.captured_queries if '"allocations"' in q["sql"]], "no row read twice"
    assert Lease.objects.count() >= 6
    later = max(lease.end for lease in Lease.objects.all())
    assert selectors._holding_leases_of(offers, now=later) == {pk: [] for pk in offers}
    assert selectors._lease_rows == {}, "leases ended are forgotten"


def test_on_a_database_other_than_postgresql_every_lease_row_is_read_each_time(monkeypatch):
    factories.market(pools=1, nodes=2)
    factories.submit(factories.buyer())
    services.cycle_run()
    offers = list(Offer.objects.values_list("id", flat=True))
    now = timezone.now()
    monkeypatch.setattr(connections["default"], "vendor", "sqlite")  # as on SQLite, whichever this test runs on
    with CaptureQueriesContext(connection) as queries:
        kept = selectors._holding_leases_of(offers, now=now)
    assert kept == _leases_read_afresh(now) and sum(map(len, kept.values())) == 1
    assert [q for q in queries.captured_queries if '"allocations"' in q["sql"]]
    assert selectors._lease_rows == {}
