from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from core.models import Notice
from scheduler import execution, services
from scheduler.models import Job, Lease
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_lease():
    factories.market(nodes=1)
    buyer = factories.buyer()
    job = factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.select_related("pool__site").get(job=job)
    services.lease_transition(lease=lease, to="running", actor=None)
    Job.objects.filter(pk=job.pk).update(status="running")
    return buyer, Lease.objects.select_related("pool__site").get(pk=lease.pk)


def test_unpaid_usage_suspends_the_lease_and_tells_both_parties(running_lease):
    buyer, lease = running_lease
    execution.lease_suspend(lease=lease, owed=Decimal("12.34"))
    lease.refresh_from_db()
    assert lease.status == "suspended" and lease.suspended_at is not None
    kinds = set(Notice.objects.values_list("organisation_id", "kind"))
    assert kinds == {(buyer.organisation_id, "lease.suspended"), (lease.pool.site.provider_id, "lease.suspended")}
    notices = client_for(buyer).get("/api/v1/notices").data
    assert "12.34" in notices[0]["message"]


def test_settling_the_debt_resumes_the_lease(running_lease, django_capture_on_commit_callbacks):
    buyer, lease = running_lease
    execution.lease_suspend(lease=lease, owed=Decimal("1.00"))
    with django_capture_on_commit_callbacks(execute=True):
        billing.wallet_top_up(organisation=buyer.organisation, amount=Decimal("5.00"), reference="P1", actor=buyer)
    lease.refresh_from_db()
    assert lease.status == "running"


def test_a_lease_left_unpaid_past_the_grace_period_ends(running_lease, django_capture_on_commit_callbacks):
    _buyer, lease = running_lease
    execution.lease_suspend(lease=lease, owed=Decimal("1.00"))
    assert execution.leases_end_unpaid(now=timezone.now()) == []
    later = timezone.now() + execution.suspension_grace() + timedelta(seconds=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert execution.leases_end_unpaid(now=later) == [lease.pk]
    lease.refresh_from_db()
    assert lease.status == "cancelled"
    assert Job.objects.get(pk=lease.job_id).status == "failed"
