"""The repair sweep: find work left in a non-final state with nothing
making progress on it, and move it on. Run by the beat task
``scheduler.tasks.repair_stuck_work`` every ``CX_REPAIR_SECONDS`` (60).

Work gets stuck when the message or callback that was to move it on is lost
— a task in Redis when Redis restarts, a callback after commit in a process
that died or whose database connection broke at that moment. What is
repaired, once it has been stuck for ``CX_STUCK_SECONDS`` (300):

- a job *submitted* but never queued → queued;
- a job *queued* that no scheduling cycle has looked at (no pending reason)
  → a cycle is sent;
- a job *scheduled* or *running* with no lease holding capacity for it, or
  *preempted* and not put back → queued again (or failed if it asked not to
  be retried);
- a lease still holding capacity for a job that has ended → cancelled;
- a usage sample never charged → charged (exactly once, as always);
- the hold of a lease that ended and was never released → the lease's
  uncharged usage charged, the rest of the hold released;
- a settlement period that ended with charges not on a statement → closed.

Leases whose agent went silent or never started are the watchdog's
(``scheduler.execution.leases_watch``), and suspended leases past their
grace too (``leases_end_unpaid``): the sweep leaves them alone.

Every repair goes through the same services as the normal path, so it is
idempotent (a repaired item is no longer stuck, and a second sweep, or one
racing the normal path, finds nothing to do) and each writes an audit entry
``repair.<what>`` saying why."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from billing import services as billing
from billing.models import Charge, Hold, HoldStatus, UsageSample
from core.audit import audit_record
from core.errors import ApplicationError, IllegalTransition
from scheduler.models import (
    FINAL_JOB_STATES,
    HOLDING_LEASE_STATES,
    Job,
    JobStatus,
    Lease,
    LeaseStatus,
)
from scheduler.services import commission_rate_for, job_transition, lease_transition

log = logging.getLogger(__name__)

BATCH = 500  # items of one kind repaired per sweep; the next sweep takes the rest


def stuck_after() -> timedelta:
    """How long work may sit without progress before the sweep repairs it."""
    return timedelta(seconds=float(getattr(settings, "CX_STUCK_SECONDS", 300)))


@dataclass
class RepairReport:
    """What one sweep repaired (ids), and what it could not (id, reason)."""

    jobs_queued: list[int] = field(default_factory=list)
    jobs_ended: list[int] = field(default_factory=list)
    cycle_needed: bool = False
    leases_cancelled: list[int] = field(default_factory=list)
    samples_charged: list[int] = field(default_factory=list)
    holds_released: list[int] = field(default_factory=list)
    periods_closed: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return (
            len(self.jobs_queued)
            + len(self.jobs_ended)
            + len(self.leases_cancelled)
            + len(self.samples_charged)
            + len(self.holds_released)
            + len(self.periods_closed)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the Celery task's result."""
        return {
            "jobs_queued": self.jobs_queued,
            "jobs_ended": self.jobs_ended,
            "cycle_needed": self.cycle_needed,
            "leases_cancelled": self.leases_cancelled,
            "samples_charged": self.samples_charged,
            "holds_released": self.holds_released,
            "periods_closed": self.periods_closed,
            "failed": [{"item": item, "reason": reason} for item, reason in self.failed],
        }


def repair_stuck_work(*, now: datetime | None = None) -> RepairReport:
    """One sweep over every kind of stuck work (see the module's docstring).
    Safe to run at any time and in several processes at once."""
    now = now or timezone.now()
    cutoff = now - stuck_after()
    report = RepairReport()
    _leases_of_ended_jobs(cutoff, report)
    _jobs_submitted(cutoff, report)
    _jobs_without_lease(cutoff, report)
    _samples_uncharged(cutoff, report)
    _holds_of_ended_leases(cutoff, report)
    _periods_unclosed(now, cutoff, report)
    _queue_unseen(cutoff, report)
    if report.repaired or report.failed:
        log.warning("repair sweep: %s", report.as_dict())
    return report


def _since(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "an unknown time"


# --- jobs and leases -------------------------------------------------------------------------------------------------


def _jobs_submitted(cutoff: datetime, report: RepairReport) -> None:
    """Submitted jobs nobody queued (submission queues them in the same transaction; this catches any other path)."""
    for job in Job.objects.filter(status=JobStatus.SUBMITTED, status_changed_at__lt=cutoff).order_by("id")[:BATCH]:
        reason = f"repair: submitted at {_since(job.status_changed_at)} but never queued"
        try:
            with transaction.atomic():
                job_transition(job=job, to=JobStatus.QUEUED, actor=None, reason=reason)
                audit_record(actor=None, action="repair.job_queued", entity=job, reason=reason)
        except IllegalTransition:  # moved on meanwhile
            continue
        report.jobs_queued.append(job.pk)


def _jobs_without_lease(cutoff: datetime, report: RepairReport) -> None:
    """Scheduled or running jobs with no lease holding capacity for them, and
    preempted jobs not put back in the queue. A job whose last lease
    completed or failed ends as its lease did; otherwise it is queued again
    (or fails, if it asked not to be retried)."""
    holding = Lease.objects.filter(job=OuterRef("pk"), status__in=HOLDING_LEASE_STATES)
    stuck = (
        Job.objects.filter(
            status__in=(JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.PREEMPTED), status_changed_at__lt=cutoff
        )
        .filter(~Exists(holding))
        .order_by("id")
    )
    for job_id in list(stuck.values_list("pk", flat=True)[:BATCH]):
        try:
            with transaction.atomic():
                job = Job.objects.select_for_update().get(pk=job_id)
                if job.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.PREEMPTED):
                    continue
                if Lease.objects.filter(job_id=job_id, status__in=HOLDING_LEASE_STATES).exists():
                    continue
                last = Lease.objects.filter(job_id=job_id).order_by("-id").first()
                story = f"{job.status} since {_since(job.status_changed_at)} but " + (
                    f"its lease {last.pk} is {last.status}" if last else "it has no lease"
                )
                if last is not None and last.status == LeaseStatus.COMPLETED and job.status != JobStatus.PREEMPTED:
                    path, outcome = [JobStatus.RUNNING, JobStatus.SUCCEEDED], "ends as its lease did"
                elif last is not None and last.status == LeaseStatus.FAILED and job.status != JobStatus.PREEMPTED:
                    path, outcome = [JobStatus.FAILED], "ends as its lease did"
                elif job.retry_on_loss or job.status == JobStatus.PREEMPTED:
                    path, outcome = [JobStatus.QUEUED], "queued again"
                else:
                    path, outcome = [JobStatus.FAILED], "failed: the job asked not to be retried"
                reason = f"repair: {story}; {outcome}"
                for to in path:
                    if to != job.status:
                        job = job_transition(job=job, to=to, actor=None, reason=reason)
                audit_record(actor=None, action="repair.job_without_lease", entity=job, reason=reason)
        except ApplicationError as error:  # this job is left for the next sweep; the others go on
            report.failed.append((f"job {job_id}", error.detail))
            continue
        (report.jobs_queued if job.status == JobStatus.QUEUED else report.jobs_ended).append(job_id)


def _leases_of_ended_jobs(cutoff: datetime, report: RepairReport) -> None:
    """Leases still holding capacity for a job that has ended: cancelled, so
    the capacity returns to the market (their holds are released below)."""
    stuck = Lease.objects.filter(
        status__in=HOLDING_LEASE_STATES, job__status__in=FINAL_JOB_STATES, job__status_changed_at__lt=cutoff
    ).order_by("id")
    for lease in list(stuck.select_related("job")[:BATCH]):
        reason = f"repair: its job {lease.job_id} ended ({lease.job.status}) but the lease still held capacity"
        try:
            with transaction.atomic():
                lease_transition(lease=lease, to=LeaseStatus.CANCELLED, actor=None, reason=reason)
                audit_record(actor=None, action="repair.lease_cancelled", entity=lease, reason=reason)
        except IllegalTransition:
            continue
        report.leases_cancelled.append(lease.pk)


def _queue_unseen(cutoff: datetime, report: RepairReport) -> None:
    """Queued jobs no cycle has looked at yet (a cycle writes why a job
    waits): the cycle that should have run was lost; the task sends one."""
    report.cycle_needed = Job.objects.filter(status=JobStatus.QUEUED, queued_at__lt=cutoff, pending_reason="").exists()


# --- money -----------------------------------------------------------------------------------------------------------


def _charge(sample_id: int, lease: Lease, *, reason: str, report: RepairReport) -> Decimal | None:
    """Charge one sample unless it is charged already or a charging worker
    holds it; the amount owed if neither hold nor wallet covered it. A
    refusal is reported, not raised."""
    try:
        with transaction.atomic():
            sample = UsageSample.objects.select_for_update(skip_locked=True).filter(pk=sample_id, charged=False).first()
            if sample is None:
                return None
            outcome = billing.charge_sample(sample_id=sample_id, commission_rate=commission_rate_for(lease.offer))
            audit_record(actor=None, action="repair.usage_charged", entity=sample, reason=reason)
    except ApplicationError as error:
        report.failed.append((f"usage sample {sample_id}", error.detail))
        return None
    report.samples_charged.append(sample_id)
    return outcome.charge.owed if outcome.suspended and outcome.charge is not None else None


def _samples_uncharged(cutoff: datetime, report: RepairReport) -> None:
    """Usage samples reported long ago and never charged (the charge task was
    lost): charged now, the lease suspended if nothing covers them."""
    stale = (
        UsageSample.objects.filter(charged=False, received_at__lt=cutoff)
        .select_related("lease__offer__pool__site__provider")
        .order_by("id")[:BATCH]
    )
    for sample in list(stale):
        reason = f"repair: usage reported at {_since(sample.received_at)} was never charged"
        owed = _charge(sample.pk, sample.lease, reason=reason, report=report)
        if owed is not None:
            from scheduler.execution import lease_suspend

            try:
                lease_suspend(lease=Lease.objects.select_related("pool__site").get(pk=sample.lease_id), owed=owed)
            except ApplicationError as error:
                log.info("lease %s was not suspended: %s", sample.lease_id, error.detail)


def _holds_of_ended_leases(cutoff: datetime, report: RepairReport) -> None:
    """Open holds of leases that ended long ago (the release after the lease
    ended was lost, or the path that ended it releases nothing): the lease's
    uncharged usage is charged, then the rest of the hold goes back to the
    buyer's available balance."""
    stuck = (
        Hold.objects.filter(status=HoldStatus.OPEN, lease__ended_at__lt=cutoff)
        .exclude(lease__status__in=HOLDING_LEASE_STATES)
        .select_related("lease__offer__pool__site__provider")
        .order_by("id")[:BATCH]
    )
    for hold in list(stuck):
        lease = hold.lease
        reason = f"repair: lease {lease.pk} ended ({lease.status}) at {_since(lease.ended_at)} but its hold was open"
        for sample_id in UsageSample.objects.filter(lease_id=lease.pk, charged=False).values_list("pk", flat=True):
            _charge(sample_id, lease, reason=reason, report=report)
        with transaction.atomic():
            if not Hold.objects.select_for_update().filter(pk=hold.pk, status=HoldStatus.OPEN).exists():
                continue  # released meanwhile
            if UsageSample.objects.filter(lease_id=lease.pk, charged=False).exists():
                continue  # a sample is still being charged (or was refused): the hold pays it first, next sweep
            closed = billing.hold_close(lease=lease)
            audit_record(
                actor=None,
                action="repair.hold_released",
                entity=closed,
                reason=reason,
                data={"released": str(closed.released), "status": closed.status},
            )
        report.holds_released.append(hold.pk)


def _periods_unclosed(now: datetime, cutoff: datetime, report: RepairReport) -> None:
    """Settlement periods that ended a while ago with charges on no statement:
    closed (the closing task was lost, or its worker was down)."""
    from billing.settlement import period_containing, settlement_close_due

    due_end = period_containing(cutoff)[0]
    oldest = (
        Charge.objects.filter(provider_statement__isnull=True, created_at__lt=due_end)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if oldest is None:
        return
    reason = f"repair: charges made since {_since(oldest)} were on no statement after their period had ended"
    for period in settlement_close_due(now=min(now, timezone.now())):  # a period closes once it has ended
        audit_record(actor=None, action="repair.period_closed", entity=period, reason=reason)
        report.periods_closed.append(period.pk)
