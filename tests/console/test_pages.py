"""The dashboard, its JSON and the buyers' and providers' pages: role rules
as in the API, figures a user would check, bounded query counts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client

from billing import services as billing
from console import selectors
from marketplace.domain.geography import HUBS
from scheduler import execution
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def market():
    """A two-node pool, a buyer with a lease on one node metered for an hour and a two-node job that waits."""
    provider_user, _pools = factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    billing.wallet_top_up(organisation=buyer.organisation, amount=Decimal("100000.00"), reference="R1", actor=buyer)
    running = factories.submit(buyer, name="running job")
    scheduler_services.cycle_run()
    lease = Lease.objects.get(job=running)
    billing.hold_for_lease(lease=lease)
    agent = execution.agent_create(user=provider_user, name="node-1").agent
    execution.lease_acknowledge(agent=agent, lease=lease)
    execution.lease_progress(agent=agent, lease=lease, percent=Decimal("42.5"), message="epoch 3 of 8")
    sample, _ = billing.usage_record(
        lease=lease, sequence=1, start=lease.start, end=lease.start + timedelta(hours=1), ncu_hours=lease.ncu
    )
    charge = billing.charge_sample(sample_id=sample.pk, commission_rate=Decimal("0.08")).charge
    waiting = factories.submit(buyer, name="waiting job", nodes=2)  # one node is taken
    scheduler_services.cycle_run()
    return {"provider": provider_user, "buyer": buyer, "lease": lease, "charge": charge, "waiting": waiting}


@pytest.mark.parametrize("url", ["/dashboard/", "/dashboard/data.json", "/my/jobs/", "/my/pools/"])
def test_anonymous_visitors_are_sent_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/accounts/login/?next={url}")


@pytest.mark.parametrize(
    ("role", "url", "status"),
    [
        ("buyer", "/my/jobs/", 200),
        ("buyer", "/my/pools/", 403),
        ("provider", "/my/pools/", 200),
        ("provider", "/my/jobs/", 403),
        ("operator", "/my/jobs/", 403),
        ("buyer", "/dashboard/", 200),
        ("provider", "/dashboard/data.json", 200),
        ("buyer", "/review/provider_statements/", 403),
        ("operator", "/review/provider_statements/", 302),
    ],
)
def test_pages_follow_the_apis_role_rules(role, url, status):
    user = {"buyer": factories.buyer, "provider": factories.provider, "operator": factories.operator}[role]()
    assert signed_in(user).get(url).status_code == status


def test_the_sign_in_page_takes_a_member_to_the_dashboard(client):
    buyer = factories.buyer()
    response = client.post("/accounts/login/", {"username": buyer.username, "password": factories.PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_the_dashboard_shows_the_market_to_members_and_the_backlog_only_to_operators(market, operator):
    buyer_view = signed_in(market["buyer"]).get("/dashboard/data.json").json()
    operator_view = signed_in(operator).get("/dashboard/data.json").json()

    assert buyer_view["backlog"] is None
    assert [q["queue"] for q in operator_view["backlog"]["queues"]][:3] == [
        "provider_statements",
        "disputes",
        "providers",
    ]
    hubs = {row["hub"]: row for row in buyer_view["capacity"]["hubs"]}
    assert list(hubs) == list(HUBS)
    gz = hubs["GZ"]
    assert Decimal(gz["held_ncu"]) == market["lease"].ncu.quantize(Decimal("0.1"))
    expected = market["lease"].ncu / Decimal(gz["offered_ncu"])
    assert abs(Decimal(gz["utilisation"]) - expected) < Decimal("0.001")
    assert buyer_view["queue_length"] == 1
    by_state = {row["state"]: row["count"] for row in buyer_view["jobs_by_state"]}
    assert (by_state["running"], by_state["queued"]) == (1, 1)
    intelligent = next(s for s in buyer_view["prices"]["series"] if s["compute_class"] == "intelligent")
    assert intelligent["points"][0]["index"] == "100.00"
    assert Decimal(intelligent["points"][0]["mean_price"]) == market["lease"].unit_price.quantize(Decimal("0.0001"))
    green = {row["hub"]: row for row in buyer_view["green"]}
    assert green["GZ"]["green_share"] == "0.6000"
    assert green["JJJ"]["green_share"] is None, "no pools there in this market"


def test_the_dashboards_first_paint_has_the_numbers_without_javascript(market, operator):
    html = signed_in(operator).get("/dashboard/").content.decode()
    assert 'data-figure="queue_length">1<' in html
    assert 'data-chart="capacity"' in html
    assert 'id="figures"' in html, "the figures the script draws from are in the page"
    for code in HUBS:
        assert f'data-hub="{code}"' in html


def test_dashboard_figures_take_a_bounded_number_of_queries(market, django_assert_max_num_queries):
    more_buyer = factories.buyer()
    for _ in range(3):
        factories.submit(more_buyer)
    factories.market(pools=3, nodes=2)
    scheduler_services.cycle_run()
    with django_assert_max_num_queries(16):
        selectors.market_figures(operator=True)


def test_a_buyer_sees_progress_cost_and_why_a_job_waits(market):
    html = signed_in(market["buyer"]).get("/my/jobs/").content.decode()
    rows = {row["name"]: row for row in selectors.buyer_jobs(organisation_id=market["buyer"].organisation_id)}
    running, waiting = rows["running job"], rows["waiting job"]
    assert running["progress_percent"] == Decimal("42.50")
    assert running["progress_message"] == "epoch 3 of 8"
    assert running["cost_so_far"] == market["charge"].gross
    assert running["pending_reason"] == ""
    assert "pools fit" in waiting["pending_reason"]
    assert waiting["pending_reason"] in html.replace("&#x27;", "'")
    assert str(market["charge"].gross) in html


def test_a_buyer_sees_only_its_own_jobs(market):
    other = factories.buyer()
    factories.submit(other, name="someone else's job")
    html = signed_in(market["buyer"]).get("/my/jobs/").content.decode()
    assert "someone else" not in html


def test_a_provider_sees_utilisation_earnings_reliability_and_ratings(market, django_assert_max_num_queries):
    lease = market["lease"]
    with django_assert_max_num_queries(10):
        summary = selectors.provider_pools(organisation_id=market["provider"].organisation_id)
    pools = {row["id"]: row for row in summary["pools"]}
    mine = pools[lease.pool_id]
    assert mine["earnings"] == market["charge"].provider_share
    assert mine["held_ncu"] == lease.ncu.quantize(Decimal("0.1"))
    assert Decimal(0) < mine["utilisation"] <= 1
    assert summary["reliability"] == Decimal("1.0000")
    assert summary["rating_average"] is None
    html = signed_in(market["provider"]).get("/my/pools/").content.decode()
    assert lease.pool.identifier in html
    assert str(market["charge"].provider_share) in html
