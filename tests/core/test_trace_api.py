"""``GET /api/v1/trace/<job id>``: a job's whole story, oldest first, for
the buyer that owns it, the providers that ran it (their part) and
operators; nobody else learns it exists."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from billing import settlement
from billing.models import SettlementStatement
from scheduler import execution
from scheduler import services as scheduler_services
from scheduler.models import Lease, Offer
from tests import factories
from tests.conftest import client_for
from tests.vouchers import helpers

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def story(operator, django_capture_on_commit_callbacks):
    """A job with compute vouchers that starts on provider A's pool, is lost
    there after one charged sample, runs to success on provider B's pool
    with two charged samples, and is settled; B's statement is paid out."""
    provider_a, _pools = factories.market(nodes=1)
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator, amount="5000.00")
    with django_capture_on_commit_callbacks(execute=True):
        lease_a = helpers.lease_for(buyer)
        agent_a = execution.agent_create(user=provider_a, name="node-a").agent
        execution.lease_acknowledge(agent=agent_a, lease=lease_a)
        helpers.charge(lease_a, "10.00")
        execution.lease_lose(lease=Lease.objects.get(pk=lease_a.pk), now=timezone.now())
    scheduler_services.offer_withdraw(
        offer=Offer.objects.get(pool__site__provider=provider_a.organisation), actor=provider_a
    )

    provider_b, _pools = factories.market(nodes=1)
    scheduler_services.cycle_run()
    lease_b = Lease.objects.select_related("pool").get(job=lease_a.job, status="scheduled")
    assert lease_b.pool.site.provider_id == provider_b.organisation_id
    with django_capture_on_commit_callbacks(execute=True):
        billing.hold_for_lease(lease=lease_b)
        agent_b = execution.agent_create(user=provider_b, name="node-b").agent
        execution.lease_acknowledge(agent=agent_b, lease=lease_b)
        helpers.charge(lease_b, "20.00")
        helpers.charge(lease_b, "30.00")
        execution.lease_complete(agent=agent_b, lease=Lease.objects.get(pk=lease_b.pk), exit_code=0, message="done")

    settlement.settlement_close(start=timezone.now() - timedelta(hours=1), end=timezone.now())
    statement_b = SettlementStatement.objects.get(organisation=provider_b.organisation, role="provider")
    settlement.statement_approve(statement=statement_b, actor=operator, reason="matches the agent's logs")
    return {
        "job": lease_a.job,
        "buyer": buyer,
        "provider_a": provider_a,
        "provider_b": provider_b,
        "lease_a": lease_a.pk,
        "lease_b": lease_b.pk,
        "statement_b": statement_b,
    }


def trace(user, job_id: int):
    return client_for(user).get(f"/api/v1/trace/{job_id}")


def actions(body) -> list[str]:
    return [event["action"] for event in body["events"]]


def test_the_buyer_reads_the_whole_story_in_time_order(story, django_assert_max_num_queries):
    with django_assert_max_num_queries(25):
        response = trace(story["buyer"], story["job"].pk)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["scope"] == "buyer"
    assert body["job"]["id"] == story["job"].pk and body["job"]["status"] == "succeeded"
    assert [lease["id"] for lease in body["leases"]] == [story["lease_a"], story["lease_b"]]
    assert [lease["status"] for lease in body["leases"]] == ["lost", "completed"]
    lease_b = body["leases"][1]
    assert lease_b["usage"]["samples"] == 2 and lease_b["usage"]["charged"] == 2
    assert lease_b["hold"]["status"] == "closed" and D(lease_b["hold"]["captured"]) > 0

    events = body["events"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events), "oldest first"
    seen = actions(body)
    assert seen[0] == "job.submitted"
    placed = [e for e in events if e["action"] == "job.transition" and e["to_state"] == "scheduled"]
    assert [e["lease"] for e in placed] == [story["lease_a"], story["lease_b"]]
    assert all(e["reason"].startswith("placed on ") for e in placed), "every placement says where and when"
    lost = next(e for e in events if e["action"] == "lease.transition" and e["to_state"] == "lost")
    assert lost["lease"] == story["lease_a"] and "no heartbeat" in lost["reason"]
    requeued = next(e for e in events if e["action"] == "job.transition" and e["from_state"] == "running")
    assert "placing it elsewhere" in requeued["reason"]
    assert seen.count("usage.reported") == 3 and seen.count("charge.captured") == 3
    assert seen.count("voucher.redeemed") == 3
    charges = [D(e["amount"]) for e in events if e["action"] == "charge.captured"]
    assert charges == [D("10.00"), D("20.00"), D("30.00")]
    assert D(body["totals"]["gross"]) == D("60.00")
    assert D(body["totals"]["voucher_funded"]) == D("18.00"), "30% of each charge"
    assert D(body["totals"]["buyer_paid"]) + D(body["totals"]["owed"]) == D("42.00")
    assert seen.index("job.submitted") < seen.index("lease.created") < seen.index("charge.captured")
    assert seen[-1] != "job.submitted"

    # The buyer sees its own statement, never a provider's or a payout.
    assert {s["role"] for s in body["statements"]} == {"buyer"}
    assert [s["lease"] for s in body["statements"]] == [story["lease_a"], story["lease_b"]]
    assert all(s["payout"] is None for s in body["statements"])
    assert "statement.paid_out" not in seen


def test_an_operator_sees_every_statement_and_the_payout(story, operator):
    body = trace(operator, story["job"].pk).json()
    assert body["scope"] == "operator"
    roles = sorted((s["role"], s["organisation_name"]) for s in body["statements"])
    assert [role for role, _ in roles] == ["buyer", "buyer", "provider", "provider"]
    paid = [s for s in body["statements"] if s["payout"] is not None]
    assert [s["id"] for s in paid] == [story["statement_b"].pk]
    assert D(paid[0]["payout"]["amount"]) == story["statement_b"].payable
    assert "statement.paid_out" in actions(body)
    approved = next(e for e in body["events"] if e["action"] == "statement.approved")
    assert approved["reason"] == "matches the agent's logs" and approved["actor"] == operator.username


def test_a_provider_sees_only_its_own_part(story):
    body = trace(story["provider_b"], story["job"].pk).json()
    assert body["scope"] == "provider"
    assert [lease["id"] for lease in body["leases"]] == [story["lease_b"]]
    assert body["leases"][0]["hold"] is None, "the buyer's escrow is not the provider's business"
    leases_named = {e["lease"] for e in body["events"]} - {None}
    assert leases_named == {story["lease_b"]}
    placed = [e for e in body["events"] if e["action"] == "job.transition"]
    assert placed and all(e["lease"] == story["lease_b"] for e in placed)
    submitted = next(e for e in body["events"] if e["action"] == "job.submitted")
    assert submitted["actor"] == "buyer", "the buyer's users are named by role only"
    assert [(s["role"], s["lease"]) for s in body["statements"]] == [("provider", story["lease_b"])]
    assert body["statements"][0]["payout"] is not None
    assert D(body["totals"]["gross"]) == D("50.00")
    assert body["totals"]["buyer_paid"] is None and body["totals"]["owed"] is None
    charges = [e for e in body["events"] if e["kind"] == "charge"]
    assert charges and all({"from_hold", "from_available", "owed"}.isdisjoint(e["data"]) for e in charges)
    assert all("from the hold" not in e["summary"] and "to you after" in e["summary"] for e in charges)

    other_part = trace(story["provider_a"], story["job"].pk).json()
    assert [lease["id"] for lease in other_part["leases"]] == [story["lease_a"]]
    assert D(other_part["totals"]["gross"]) == D("10.00")
    assert all(s["payout"] is None for s in other_part["statements"])


def test_nobody_else_learns_the_job_exists(story, api):
    job = story["job"].pk
    for outsider in (factories.buyer(), factories.provider()):
        response = trace(outsider, job)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert trace(story["buyer"], job + 1000).status_code == 404
    assert trace(story["buyer"], 10**30).status_code == 404, "an id beyond any column's range is not a 500"
    assert api.get(f"/api/v1/trace/{job}").status_code in {401, 403}


def test_a_job_still_queued_says_why_it_waits(buyer):
    factories.market(nodes=1)
    billing.wallet_top_up(organisation=buyer.organisation, amount=D("10000.00"), reference="R1", actor=buyer)
    first = factories.submit(buyer, deadline=None)
    job = factories.submit(buyer, name="second", deadline=timezone.now() + timedelta(hours=3))
    scheduler_services.cycle_run()
    assert Lease.objects.filter(job=first).exists()
    body = trace(buyer, job.pk).json()
    assert body["job"]["status"] == "queued"
    assert body["job"]["pending_reason"].startswith("0/1 pools fit")
    assert body["leases"] == [] and body["statements"] == []
    assert [e["action"] for e in body["events"]] == ["job.submitted", "job.transition"]
    assert body["events"][1]["to_state"] == "queued" and body["events"][1]["reason"]
