"""Leases executed for real: agent credentials, acknowledgement, heartbeats,
progress (服务进度), signed usage samples, completion, the watchdog that
declares silent leases lost, provider reliability and buyer ratings."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Count, Max, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import services as billing
from billing.models import UsageSample
from core.audit import audit_record
from core.errors import Forbidden, IllegalTransition, InvalidInput, NotFound
from core.notices import notify
from marketplace.models import Organisation, Role, User
from scheduler.models import Agent, Job, JobStatus, Lease, LeaseStatus, Rating
from scheduler.services import job_transition, lease_transition

log = logging.getLogger(__name__)

CLOCK_SKEW = timedelta(seconds=30)
END_GRACE = timedelta(seconds=120)  # the agent's last sample may close a little after the lease end
RELIABILITY_WINDOW = timedelta(days=30)
RELIABILITY_PRIOR = 4  # a new provider starts as if it had completed four leases
UNITS = Decimal("0.0001")


# --- credentials -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCredential:
    agent: Agent
    token: str
    secret: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _issue(agent_id: int) -> tuple[str, str]:
    return f"cxa_{agent_id}_{secrets.token_urlsafe(32)}", secrets.token_hex(32)


def agent_create(*, user: User, name: str) -> IssuedCredential:
    """A provider registers an agent; the token and secret are shown once."""
    if user.role != Role.PROVIDER or user.organisation is None:
        raise Forbidden("only providers register agents")
    if not name.strip():
        raise InvalidInput("name the agent (e.g. the node's host name)", field="name")
    with transaction.atomic():
        agent = Agent.objects.create(
            provider=user.organisation, name=name.strip(), token_hash=secrets.token_hex(32), secret=""
        )
        token, secret = _issue(agent.pk)
        Agent.objects.filter(pk=agent.pk).update(token_hash=_hash(token), secret=secret)
        audit_record(actor=user, action="agent.created", entity=agent, data={"name": agent.name})
    agent.refresh_from_db()
    return IssuedCredential(agent, token, secret)


def agent_rotate(*, agent: Agent, user: User) -> IssuedCredential:
    """New token and secret; the old ones stop working at once."""
    if agent.revoked_at is not None:
        raise IllegalTransition(entity=f"Agent {agent.pk}", current="revoked", target="rotated")
    token, secret = _issue(agent.pk)
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(token_hash=_hash(token), secret=secret, rotated_at=timezone.now())
        audit_record(actor=user, action="agent.rotated", entity=agent)
    agent.refresh_from_db()
    return IssuedCredential(agent, token, secret)


def agent_revoke(*, agent: Agent, user: User) -> Agent:
    with transaction.atomic():
        if not Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
            raise IllegalTransition(entity=f"Agent {agent.pk}", current="revoked", target="revoked")
        audit_record(actor=user, action="agent.revoked", entity=agent)
    agent.refresh_from_db()
    return agent


def agent_authenticate(token: str) -> Agent | None:
    agent = Agent.objects.select_related("provider").filter(token_hash=_hash(token), revoked_at__isnull=True).first()
    if agent is not None:
        now = timezone.now()
        if agent.last_seen_at is None or now - agent.last_seen_at > timedelta(seconds=30):
            Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)
    return agent


# --- leases as the agent sees them -----------------------------------------------------------------------------------

AGENT_VISIBLE = (LeaseStatus.SCHEDULED, LeaseStatus.RUNNING, LeaseStatus.SUSPENDED)


def agent_leases(agent: Agent) -> QuerySet[Lease]:
    return (
        Lease.objects.filter(pool__site__provider_id=agent.provider_id, status__in=AGENT_VISIBLE)
        .select_related("job", "pool__site")
        .annotate(last_sequence=Coalesce(Max("usage_samples__sequence"), 0))
        .order_by("start", "id")
    )


def agent_leases_any(lease_id: int) -> Lease:
    """One lease with the agent view's annotations, whatever its state."""
    return (
        Lease.objects.filter(pk=lease_id)
        .select_related("job", "pool__site")
        .annotate(last_sequence=Coalesce(Max("usage_samples__sequence"), 0))
        .get()
    )


def lease_of_agent(agent: Agent, lease_id: int) -> Lease:
    """The lease if it is on this agent's provider's pools; otherwise 404 (never reveal others' leases)."""
    lease = (
        Lease.objects.select_related("job", "pool__site")
        .filter(pk=lease_id, pool__site__provider_id=agent.provider_id)
        .first()
    )
    if lease is None:
        raise NotFound(f"no lease {lease_id} on your pools", field="lease")
    return lease


def _audit(agent: Agent, **kwargs: Any) -> None:
    data = dict(kwargs.pop("data", None) or {})
    data["agent"] = agent.pk
    audit_record(actor=None, data=data, **kwargs)


def lease_acknowledge(*, agent: Agent, lease: Lease) -> Lease:
    """The agent has started the workload: lease scheduled → running, job → running."""
    if lease.status == LeaseStatus.RUNNING:
        return lease
    now = timezone.now()
    with transaction.atomic():
        lease = lease_transition(lease=lease, to=LeaseStatus.RUNNING, actor=None, reason=f"started by agent {agent.pk}")
        Lease.objects.filter(pk=lease.pk).update(acknowledged_at=now, last_heartbeat_at=now)
        job = Job.objects.get(pk=lease.job_id)
        if job.status == JobStatus.SCHEDULED:
            job_transition(job=job, to=JobStatus.RUNNING, actor=None, reason=f"lease {lease.pk} started")
    lease.refresh_from_db()
    return lease


def lease_heartbeat(*, agent: Agent, lease: Lease) -> tuple[str, bool]:
    """Record a heartbeat; tell the agent to stop if the lease no longer runs."""
    Lease.objects.filter(pk=lease.pk, status=LeaseStatus.RUNNING).update(last_heartbeat_at=timezone.now())
    lease.refresh_from_db(fields=["status"])
    return lease.status, lease.status != LeaseStatus.RUNNING


def lease_progress(*, agent: Agent, lease: Lease, percent: Decimal, message: str) -> Lease:
    if lease.status != LeaseStatus.RUNNING:
        raise IllegalTransition(entity=f"Lease {lease.pk}", current=lease.status, target="progress")
    if not 0 <= percent <= 100:
        raise InvalidInput("progress is a percentage from 0 to 100", field="percent")
    Lease.objects.filter(pk=lease.pk).update(
        progress_percent=percent, progress_message=message[:500], last_heartbeat_at=timezone.now()
    )
    lease.refresh_from_db()
    return lease


def usage_message(
    *, lease_id: int, sequence: int, start: str, end: str, device_seconds: str, ncu_hours: str, energy_kwh: str | None
) -> bytes:
    """The exact bytes an agent signs for a usage sample (see agent/README.md)."""
    return f"{lease_id}|{sequence}|{start}|{end}|{device_seconds}|{ncu_hours}|{energy_kwh or ''}".encode()


def sign_usage(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def lease_usage(
    *,
    agent: Agent,
    lease: Lease,
    sequence: int,
    start: datetime,
    end: datetime,
    device_seconds: Decimal,
    ncu_hours: Decimal,
    energy_kwh: Decimal | None,
    signature: str,
    signed_text: dict[str, str | None],
) -> tuple[UsageSample, bool]:
    """Record a signed usage sample once. Refused (400, audited) when the
    signature is wrong, the interval lies outside the lease, or the usage
    exceeds leased capacity × elapsed time."""
    message = usage_message(lease_id=lease.pk, sequence=sequence, **signed_text)  # type: ignore[arg-type]
    problem: tuple[str, str] | None = None
    if not hmac.compare_digest(sign_usage(agent.secret, message), signature or ""):
        problem = ("the signature does not match this sample and the agent's secret", "signature")
    else:
        existing = UsageSample.objects.filter(lease_id=lease.pk, sequence=sequence).first()
        if existing is not None:
            return existing, False
        problem = _sample_problem(lease, start=start, end=end, ncu_hours=ncu_hours)
    if problem is None:
        now = timezone.now()
        with transaction.atomic():
            locked = Lease.objects.select_for_update().get(pk=lease.pk)
            so_far = UsageSample.objects.filter(lease_id=lease.pk).aggregate(t=Sum("ncu_hours"))["t"] or Decimal(0)
            horizon = min(now + CLOCK_SKEW, locked.end + END_GRACE)
            ceiling = (locked.ncu * Decimal(max((horizon - locked.start).total_seconds(), 0)) / 3600).quantize(UNITS)
            if so_far + ncu_hours <= ceiling:
                sample, created = billing.usage_record(
                    lease=lease,
                    sequence=sequence,
                    start=start,
                    end=end,
                    ncu_hours=ncu_hours,
                    device_seconds=device_seconds,
                    energy_kwh=energy_kwh,
                    signature=signature,
                )
                if created:
                    Lease.objects.filter(pk=lease.pk).update(last_heartbeat_at=now)
                    transaction.on_commit(_kick_charging)
                return sample, created
            problem = (
                f"the lease's usage would reach {so_far + ncu_hours} NCU-hours, above the {ceiling} it could have "
                "used so far",
                "ncu_hours",
            )
    detail, field = problem
    _audit(agent, action="usage.rejected", entity=lease, reason=detail, data={"sequence": sequence, "field": field})
    raise InvalidInput(detail, field=field)


def _sample_problem(lease: Lease, *, start: datetime, end: datetime, ncu_hours: Decimal) -> tuple[str, str] | None:
    """Why a sample cannot be true of this lease, or None."""
    now = timezone.now()
    if lease.status == LeaseStatus.SCHEDULED:
        return ("the lease has not started: acknowledge it first", "lease")
    if end <= start:
        return ("a sample's interval ends after it starts", "end")
    if start < lease.start - CLOCK_SKEW:
        return ("the sample starts before the lease", "start")
    if end > now + CLOCK_SKEW:
        return ("the sample ends in the future", "end")
    if end > lease.end + END_GRACE:
        return ("the sample runs past the end of the lease", "end")
    seconds = Decimal((end - start).total_seconds())
    capacity = (lease.ncu * seconds / 3600).quantize(UNITS)
    if ncu_hours > capacity:
        return (f"{ncu_hours} NCU-hours exceed the leased {lease.ncu} NCU × {seconds} s = {capacity}", "ncu_hours")
    return None


def _kick_charging() -> None:
    from config.celery import app

    try:
        app.send_task("billing.tasks.charge_usage")
    except Exception:  # the beat charges soon anyway
        log.warning("could not enqueue charging", exc_info=True)


def lease_complete(*, agent: Agent, lease: Lease, exit_code: int, message: str) -> Lease:
    """The workload ended: lease → completed (exit 0) or failed; the job
    likewise; the unused part of the hold goes back to the buyer."""
    target = LeaseStatus.COMPLETED if exit_code == 0 else LeaseStatus.FAILED
    with transaction.atomic():
        lease = lease_transition(lease=lease, to=target, actor=None, reason=f"exit code {exit_code} (agent {agent.pk})")
        Lease.objects.filter(pk=lease.pk).update(exit_code=exit_code, final_message=message[:10_000])
        job = Job.objects.get(pk=lease.job_id)
        if job.status in (JobStatus.RUNNING, JobStatus.SCHEDULED):
            job_transition(
                job=job,
                to=JobStatus.SUCCEEDED if exit_code == 0 else JobStatus.FAILED,
                actor=None,
                reason=f"lease {lease.pk} ended with exit code {exit_code}",
            )
        transaction.on_commit(lambda: _close_hold(lease.pk))
    lease.refresh_from_db()
    return lease


def _close_hold(lease_id: int) -> None:
    """Charge what was reported, then release the rest of the hold."""
    from scheduler.services import commission_rate_for

    lease = Lease.objects.select_related("offer__pool__site__provider").get(pk=lease_id)
    rate = commission_rate_for(lease.offer)
    for sample_id in UsageSample.objects.filter(lease_id=lease_id, charged=False).values_list("pk", flat=True):
        billing.charge_sample(sample_id=sample_id, commission_rate=rate)
    billing.hold_close(lease=lease)


# --- the watchdog ----------------------------------------------------------------------------------------------------


def heartbeat_timeout() -> timedelta:
    return timedelta(seconds=float(getattr(settings, "CX_HEARTBEAT_TIMEOUT_SECONDS", 90)))


def ack_timeout() -> timedelta:
    return timedelta(seconds=float(getattr(settings, "CX_ACK_TIMEOUT_SECONDS", 300)))


def leases_watch(*, now: datetime | None = None) -> list[int]:
    """Declare lost every running lease whose heartbeats stopped, and every
    scheduled lease nobody started in time. The job goes back to the queue
    (unless it asked not to be retried); the buyer pays only for usage
    reported before the loss; the provider's reliability drops."""
    now = now or timezone.now()
    silent = Lease.objects.filter(
        Q(status=LeaseStatus.RUNNING, last_heartbeat_at__lt=now - heartbeat_timeout())
        | Q(status=LeaseStatus.SCHEDULED, start__lt=now - ack_timeout())
    ).values_list("pk", flat=True)
    lost: list[int] = []
    for lease_id in list(silent):
        try:
            lease_lose(lease=Lease.objects.get(pk=lease_id), now=now)
            lost.append(lease_id)
        except IllegalTransition:  # ended meanwhile
            continue
    return lost


def lease_lose(*, lease: Lease, now: datetime) -> Lease:
    reason = "no heartbeat" if lease.status == LeaseStatus.RUNNING else "never started"
    with transaction.atomic():
        lease = lease_transition(
            lease=lease,
            to=LeaseStatus.LOST,
            actor=None,
            reason=f"{reason} since {(lease.last_heartbeat_at or lease.start).isoformat()}",
        )
        job = Job.objects.get(pk=lease.job_id)
        if job.status in (JobStatus.RUNNING, JobStatus.SCHEDULED):
            if job.retry_on_loss:
                job_transition(
                    job=job,
                    to=JobStatus.QUEUED,
                    actor=None,
                    reason=f"lease {lease.pk} lost ({reason}); placing it elsewhere",
                )
            else:
                job_transition(
                    job=job,
                    to=JobStatus.FAILED,
                    actor=None,
                    reason=f"lease {lease.pk} lost ({reason}); the job asked not to be retried",
                )
        transaction.on_commit(lambda: _close_hold(lease.pk))
    return lease


# --- suspension for unpaid usage -------------------------------------------------------------------------------


def suspension_grace() -> timedelta:
    return timedelta(seconds=float(getattr(settings, "CX_SUSPENSION_GRACE_SECONDS", 3600)))


def lease_suspend(*, lease: Lease, owed: Decimal, reason: str = "") -> Lease:
    """Usage the buyer's hold and wallet could not cover: the lease is
    suspended (the agent is told to stop; the nodes stay reserved) and both
    parties get a notice. Rule: if the buyer settles what it owes within
    CX_SUSPENSION_GRACE_SECONDS (default an hour) and the lease window is not
    over, the lease resumes (the agent restarts the workload); otherwise the
    lease is cancelled and the job fails with the reason."""
    if lease.status != LeaseStatus.RUNNING:
        return lease
    why = reason or f"usage of {owed} CNY is not covered by the hold or the wallet"
    with transaction.atomic():
        lease = lease_transition(lease=lease, to=LeaseStatus.SUSPENDED, actor=None, reason=why)
        Lease.objects.filter(pk=lease.pk).update(suspended_at=timezone.now())
        job = Job.objects.select_related("buyer").get(pk=lease.job_id)
        provider_id = lease.pool.site.provider_id
        notify(
            organisation_id=job.buyer_id,
            kind="lease.suspended",
            title=f"Job {job.pk} suspended: top up to resume",
            message=f"Lease {lease.pk} of job '{job.name}' is suspended: {why}. Top up your wallet within "
            f"{int(suspension_grace().total_seconds() // 60)} minutes to resume it; after that it ends.",
            subject=lease,
        )
        notify(
            organisation_id=provider_id,
            kind="lease.suspended",
            title=f"Lease {lease.pk} suspended for unpaid usage",
            message=f"Lease {lease.pk} is suspended ({why}); your agent has been told to stop the workload. "
            "The nodes stay reserved until the buyer pays or the grace period ends.",
            subject=lease,
        )
    return lease


def leases_resume(*, buyer_id: int, now: datetime | None = None) -> list[int]:
    """After the buyer settled its debt: resume its suspended leases still in their window."""
    now = now or timezone.now()
    resumed = []
    for lease in Lease.objects.filter(job__buyer_id=buyer_id, status=LeaseStatus.SUSPENDED, end__gt=now):
        with transaction.atomic():
            lease_transition(lease=lease, to=LeaseStatus.RUNNING, actor=None, reason="the buyer settled its debt")
            Lease.objects.filter(pk=lease.pk).update(last_heartbeat_at=now)
            notify(
                organisation_id=lease.pool.site.provider_id,
                kind="lease.resumed",
                title=f"Lease {lease.pk} resumed",
                message="The buyer paid; run the workload again.",
                subject=lease,
            )
        resumed.append(lease.pk)
    return resumed


def leases_end_unpaid(*, now: datetime | None = None) -> list[int]:
    """Suspended leases past the grace period (or past their window) end: lease cancelled, job failed."""
    now = now or timezone.now()
    ended = []
    overdue = Lease.objects.filter(status=LeaseStatus.SUSPENDED).filter(
        Q(end__lte=now) | Q(suspended_at__lte=now - suspension_grace())
    )
    for lease in overdue:
        with transaction.atomic():
            lease_transition(
                lease=lease, to=LeaseStatus.CANCELLED, actor=None, reason="usage left unpaid past the grace period"
            )
            job = Job.objects.get(pk=lease.job_id)
            if job.status == JobStatus.RUNNING:
                job_transition(job=job, to=JobStatus.FAILED, actor=None, reason="usage left unpaid")
            transaction.on_commit(lambda lease_id=lease.pk: _close_hold(lease_id))
        ended.append(lease.pk)
    return ended


# --- reliability and ratings ------------------------------------------------------------------------------------------


def reliability_scores(provider_ids: list[int] | None = None, *, now: datetime | None = None) -> dict[int, Decimal]:
    """Share of a provider's leases ended in the last 30 days that completed
    (not lost), with a prior of four completed leases so one loss does not
    ruin a newcomer: (completed + 4) / (completed + lost + 4)."""
    now = now or timezone.now()
    rows = Lease.objects.filter(ended_at__gte=now - RELIABILITY_WINDOW, status__in=["completed", "failed", "lost"])
    if provider_ids is not None:
        rows = rows.filter(pool__site__provider_id__in=provider_ids)
    counts = rows.values("pool__site__provider_id").annotate(
        completed=Count("id", filter=Q(status__in=["completed", "failed"])), lost=Count("id", filter=Q(status="lost"))
    )
    scores = {}
    for row in counts:
        completed, lost = row["completed"], row["lost"]
        scores[row["pool__site__provider_id"]] = (
            Decimal(completed + RELIABILITY_PRIOR) / Decimal(completed + lost + RELIABILITY_PRIOR)
        ).quantize(Decimal("0.0001"))
    return scores


def reliability_of(provider_id: int) -> Decimal:
    return reliability_scores([provider_id]).get(provider_id, Decimal("1.0000"))


def lease_rate(*, user: User, lease: Lease, score: int, comment: str = "") -> Rating:
    """A buyer rates a completed (or failed) lease of its own job, once."""
    if user.role != Role.BUYER or lease.job.buyer_id != user.organisation_id:
        raise NotFound(f"no lease {lease.pk} of yours", field="lease")
    if lease.status not in (LeaseStatus.COMPLETED, LeaseStatus.FAILED):
        raise IllegalTransition(entity=f"Lease {lease.pk}", current=lease.status, target="rated")
    if not 1 <= score <= 5:
        raise InvalidInput("a rating is 1 to 5", field="score")
    with transaction.atomic():
        if Rating.objects.filter(lease=lease).exists():
            raise IllegalTransition(entity=f"Lease {lease.pk}", current="rated", target="rated")
        rating = Rating.objects.create(
            lease=lease,
            buyer_id=user.organisation_id,
            provider_id=lease.pool.site.provider_id,
            score=score,
            comment=comment,
        )
        audit_record(actor=user, action="lease.rated", entity=rating, data={"score": score})
    return rating


def provider_profile(provider: Organisation) -> dict[str, Any]:
    ratings = Rating.objects.filter(provider=provider)
    summary = ratings.aggregate(average=Avg("score"), count=Count("id"))
    outcomes = Lease.objects.filter(pool__site__provider=provider).aggregate(
        completed=Count("id", filter=Q(status="completed")),
        failed=Count("id", filter=Q(status="failed")),
        lost=Count("id", filter=Q(status="lost")),
    )
    return {
        "identifier": provider.identifier,
        "name": provider.name,
        "home_hub": provider.home_hub,
        "reliability": reliability_of(provider.pk),
        "rating_average": round(Decimal(summary["average"]), 2) if summary["average"] is not None else None,
        "rating_count": summary["count"],
        "lease_outcomes": outcomes,
        "recent_ratings": [
            {"score": r.score, "comment": r.comment, "created_at": r.created_at} for r in ratings.order_by("-id")[:20]
        ],
    }
