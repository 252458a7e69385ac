"""The verbs of the scheduler: list offers, submit and cancel jobs, run a
scheduling cycle. One transaction each, every state change audited; the job
and lease status change only through :func:`job_transition` and
:func:`lease_transition` (or their bulk forms inside a cycle)."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from billing import services as billing
from billing.domain import pricing
from billing.selectors import month_to_date_ncu_hours
from core.audit import audit_many, audit_record
from core.errors import Conflict, Forbidden, IllegalTransition, InvalidInput
from marketplace.models import ResourcePool, Role, User
from scheduler import selectors
from scheduler.domain import demand as engine
from scheduler.domain import matching
from scheduler.domain.capacity import Hold, fits, hold_from
from scheduler.models import (
    FINAL_JOB_STATES,
    HOLDING_LEASE_STATES,
    Job,
    JobStatus,
    Lease,
    LeaseStatus,
    Offer,
    OfferStatus,
)

log = logging.getLogger(__name__)

JOB_TRANSITIONS: dict[str, set[str]] = {
    JobStatus.SUBMITTED: {JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED},
    JobStatus.QUEUED: {JobStatus.SCHEDULED, JobStatus.CANCELLED, JobStatus.FAILED},
    JobStatus.SCHEDULED: {
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
        JobStatus.FAILED,
        JobStatus.PREEMPTED,
    },
    JobStatus.RUNNING: {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.PREEMPTED,
        JobStatus.QUEUED,
    },
    JobStatus.PREEMPTED: {JobStatus.QUEUED, JobStatus.CANCELLED},
    JobStatus.SUCCEEDED: set(),
    JobStatus.FAILED: set(),
    JobStatus.CANCELLED: set(),
}

LEASE_TRANSITIONS: dict[str, set[str]] = {
    LeaseStatus.SCHEDULED: {LeaseStatus.RUNNING, LeaseStatus.CANCELLED, LeaseStatus.PREEMPTED, LeaseStatus.LOST},
    LeaseStatus.RUNNING: {
        LeaseStatus.COMPLETED,
        LeaseStatus.FAILED,
        LeaseStatus.LOST,
        LeaseStatus.PREEMPTED,
        LeaseStatus.CANCELLED,
        LeaseStatus.SUSPENDED,
    },
    # A suspended lease (usage not covered) resumes once the buyer pays, or ends.
    LeaseStatus.SUSPENDED: {
        LeaseStatus.RUNNING,
        LeaseStatus.COMPLETED,
        LeaseStatus.FAILED,
        LeaseStatus.LOST,
        LeaseStatus.CANCELLED,
    },
    LeaseStatus.COMPLETED: set(),
    LeaseStatus.FAILED: set(),
    LeaseStatus.LOST: set(),
    LeaseStatus.PREEMPTED: set(),
    LeaseStatus.CANCELLED: set(),
}


# --- state machines --------------------------------------------------------------------------------------------------


def job_transition(
    *, job: Job, to: str, actor: User | None, reason: str = "", data: dict[str, Any] | None = None
) -> Job:
    """Move a job to ``to`` if the transition table allows it from its current
    state: a conditional UPDATE (two callers cannot both win), audited."""
    with transaction.atomic():
        current = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        if current is None or to not in JOB_TRANSITIONS[current]:
            raise IllegalTransition(entity=f"Job {job.pk}", current=current or "missing", target=to)
        now = timezone.now()
        fields: dict[str, Any] = {"status": to, "status_changed_at": now}
        if to == JobStatus.QUEUED:
            fields["queued_at"] = now
        if to != JobStatus.QUEUED:
            fields["pending_reason"] = ""
        if not Job.objects.filter(pk=job.pk, status=current).update(**fields):
            raise IllegalTransition(entity=f"Job {job.pk}", current=current, target=to)
        audit_record(
            actor=actor, action="job.transition", entity=job, from_state=current, to_state=to, reason=reason, data=data
        )
    job.refresh_from_db()
    return job


def lease_transition(*, lease: Lease, to: str, actor: User | None, reason: str = "") -> Lease:
    with transaction.atomic():
        current = Lease.objects.filter(pk=lease.pk).values_list("status", flat=True).first()
        if current is None or to not in LEASE_TRANSITIONS[current]:
            raise IllegalTransition(entity=f"Lease {lease.pk}", current=current or "missing", target=to)
        fields: dict[str, Any] = {"status": to}
        if to not in HOLDING_LEASE_STATES:
            fields["ended_at"] = timezone.now()
        if not Lease.objects.filter(pk=lease.pk, status=current).update(**fields):
            raise IllegalTransition(entity=f"Lease {lease.pk}", current=current, target=to)
        Offer.objects.filter(pk=lease.offer_id).update(generation=F("generation") + 1)
        audit_record(
            actor=actor, action="lease.transition", entity=lease, from_state=current, to_state=to, reason=reason
        )
    lease.refresh_from_db()
    return lease


def models_F(name: str):
    from django.db.models import F

    return F(name)


# --- offers ----------------------------------------------------------------------------------------------------------


def _check_price_rules(rules: dict[str, Any], *, list_price: Decimal, pricing_type: str) -> None:
    probe = Offer(list_price=list_price, pricing_type=pricing_type, price_rules=rules)
    try:
        selectors.price_rules(probe)
    except InvalidInput as exc:  # the pricing module's own verdict names its inner field
        inner = f"price_rules.{exc.field}" if exc.field else "price_rules"
        raise InvalidInput(f"price rules are not valid: {exc.detail}", field=inner) from None
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise InvalidInput(f"price rules are not valid: {exc}", field="price_rules") from None


@transaction.atomic
def offer_create(
    *,
    pool: ResourcePool,
    actor: User,
    nodes_offered: int,
    list_price: Decimal,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    pricing_type: str = "on_demand",
    price_rules: dict[str, Any] | None = None,
    min_lease_hours: Decimal = Decimal(0),
    max_lease_hours: Decimal | None = None,
) -> Offer:
    """List some nodes of a pool. The nodes of a pool's active offers never
    add up to more than the pool has."""
    if actor.organisation_id != pool.site.provider_id:
        raise Forbidden("only the pool's provider lists offers on it")
    locked = ResourcePool.objects.select_for_update().get(pk=pool.pk)
    if locked.status != "active":
        raise InvalidInput("the pool is retired", field="pool")
    listed = Offer.objects.filter(pool=locked, status=OfferStatus.ACTIVE).aggregate(n=Sum("nodes_offered"))["n"] or 0
    if nodes_offered < 1:
        raise InvalidInput("an offer lists at least one node", field="nodes_offered")
    if listed + nodes_offered > locked.node_count:
        raise InvalidInput(
            f"the pool has {locked.node_count} nodes and {listed} are already offered; "
            f"at most {locked.node_count - listed} more can be",
            field="nodes_offered",
        )
    if list_price <= 0:
        raise InvalidInput("the price per NCU-hour must be positive", field="list_price")
    start = window_start or timezone.now()
    if window_end is not None and window_end <= start:
        raise InvalidInput("the window ends after it starts", field="window_end")
    if min_lease_hours < 0:
        raise InvalidInput("the minimum lease cannot be negative", field="min_lease_hours")
    if max_lease_hours is not None and max_lease_hours < max(min_lease_hours, Decimal("0.01")):
        raise InvalidInput("the maximum lease is at least the minimum", field="max_lease_hours")
    rules = price_rules or {}
    _check_price_rules(rules, list_price=list_price, pricing_type=pricing_type)
    offer = Offer.objects.create(
        pool=locked,
        nodes_offered=nodes_offered,
        window_start=start,
        window_end=window_end,
        pricing_type=pricing_type,
        list_price=list_price,
        price_rules=rules,
        min_lease_hours=min_lease_hours,
        max_lease_hours=max_lease_hours,
    )
    audit_record(
        actor=actor,
        action="offer.created",
        entity=offer,
        to_state=OfferStatus.ACTIVE,
        data={"pool": locked.identifier, "nodes": nodes_offered, "list_price": str(list_price)},
    )
    transaction.on_commit(_kick_scheduler)
    return offer


@transaction.atomic
def offer_withdraw(*, offer: Offer, actor: User, reason: str = "") -> Offer:
    """Withdraw an offer: no new leases on it; leases already made run on."""
    updated = Offer.objects.filter(pk=offer.pk, status=OfferStatus.ACTIVE).update(status=OfferStatus.WITHDRAWN)
    if not updated:
        raise IllegalTransition(entity=f"Offer {offer.pk}", current=offer.status, target=OfferStatus.WITHDRAWN)
    audit_record(
        actor=actor,
        action="offer.withdrawn",
        entity=offer,
        from_state=OfferStatus.ACTIVE,
        to_state=OfferStatus.WITHDRAWN,
        reason=reason,
    )
    offer.refresh_from_db()
    return offer


# --- jobs ------------------------------------------------------------------------------------------------------------

JOB_FIELDS = (
    "name",
    "image",
    "command",
    "device_models",
    "capacity_tflops",
    "capacity_precision",
    "capacity_accelerator_memory_gib",
    "accelerators_per_node",
    "accelerator_milli",
    "nodes",
    "cpu_milli_per_node",
    "memory_mib_per_node",
    "storage_gib_per_node",
    "accelerator_memory_gib",
    "software_stack",
    "cpu_architecture",
    "duration_seconds",
    "earliest_start",
    "deadline",
    "max_price_per_ncu_hour",
    "max_total_price",
    "allowed_hubs",
    "buyer_city",
    "max_latency_ms",
    "domestic_only",
    "interruptible",
    "objective",
    "retry_on_loss",
)


def job_spec(job: Job) -> engine.JobSpec:
    """The engine's view of a job (raises the engine's JobSpecError, a 400, for impossible combinations)."""
    capacity = None
    if job.capacity_tflops:
        capacity = engine.CapacityDemand(
            tflops=Decimal(job.capacity_tflops),
            precision=job.capacity_precision or "fp16",
            accelerator_memory_gib=Decimal(job.capacity_accelerator_memory_gib),
        )
    return engine.JobSpec(
        job_id=str(job.pk) if job.pk else "new",
        org_id=str(job.buyer_id),
        submitted_at=job.queued_at or job.created_at or timezone.now(),
        stack=job.software_stack,
        duration=timedelta(seconds=job.duration_seconds),
        device_models=frozenset(job.device_models or ()),
        capacity=capacity,
        accelerators_per_node=job.accelerators_per_node,
        accelerator_milli=job.accelerator_milli,
        nodes=job.nodes,
        cpu_milli_per_node=job.cpu_milli_per_node,
        memory_mib_per_node=job.memory_mib_per_node,
        storage_gib_per_node=job.storage_gib_per_node,
        accelerator_memory_gib=Decimal(job.accelerator_memory_gib),
        cpu_architecture=job.cpu_architecture or None,
        earliest_start=job.earliest_start,
        deadline=job.deadline,
        max_price_per_ncu_hour=job.max_price_per_ncu_hour,
        max_total_price=job.max_total_price,
        allowed_hubs=frozenset(job.allowed_hubs or ()),
        buyer_city=job.buyer_city or None,
        max_latency_ms=job.max_latency_ms,
        domestic_only=job.domestic_only,
        interruptible=job.interruptible,
        objective=job.objective,
        priority=job.priority,
    )


def _require_buyer(user: User) -> None:
    if user.role != Role.BUYER or user.organisation is None:
        raise Forbidden("only buyer organisations submit jobs")


def job_draft(*, user: User, values: dict[str, Any]) -> Job:
    """An unsaved job from validated API values, checked by the engine's rules."""
    unknown = set(values) - set(JOB_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]}", field=sorted(unknown)[0])
    job = Job(buyer=user.organisation, submitted_by=user, **values)
    if not job.buyer_city:
        job.buyer_city = user.organisation.city
    job.created_at = timezone.now()
    if job.deadline is not None and job.deadline <= job.created_at:
        raise InvalidInput("the deadline has already passed", field="deadline")
    job_spec(job)  # validates combinations; raises JobSpecError (400) naming the field
    return job


def job_submit(*, user: User, values: dict[str, Any], use_vouchers: bool = False) -> Job:
    """Submit a job: validated, refused at once with the reason if no pool of
    the market could ever run it, else queued for the scheduler.

    A job that passes the check is queued at once, so it is written queued:
    one INSERT, not an INSERT then :func:`job_transition`'s read, conditional
    UPDATE and re-read of a row no one else can see before the commit. Its
    trail is what the transition writes: ``job.submitted``, then
    ``job.transition`` submitted → queued with the check's verdict as the
    reason, both in one batch."""
    _require_buyer(user)
    job = job_draft(user=user, values=values)
    now = timezone.now()
    market, _rows, now = selectors.quote_market(now=now)
    explanation = market.check_submission(job_spec(job), now=now)
    with transaction.atomic():
        job.status, job.queued_at = JobStatus.QUEUED, timezone.now()
        job.save(force_insert=True)
        trail = _submission_trail(job, reason=explanation.message, explanation=explanation.as_dict())
        if use_vouchers:  # the choice is recorded between the submission and the queueing, as it is made
            from vouchers.services import job_voucher_choose

            audit_many(trail[:1], actor=user)
            job_voucher_choose(job=job, enabled=True, actor=user)
            audit_many(trail[1:], actor=user)
        else:
            audit_many(trail, actor=user)
        transaction.on_commit(_kick_scheduler)
    return job


def _submission_trail(job: Job, *, reason: str, explanation: dict[str, Any]) -> list[dict[str, Any]]:
    """The audit entries of a job submitted and queued: the submission, and
    the transition submitted → queued (one the transition table allows)."""
    if JobStatus.QUEUED not in JOB_TRANSITIONS[JobStatus.SUBMITTED]:
        raise IllegalTransition(entity=f"Job {job.pk}", current=JobStatus.SUBMITTED, target=JobStatus.QUEUED)
    return [
        {
            "action": "job.submitted",
            "entity": job,
            "to_state": JobStatus.SUBMITTED,
            "data": {"explanation": explanation},
        },
        {
            "action": "job.transition",
            "entity": job,
            "from_state": JobStatus.SUBMITTED,
            "to_state": JobStatus.QUEUED,
            "reason": reason,
        },
    ]


def job_cancel(*, job: Job, actor: User, reason: str = "") -> Job:
    """Cancel a job in any non-final state; its holding lease ends with it."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status in FINAL_JOB_STATES:
            raise IllegalTransition(entity=f"Job {job.pk}", current=locked.status, target=JobStatus.CANCELLED)
        for lease in Lease.objects.filter(job=locked, status__in=HOLDING_LEASE_STATES):
            lease_transition(lease=lease, to=LeaseStatus.CANCELLED, actor=actor, reason=reason or "job cancelled")
            transaction.on_commit(lambda lease_id=lease.pk: _release_hold(lease_id))
        return job_transition(job=locked, to=JobStatus.CANCELLED, actor=actor, reason=reason or "cancelled by buyer")


def _release_hold(lease_id: int) -> None:
    """After a lease ended early: charge its reported usage, release the rest
    of its hold (if this is lost, the repair sweep does it later)."""
    from scheduler.execution import _close_hold

    try:
        _close_hold(lease_id)
    except Exception:
        log.warning("could not release the hold of lease %s; the repair sweep will", lease_id, exc_info=True)


# Set (in the shared cache) while a whole-market cycle is queued and has not
# started; the cycle clears it when it starts, before it reads the queue. Submissions
# in the meantime need no cycle of their own: the queued one will see their jobs.
CYCLE_PENDING_KEY = "scheduler:cycle-pending"
CYCLE_PENDING_SECONDS = 10  # how long a lost queued cycle can hold kicks back (the beat runs one anyway)
# When the last whole-market cycle started (wall clock, in the shared cache): a cycle a
# submission asks for starts at least CX_CYCLE_MIN_GAP_SECONDS after it.
CYCLE_STARTED_KEY = "scheduler:cycle-started"


def _kick_scheduler() -> None:
    """Ask for a scheduling cycle, unless one is already queued and not yet started
    (under a burst of submissions one cycle places them all, not one cycle each).
    The cycle starts no sooner than ``CX_CYCLE_MIN_GAP_SECONDS`` (1) after the
    last one started (the task waits out the rest of the gap before it takes
    the queue): under a steady stream of submissions the workers run about
    one cycle per gap, each placing everything that arrived meanwhile, instead
    of re-reading the whole market back to back for a job or two each. (Not
    a countdown: a message held back by the broker's ETA sits unacknowledged
    in a worker, which a broker restart then loses the way to restore.)"""
    from scheduler.tasks import run_scheduling_cycle

    kick = uuid.uuid4().hex  # the mark's value: only the cycle asked for here clears it when it starts
    try:
        if not cache.add(CYCLE_PENDING_KEY, kick, timeout=CYCLE_PENDING_SECONDS):
            return
    except Exception:  # no shared cache: ask anyway
        log.warning("could not check for a queued scheduling cycle", exc_info=True)
    try:
        wait = _cycle_gap_left()
        if wait > 0:
            run_scheduling_cycle.delay(not_before=round(time.time() + wait, 3), kick=kick)
        else:
            run_scheduling_cycle.delay(kick=kick)
    except Exception:  # the beat runs a cycle soon anyway; the next submission asks again
        _forget_pending(kick)
        log.warning("could not enqueue a scheduling cycle", exc_info=True)


def _cycle_gap_left() -> float:
    """Seconds until a new whole-market cycle may start (0: now)."""
    from django.conf import settings

    gap = _cycle_gap(settings)
    if gap <= 0:
        return 0.0
    try:
        last = cache.get(CYCLE_STARTED_KEY)
    except Exception:
        return 0.0
    if last is None:
        return 0.0
    return round(min(gap, max(0.0, float(last) + gap - time.time())), 3)


def _cycle_gap(settings: Any) -> float:
    return float(getattr(settings, "CX_CYCLE_MIN_GAP_SECONDS", 1))


def cycle_wait(not_before: float | None) -> None:
    """Wait until ``not_before`` (seconds since the epoch), never longer than the gap."""
    from django.conf import settings

    if not_before is not None:
        wait = min(_cycle_gap(settings), not_before - time.time())
        if wait > 0:
            time.sleep(wait)


def cycle_started(kick: str | None = None) -> None:
    """A whole-market cycle starts: the next one a submission asks for is due a
    gap after this one's start. ``kick``: the mark :func:`_kick_scheduler` set
    when it asked for this cycle; it is cleared, so submissions from now on ask
    for another one. A cycle asked for otherwise (the beat, the repair sweep,
    a lost lease) leaves the mark of a cycle still queued alone: clearing it
    let the next submission queue a second one, due a gap after this one,
    and from then on the two workers each ran one cycle a gap, out of step
    (measured at 200 requests/s: 146 cycles in the minute instead of 68)."""
    try:
        cache.set(CYCLE_STARTED_KEY, time.time(), timeout=3600)
    except Exception:  # then the next cycle is not held back
        log.warning("could not note the scheduling cycle's start", exc_info=True)
    if kick is not None:
        _forget_pending(kick)


def _forget_pending(kick: str) -> None:
    """Clear the mark of the queued cycle, if it is still ``kick``'s."""
    try:
        if cache.get(CYCLE_PENDING_KEY) == kick:
            cache.delete(CYCLE_PENDING_KEY)
    except Exception:  # the key expires by itself
        log.warning("could not clear the queued scheduling cycle's mark", exc_info=True)


# --- the scheduling cycle --------------------------------------------------------------------------------------------


@dataclass
class CycleReport:
    queued: int = 0
    assigned: int = 0
    pending: int = 0
    refused_at_commit: int = 0
    preempted: int = 0
    seconds: float = 0.0
    lease_ids: list[int] = field(default_factory=list)
    # CPU seconds of this process: reading the market, the matching engine, writing (PostgreSQL's own not counted)
    cpu_inputs: float = 0.0
    cpu_engine: float = 0.0
    cpu_writes: float = 0.0


def cycle_run(
    *,
    hub: str | None = None,
    limit: int = 20_000,
    now: datetime | None = None,
    shard: tuple[int, int] | None = None,
) -> CycleReport:
    """One scheduling cycle. Claims queued jobs with ``FOR UPDATE SKIP LOCKED``
    (several workers take disjoint jobs), matches them in the pure engine,
    then locks the offers it places jobs on (in id order) and re-verifies
    every placement against the leases committed meanwhile before writing
    it: capacity is never overbooked, whatever other workers did. All of it
    is one transaction, so a worker killed mid-cycle leaves no half-made
    lease and its jobs stay queued.

    ``shard=(index, count)``: see :func:`_cycle_sharded` (workers split the
    jobs by buyer, each plans the whole queue on the whole market)."""
    started = timezone.now()
    now = now or started
    report = CycleReport()
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count} does not exist")
        _cycle_sharded(hub=hub, limit=limit, now=now, shard=shard, report=report)
        report.seconds = (timezone.now() - started).total_seconds()
        return report
    with transaction.atomic():
        claimed = Job.objects.select_for_update(skip_locked=True).filter(status=JobStatus.QUEUED)
        if hub:
            claimed = claimed.filter(_hub_shard_q(hub))
        jobs = list(claimed.order_by("queued_at", "id")[:limit])
        report.queued = len(jobs)
        if not jobs:
            return report
        cpu = time.process_time()
        pool_offers, leases, rows = selectors.engine_inputs(now=now, hub=hub)
        by_id = {str(job.pk): job for job in jobs}
        specs = [job_spec(job) for job in jobs]
        report.cpu_inputs, cpu = time.process_time() - cpu, time.process_time()
        result = matching.schedule_cycle(specs, pool_offers, leases, now)
        report.cpu_engine, cpu = time.process_time() - cpu, time.process_time()
        preempted_jobs = _apply_preemptions(result.preemptions, now=now)
        report.preempted = len(preempted_jobs)
        unfunded: dict[str, str] = {}
        written = _write_assignments(result.assignments, rows, by_id, now=now, unfunded=unfunded)
        report.assigned = len(written)
        report.lease_ids = [lease.pk for lease in written]
        placed = {str(lease.job_id) for lease in written}
        report.refused_at_commit = len(result.assignments) - len(written)
        pending_updates = []
        for job_id, explanation in result.pending.items():
            job = by_id[job_id]
            message = explanation.message
            if job.pending_reason != message:
                job.pending_reason = message
                job.pending_detail = explanation.as_dict()
                pending_updates.append(job)
        for assignment in result.assignments:
            if assignment.job_id not in placed:
                job = by_id[assignment.job_id]
                job.pending_reason = unfunded.get(
                    assignment.job_id, "capacity was taken by another scheduler meanwhile; retrying next cycle"
                )
                pending_updates.append(job)
        Job.objects.bulk_update(pending_updates, ["pending_reason", "pending_detail"], batch_size=1000)
        report.pending = len(result.pending) + report.refused_at_commit
        report.cpu_writes = time.process_time() - cpu
    report.seconds = (timezone.now() - started).total_seconds()
    return report


SHARD_CHUNK = 500  # leases a sharded worker writes per transaction


def _cycle_sharded(*, hub: str | None, limit: int, now: datetime, shard: tuple[int, int], report: CycleReport) -> None:
    """One cycle of worker ``index`` of ``count``: it owns the queued jobs of buyers whose id is ``index`` modulo
    ``count``, but plans the whole queue (up to ``limit`` jobs, oldest first) on the whole market, read without
    locks, and writes only the placements of its own jobs. The engine is deterministic, so workers that read the
    same queue and leases compute the same plan, each writes its part of it and their placements never collide:
    every job may use every offer (no cost lost to a split market) and fair share is taken over all buyers. A
    worker that read a different state (another worker wrote meanwhile) may plan capacity that is gone: the
    write re-verifies every placement under the offers' row locks and leaves a refused job queued for the next
    cycle, so capacity is never overbooked.

    The placements are written in transactions of ``SHARD_CHUNK`` leases, each locking its jobs (``SKIP
    LOCKED``, still queued), then its offers in id order, then its buyers' wallets, so workers wait for each
    other only chunk by chunk, never for a whole cycle; workers take their chunks in opposite offer-id order
    (odd shards from the top), so they meet on the same offers at most once. A worker killed mid-cycle leaves
    whole chunks written and the rest of its jobs queued: no half-made lease. Its jobs left pending get their
    reason (under their row locks, only if still queued)."""
    index, count = shard
    queued = Job.objects.filter(status=JobStatus.QUEUED)
    if hub:
        queued = queued.filter(_hub_shard_q(hub))
    jobs = list(queued.order_by("queued_at", "id")[:limit])
    mine = {str(job.pk): job for job in jobs if job.buyer_id % count == index}
    report.queued = len(mine)
    if not mine:
        return
    cpu = time.process_time()
    pool_offers, leases, rows = selectors.engine_inputs(now=now, hub=hub)
    specs = [job_spec(job) for job in jobs]
    report.cpu_inputs, cpu = time.process_time() - cpu, time.process_time()
    result = matching.schedule_cycle(specs, pool_offers, leases, now)
    report.cpu_engine, cpu = time.process_time() - cpu, time.process_time()
    ours = [a for a in result.assignments if a.job_id in mine]
    victims: dict[str, list[matching.Preemption]] = defaultdict(list)
    for preemption in result.preemptions:
        if preemption.by_job_id in mine:
            victims[preemption.by_job_id].append(preemption)
    # the placements that preempt go first, in a transaction of their own; then the rest by offer id
    preempting = [a for a in ours if a.job_id in victims]
    rest = sorted((a for a in ours if a.job_id not in victims), key=lambda a: (rows[a.pool_id].pk, a.job_id))
    if index % 2:
        rest.reverse()
    chunks = [preempting] if preempting else []
    chunks += [rest[i : i + SHARD_CHUNK] for i in range(0, len(rest), SHARD_CHUNK)]
    buyers = {mine[a.job_id].buyer_id for a in ours}
    volume = {buyer: month_to_date_ncu_hours(buyer, now) for buyer in buyers}  # once, not per chunk
    placed: set[str] = set()
    gone = 0  # planned jobs that left the queue (placed or cancelled elsewhere) before this worker wrote them
    reasons: dict[str, str] = {}
    for chunk in chunks:
        with transaction.atomic():
            locked = {
                str(job.pk): job
                for job in Job.objects.select_for_update(skip_locked=True).filter(
                    pk__in=[int(a.job_id) for a in chunk], status=JobStatus.QUEUED
                )
            }
            gone += len(chunk) - len(locked)
            chunk = [a for a in chunk if a.job_id in locked]
            preemptions = tuple(p for a in chunk for p in victims.get(a.job_id, ()))
            report.preempted += len(_apply_preemptions(preemptions, now=now))
            unfunded: dict[str, str] = {}
            written = _write_assignments(tuple(chunk), rows, locked, now=now, unfunded=unfunded, volume=volume)
        report.lease_ids.extend(lease.pk for lease in written)
        placed.update(str(lease.job_id) for lease in written)
        for a in chunk:
            if a.job_id not in placed:
                reasons[a.job_id] = unfunded.get(
                    a.job_id, "capacity was taken by another scheduler meanwhile; retrying next cycle"
                )
    report.cpu_writes = time.process_time() - cpu
    report.assigned = len(placed)
    report.refused_at_commit = len(ours) - len(placed) - gone
    details: dict[str, dict[str, Any]] = {}
    for job_id, explanation in result.pending.items():
        if job_id in mine:
            reasons[job_id] = explanation.message
            details[job_id] = explanation.as_dict()
    report.pending = len(result.pending.keys() & mine.keys()) + report.refused_at_commit
    # a job placed elsewhere since the reading has no reason to be given
    changed = [job_id for job_id, message in reasons.items() if mine[job_id].pending_reason != message]
    if not changed:
        return
    with transaction.atomic():
        updates = []
        for job in Job.objects.select_for_update(skip_locked=True).filter(
            pk__in=[int(job_id) for job_id in changed], status=JobStatus.QUEUED
        ):
            job.pending_reason = reasons[str(job.pk)]
            job.pending_detail = details.get(str(job.pk), {})
            updates.append(job)
        Job.objects.bulk_update(updates, ["pending_reason", "pending_detail"], batch_size=1000)


def _hub_shard_q(hub: str):

    return Q(allowed_hubs__contains=[hub]) | Q(allowed_hubs=[])


def _apply_preemptions(preemptions: tuple[matching.Preemption, ...], *, now: datetime) -> set[int]:
    jobs: set[int] = set()
    for preemption in preemptions:
        lease = (
            Lease.objects.select_for_update()
            .filter(pk=int(preemption.lease_id), status__in=HOLDING_LEASE_STATES)
            .first()
        )
        if lease is None:
            continue
        reason = f"preempted for on-demand job {preemption.by_job_id}"
        lease_transition(lease=lease, to=LeaseStatus.PREEMPTED, actor=None, reason=reason)
        transaction.on_commit(lambda lease_id=lease.pk: _release_hold(lease_id))
        job = Job.objects.get(pk=lease.job_id)
        job_transition(job=job, to=JobStatus.PREEMPTED, actor=None, reason=reason)
        job_transition(job=job, to=JobStatus.QUEUED, actor=None, reason="back in the queue after preemption")
        jobs.add(job.pk)
    return jobs


def _write_assignments(
    assignments: tuple[matching.Assignment, ...],
    rows: dict[str, Offer],
    jobs: dict[str, Job],
    *,
    now: datetime,
    unfunded: dict[str, str] | None = None,
    volume: dict[int, Decimal] | None = None,
) -> list[Lease]:
    """Lock the offers, re-verify each placement against what is committed
    now, lock the buyers' wallets and hold each lease's estimated cost, and
    write the leases and job transitions that still fit and are funded
    (``unfunded`` collects why the others were not)."""
    unfunded = {} if unfunded is None else unfunded
    if not assignments:
        return []
    offer_ids = sorted({rows[a.pool_id].pk for a in assignments})
    locked = {o.pk: o for o in Offer.objects.select_for_update().filter(pk__in=offer_ids).order_by("pk")}
    committed: dict[int, list[Hold]] = defaultdict(list)
    for lease in selectors.holding_leases(offer_ids, after=now).only("offer_id", "start", "end", "allocations"):
        committed[lease.offer_id].extend(selectors.lease_holds(lease))
    buyers = {jobs[a.job_id].buyer_id for a in assignments}
    funds = billing.available_for_update(buyers)
    if volume is None:  # the buyers' month-to-date NCU-hours (charges only: this cycle's leases do not move them)
        volume = {buyer: month_to_date_ncu_hours(buyer, now) for buyer in buyers}
    leases: list[Lease] = []
    for a in assignments:
        offer = rows[a.pool_id]
        job = jobs[a.job_id]
        if offer.pk not in locked or locked[offer.pk].status != OfferStatus.ACTIVE:
            continue
        holds = [hold_from(al.placement, al.demand, a.start, a.end) for al in a.allocations]
        if not fits(selectors.offer_node_shape(offer), offer.nodes_offered, committed[offer.pk], holds):
            continue
        cost = price_breakdown(offer, a, month_to_date=volume[job.buyer_id]).subtotal.amount
        if cost > funds[job.buyer_id]:
            unfunded[a.job_id] = (
                f"the wallet's available {funds[job.buyer_id]} CNY cannot cover the {cost} CNY held for this job "
                f"on {a.pool_identifier}; top up to schedule it"
            )
            continue
        funds[job.buyer_id] -= cost
        committed[offer.pk].extend(holds)
        leases.append(
            Lease(
                job=job,
                offer_id=offer.pk,
                pool_id=offer.pool_id,
                start=a.start,
                end=a.end,
                allocations=[h.as_record() for h in holds],
                pricing_type=str(a.pricing_type),
                unit_price=a.unit_price,
                ncu=a.ncu,
                ncu_hours=a.ncu_hours,
                estimated_cost=cost,
                volume_position=volume[job.buyer_id],
                energy_kwh=a.energy_kwh,
                carbon_kg=a.carbon_kg,
                interruptible=a.interruptible,
            )
        )
    if not leases:
        return []
    Lease.objects.bulk_create(leases, batch_size=1000)
    billing.holds_for_new_leases(leases)
    job_ids = [lease.job_id for lease in leases]
    moved = Job.objects.filter(pk__in=job_ids, status=JobStatus.QUEUED).update(
        status=JobStatus.SCHEDULED, status_changed_at=now, pending_reason="", pending_detail={}
    )
    if moved != len(job_ids):  # a job left the queue under us: undo the whole cycle rather than guess
        raise Conflict("a claimed job changed state during the cycle")
    Offer.objects.filter(pk__in=sorted({lease.offer_id for lease in leases})).update(generation=F("generation") + 1)
    entries: list[dict[str, Any]] = []
    for lease in leases:
        entries.append(
            {
                "action": "job.transition",
                "entity": lease.job,
                "from_state": JobStatus.QUEUED,
                "to_state": JobStatus.SCHEDULED,
                "reason": f"placed on {lease.pool_id} from {lease.start.isoformat()}",
                "data": {"lease": lease.pk, "unit_price": str(lease.unit_price), "pricing_type": lease.pricing_type},
            }
        )
        entries.append(
            {
                "action": "lease.created",
                "entity": lease,
                "to_state": LeaseStatus.SCHEDULED,
                "data": {"job": lease.job_id, "offer": lease.offer_id, "allocations": lease.allocations},
            }
        )
    audit_many(entries)
    return leases


# --- quotes ----------------------------------------------------------------------------------------------------------


def quote_for(*, user: User, values: dict[str, Any], limit: int = 3) -> dict[str, Any]:
    """The best few placements of a job spec, priced, with the subsidy the
    buyer's vouchers would pay, without submitting it."""
    from vouchers.redemption import quote_subsidy
    from vouchers.selectors import usable_vouchers

    _require_buyer(user)
    # A quote shows what the buyer's vouchers would pay whether or not the job will use them.
    job = job_draft(user=user, values={k: v for k, v in values.items() if k != "use_vouchers"})
    now = timezone.now()
    (market, rows, now), month_to_date, has_vouchers = selectors.buyer_quote_market(job.buyer_id, now=now)
    result = market.quote(job_spec(job), now=now, limit=limit)
    vouchers = list(usable_vouchers(buyer_id=job.buyer_id, at=now)) if result.options and has_vouchers else []
    options = []
    for option in result.options:
        offer = rows[option.pool_id]
        breakdown = price_breakdown(offer, option, month_to_date=month_to_date)
        breakdown, _decision = quote_subsidy(
            buyer_id=job.buyer_id, pool=offer.pool, quote=breakdown, at=now, vouchers=vouchers
        )
        options.append({"assignment": option, "offer": offer, "breakdown": breakdown})
    return {"options": options, "explanation": result.explanation}


def price_breakdown(offer: Offer, option: matching.Assignment, *, month_to_date: Decimal) -> pricing.Quote:
    """The priced breakdown of a placement: what the quote shows and what the lease holds."""
    return pricing.quote(
        selectors.price_rules(offer),
        ncu_hours=option.ncu_hours,
        start=option.start,
        end=option.end,
        commission_rate=commission_rate_for(offer),
        utilisation=getattr(offer, "utilisation", Decimal(0)),
        green_share=offer.pool.site.green_share,
        commitment_hours=offer.min_lease_hours,
        month_to_date_ncu_hours=month_to_date,
    )


DEFAULT_COMMISSION = Decimal("0.08")


def commission_rate_for(offer: Offer) -> Decimal:
    """The platform's commission (合作分成) on this offer's provider."""
    from django.conf import settings

    rates = {k: Decimal(v) for k, v in getattr(settings, "CX_COMMISSION_RATES", {}).items()}
    return pricing.commission_rate_for(offer.pool.site.provider.category, rates, default=DEFAULT_COMMISSION)
