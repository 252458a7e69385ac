"""The repair sweep finds work stuck without progress and moves it on, each
repair audited with its reason; a second sweep finds nothing to do.

Stuck work is made the way it happens: the callback after commit that was to
release a hold, or the task that was to charge usage, never ran (in these
tests callbacks after commit do not run unless captured)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from billing import checks
from billing import services as billing
from billing.models import AccountKind, Charge, Hold, SettlementStatement, UsageSample
from core.models import AuditEntry
from scheduler import execution, services
from scheduler.models import Job, Lease
from scheduler.repair import repair_stuck_work, stuck_after
from tests import factories

pytestmark = pytest.mark.django_db

FUNDS = Decimal("1000000.00")


def later(extra: float = 1) -> timezone.datetime:
    """A moment when whatever was left just now counts as stuck."""
    return timezone.now() + stuck_after() + timedelta(seconds=extra)


def ledger_sound() -> list[str]:
    return [breach for _name, check in checks.CHECKS for breach in check(10)]


def available(buyer) -> Decimal:
    return billing.balance(billing.account_code(buyer.organisation_id, AccountKind.BUYER_AVAILABLE))


def repairs(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


@pytest.fixture
def placed():
    """A buyer's job placed by a cycle: a scheduled lease with its hold."""
    provider, _pools = factories.market(nodes=1)
    buyer = factories.buyer(funds=FUNDS)
    job = factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.select_related("pool__site").get(job=job)
    agent = execution.agent_create(user=provider, name="node-1").agent
    return buyer, job, lease, agent


def run(lease: Lease, agent) -> Lease:
    return execution.lease_acknowledge(agent=agent, lease=lease)


def report_usage(lease: Lease, ncu_hours: Decimal) -> UsageSample:
    start = lease.start
    sample, _ = billing.usage_record(
        lease=lease, sequence=1, start=start, end=start + timedelta(minutes=1), ncu_hours=ncu_hours
    )
    return sample


def test_nothing_is_repaired_before_it_has_been_stuck_long_enough(placed):
    _buyer, _job, lease, agent = placed
    lease = run(lease, agent)
    report_usage(lease, Decimal("1.0000"))
    execution.lease_complete(agent=agent, lease=lease, exit_code=0, message="done")  # its hold release is lost
    report = repair_stuck_work(now=timezone.now())
    assert report.repaired == 0
    assert Hold.objects.get(lease=lease).status == "open"


def test_a_finished_lease_whose_release_was_lost_is_charged_and_released(placed):
    buyer, _job, lease, agent = placed
    held = Hold.objects.get(lease=lease).amount
    lease = run(lease, agent)
    sample = report_usage(lease, Decimal("1.0000"))
    execution.lease_complete(agent=agent, lease=lease, exit_code=0, message="done")
    assert available(buyer) == FUNDS - held  # the money is stuck in the hold

    report = repair_stuck_work(now=later())

    hold = Hold.objects.get(lease=lease)
    charge = Charge.objects.get(sample=sample)
    assert report.samples_charged == [sample.pk] and report.holds_released == [hold.pk]
    assert hold.status == "closed" and hold.captured == charge.from_hold and hold.released == held - charge.from_hold
    assert available(buyer) == FUNDS - charge.gross
    [released] = repairs("repair.hold_released")
    assert released.entity_id == str(hold.pk) and f"lease {lease.pk} ended (completed)" in released.reason
    assert repairs("repair.usage_charged")[0].entity_id == str(sample.pk)
    assert ledger_sound() == []
    again = repair_stuck_work(now=later())
    assert again.repaired == 0 and Charge.objects.filter(sample=sample).count() == 1


def test_a_cancelled_jobs_hold_goes_back_even_if_the_release_after_cancelling_was_lost(placed):
    buyer, job, lease, _agent = placed
    services.job_cancel(job=job, actor=buyer, reason="changed my mind")
    assert Hold.objects.get(lease=lease).status == "open"
    report = repair_stuck_work(now=later())
    assert Hold.objects.get(lease=lease).status == "voided"
    assert report.holds_released == [Hold.objects.get(lease=lease).pk]
    assert available(buyer) == FUNDS


def test_cancelling_a_job_releases_its_hold(placed, django_capture_on_commit_callbacks):
    buyer, job, lease, _agent = placed
    with django_capture_on_commit_callbacks(execute=True):
        services.job_cancel(job=job, actor=buyer)
    assert Hold.objects.get(lease=lease).status == "voided"
    assert available(buyer) == FUNDS
    assert repair_stuck_work(now=later()).repaired == 0


def test_usage_never_charged_is_charged_once(placed):
    _buyer, _job, lease, agent = placed
    lease = run(lease, agent)
    sample = report_usage(lease, Decimal("2.0000"))  # the charge task was lost
    report = repair_stuck_work(now=later())
    assert report.samples_charged == [sample.pk]
    charge = Charge.objects.get(sample=sample)
    assert charge.gross > 0 and charge.from_hold == charge.gross
    assert Lease.objects.get(pk=lease.pk).status == "running"  # a running lease is the watchdog's, not the sweep's
    assert repair_stuck_work(now=later()).samples_charged == []
    assert ledger_sound() == []


@pytest.mark.parametrize(
    ("lease_to", "retry", "job_becomes"),
    [("lost", True, "queued"), ("lost", False, "failed"), ("completed", True, "succeeded"), ("failed", True, "failed")],
)
def test_a_running_job_whose_lease_ended_without_it_moves_on(placed, lease_to, retry, job_becomes):
    _buyer, job, lease, agent = placed
    Job.objects.filter(pk=job.pk).update(retry_on_loss=retry)
    lease = run(lease, agent)
    services.lease_transition(lease=lease, to=lease_to, actor=None, reason="the job's transition was lost")
    report = repair_stuck_work(now=later())
    job.refresh_from_db()
    assert job.status == job_becomes
    assert (report.jobs_queued if job_becomes == "queued" else report.jobs_ended) == [job.pk]
    [entry] = repairs("repair.job_without_lease")
    assert f"its lease {lease.pk} is {lease_to}" in entry.reason
    transition = AuditEntry.objects.filter(action="job.transition", entity_id=str(job.pk)).last()
    assert transition.to_state == job_becomes and transition.reason.startswith("repair: running since")
    assert repair_stuck_work(now=later()).jobs_queued == []


def test_a_lease_holding_capacity_for_a_finished_job_is_cancelled(placed):
    _buyer, job, lease, _agent = placed
    Job.objects.filter(pk=job.pk).update(status="cancelled")  # the lease's cancellation was lost
    report = repair_stuck_work(now=later())
    lease.refresh_from_db()
    assert lease.status == "cancelled" and report.leases_cancelled == [lease.pk]
    assert report.holds_released == [Hold.objects.get(lease=lease).pk]
    assert "ended (cancelled) but the lease still held capacity" in repairs("repair.lease_cancelled")[0].reason


def test_a_submitted_job_never_queued_is_queued():
    factories.market(nodes=1)
    buyer = factories.buyer()
    job = factories.submit(buyer)
    Job.objects.filter(pk=job.pk).update(status="submitted")
    report = repair_stuck_work(now=later())
    job.refresh_from_db()
    assert job.status == "queued" and report.jobs_queued == [job.pk]
    assert "never queued" in repairs("repair.job_queued")[0].reason


def test_a_queued_job_no_cycle_has_seen_asks_for_a_cycle():
    factories.market(nodes=1)
    job = factories.submit(factories.buyer())  # its cycle was lost
    assert repair_stuck_work(now=timezone.now()).cycle_needed is False
    assert repair_stuck_work(now=later()).cycle_needed is True
    services.cycle_run()
    assert Job.objects.get(pk=job.pk).status == "scheduled"
    assert repair_stuck_work(now=later()).cycle_needed is False


def test_a_settlement_period_left_unclosed_is_closed(placed):
    _buyer, _job, lease, agent = placed
    lease = run(lease, agent)
    sample = report_usage(lease, Decimal("1.0000"))
    billing.charge_sample(sample_id=sample.pk, commission_rate=Decimal("0.08"))
    hours = settings.CX_SETTLEMENT_PERIOD_HOURS
    Charge.objects.filter(sample=sample).update(created_at=timezone.now() - timedelta(hours=2 * hours))
    report = repair_stuck_work(now=later())
    assert len(report.periods_closed) >= 1
    assert SettlementStatement.objects.filter(provider_charges__sample=sample).exists()
    assert repairs("repair.period_closed")
    assert repair_stuck_work(now=later()).periods_closed == []
    assert ledger_sound() == []


def test_the_sweep_runs_from_beat():
    entry = settings.CELERY_BEAT_SCHEDULE["repair-stuck-work"]
    assert entry["task"] == "scheduler.tasks.repair_stuck_work"
    from config.celery import app

    app.loader.import_default_modules()
    assert "scheduler.tasks.repair_stuck_work" in app.tasks
