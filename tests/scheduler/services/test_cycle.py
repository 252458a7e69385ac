from decimal import Decimal

import pytest

from core.models import AuditEntry
from scheduler import selectors, services
from scheduler.domain.capacity import overbookings
from scheduler.models import Job, Lease, Offer
from tests import factories

pytestmark = pytest.mark.django_db


def assert_not_overbooked() -> None:
    for offer in Offer.objects.select_related("pool", "pool__accelerator_model"):
        holds = [h for lease in selectors.holding_leases([offer.pk]) for h in selectors.lease_holds(lease)]
        assert overbookings(selectors.offer_node_shape(offer), offer.nodes_offered, holds) == [], offer


def test_a_queued_job_gets_a_lease_with_a_locked_price():
    _provider, [pool] = factories.market(nodes=2)
    buyer = factories.buyer()
    job = factories.submit(buyer)
    assert job.status == "queued"
    report = services.cycle_run()
    assert report.assigned == 1
    job.refresh_from_db()
    assert job.status == "scheduled" and job.pending_reason == ""
    lease = Lease.objects.get(job=job)
    assert lease.pool == pool
    assert lease.unit_price == Decimal("0.0200000000")
    assert lease.pricing_type == "on_demand"
    assert len(lease.allocations) == 1 and len(lease.allocations[0]["devices"]) == 8
    assert lease.estimated_cost > 0
    assert AuditEntry.objects.filter(action="job.transition", to_state="scheduled", entity_id=str(job.pk)).exists()
    assert AuditEntry.objects.filter(action="lease.created", entity_id=str(lease.pk)).exists()


def test_capacity_for_two_leaves_the_third_pending_with_the_reason():
    factories.market(nodes=2)
    buyer = factories.buyer()
    jobs = [factories.submit(buyer) for _ in range(3)]
    services.cycle_run()
    statuses = sorted(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", flat=True))
    assert statuses == ["queued", "scheduled", "scheduled"]
    waiting = Job.objects.get(pk__in=[j.pk for j in jobs], status="queued")
    assert waiting.pending_reason.startswith("0/1 pools fit")
    assert "no free capacity" in waiting.pending_reason or "reserved" in waiting.pending_reason
    assert_not_overbooked()


def test_a_cycle_with_nothing_queued_does_nothing():
    assert services.cycle_run().queued == 0


def test_a_cancelled_job_frees_its_capacity_for_the_next():
    factories.market(nodes=1)
    buyer = factories.buyer()
    first, second = factories.submit(buyer), factories.submit(buyer)
    services.cycle_run()
    first.refresh_from_db()
    assert first.status == "scheduled"
    services.job_cancel(job=first, actor=buyer, reason="changed plans")
    assert Lease.objects.get(job=first).status == "cancelled"
    services.cycle_run()
    second.refresh_from_db()
    assert second.status == "scheduled"
    assert_not_overbooked()


def test_partial_node_jobs_pack_onto_one_node():
    factories.market(nodes=2)
    buyer = factories.buyer()
    jobs = [factories.submit(buyer, accelerators_per_node=2) for _ in range(4)]
    services.cycle_run()
    leases = Lease.objects.filter(job__in=jobs)
    assert leases.count() == 4
    assert len({lease.allocations[0]["node"] for lease in leases}) == 1, "four quarter-node jobs share one node"
    assert_not_overbooked()


def test_an_on_demand_job_preempts_an_interruptible_lease():
    factories.market(nodes=1)
    buyer = factories.buyer()
    spot = factories.submit(buyer, interruptible=True)
    services.cycle_run()
    spot.refresh_from_db()
    assert spot.status == "scheduled"
    urgent = factories.submit(factories.buyer())
    services.cycle_run()
    urgent.refresh_from_db()
    spot.refresh_from_db()
    assert urgent.status == "scheduled"
    assert spot.status == "queued"
    assert Lease.objects.get(job=spot).status == "preempted"
    assert AuditEntry.objects.filter(entity_id=str(spot.pk), to_state="preempted").exists()
    assert_not_overbooked()
