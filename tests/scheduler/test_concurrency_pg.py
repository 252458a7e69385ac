"""Several scheduling workers at once on PostgreSQL never overbook capacity.

Four threads, each with its own database connection, run scheduling cycles
at the same moment over a market with far less capacity than the queue
asks for. The first round forces the worst interleaving: every worker
claims its share of the queue and reads the same free capacity before any
of them writes, so their placements collide and the commit-time re-check
under offer locks must refuse the losers."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.models import Count

from scheduler import services
from scheduler.domain import matching
from scheduler.management.commands.check_capacity import audit_capacity
from scheduler.models import HOLDING_LEASE_STATES, Job, Lease
from tests import factories

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 4
CLAIM = 75  # jobs each worker claims per cycle: together the whole queue
CHURN_ROUNDS = 3  # rounds after buyers cancel some scheduled jobs
JOBS = 300
BARRIER_TIMEOUT = 30  # seconds: a worker that never gets there means the claims were serialised


def build_market() -> None:
    """Six pools of two 8-GPU nodes (96 GPUs), three of them allowing shared slices."""
    provider = factories.provider()
    site = factories.site(provider)
    for i in range(6):
        pool = factories.pool(provider, site, name=f"pool {i}", node_count=2, sharing_allowed=i % 2 == 0)
        factories.offer(provider, pool, list_price=Decimal("0.0200") + Decimal(i) / 1000)


# (shape, weight): mostly partial nodes and shared slices, some whole nodes and gangs
SHAPES = [
    ({"accelerators_per_node": 8}, 2),  # a whole node
    ({"accelerators_per_node": 8, "nodes": 2}, 1),  # a gang of two whole nodes
    ({"accelerators_per_node": 4}, 3),
    ({"accelerators_per_node": 2}, 4),
    ({"accelerators_per_node": 1}, 4),
    ({"accelerators_per_node": 0, "accelerator_milli": 500}, 3),  # shared slices
    ({"accelerators_per_node": 0, "accelerator_milli": 250}, 3),
]


def build_queue() -> list[Job]:
    """300 queued jobs of several shapes from three buyers, in a shuffled order:
    one of each shape and buyer submitted through the service, the rest
    copies of those (the same validated fields)."""
    buyers = [factories.buyer(), factories.buyer(category="university"), factories.buyer(category="research_institute")]
    templates = {
        (b, i): factories.submit(buyer, name=f"{buyer.username} shape {i}", **shape)
        for b, buyer in enumerate(buyers)
        for i, (shape, _weight) in enumerate(SHAPES)
    }
    rng = random.Random(2026)
    weights = [weight for _shape, weight in SHAPES]
    copies = []
    for n in range(JOBS - len(templates)):
        shape = rng.choices(range(len(SHAPES)), weights)[0]
        copy = Job.objects.get(pk=templates[(rng.randrange(len(buyers)), shape)].pk)
        copy.pk = None
        copy.name = f"{copy.name} copy {n}"
        copies.append(copy)
    Job.objects.bulk_create(copies, batch_size=500)
    jobs = list(Job.objects.all())
    first = min(job.queued_at for job in jobs)
    for position, job in enumerate(rng.sample(jobs, len(jobs))):
        job.queued_at = first + timedelta(milliseconds=position)
    Job.objects.bulk_update(jobs, ["queued_at"], batch_size=500)
    return jobs


class Spy:
    """Wraps the engine's cycle to record which jobs each worker claimed and,
    in a forced round, holds every worker at the matching step until all
    four have claimed their jobs and read the market."""

    def __init__(self) -> None:
        self.claims: dict[int, list[str]] = {}
        self.meeting: threading.Barrier | None = None
        self._original = matching.schedule_cycle
        self._lock = threading.Lock()

    def __call__(self, jobs, pools, leases, now, config=None):
        with self._lock:
            self.claims[threading.get_ident()] = [job.job_id for job in jobs]
        if self.meeting is not None:
            self.meeting.wait()
        return self._original(jobs, pools, leases, now, config)


def run_round(spy: Spy, *, forced: bool) -> list[services.CycleReport]:
    start = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)
    spy.claims = {}
    spy.meeting = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT) if forced else None
    reports: list[services.CycleReport] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            report = services.cycle_run(limit=CLAIM)
            with spy._lock:
                reports.append(report)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    assert not errors, errors
    return reports


def free_some_capacity() -> int:
    """Buyers cancel every third scheduled job, so the next round has capacity to fight over."""
    scheduled = Job.objects.filter(status="scheduled").select_related("submitted_by").order_by("pk")[::3]
    for job in scheduled:
        services.job_cancel(job=job, actor=job.submitted_by, reason="no longer needed")
    return len(scheduled)


def sequential_placements() -> int:
    """How many jobs one cycle over the whole queue would place (rolled back)."""
    with transaction.atomic():
        placed = services.cycle_run().assigned
        transaction.set_rollback(True)
    return placed


def assert_consistent() -> None:
    audit = audit_capacity()
    assert audit.overbooked == {}, {offer.pk: [str(o) for o in found] for offer, found in audit.overbooked.items()}
    holding = Lease.objects.filter(status__in=HOLDING_LEASE_STATES)
    per_job = Counter(holding.values_list("job_id", flat=True))
    assert all(n == 1 for n in per_job.values()), "a job holds two leases"
    scheduled = set(Job.objects.filter(status="scheduled").values_list("pk", flat=True))
    assert scheduled == set(per_job), "every scheduled job has exactly one holding lease, and only they have one"
    assert not holding.filter(job__status="queued").exists()
    assert not Job.objects.annotate(n=Count("leases")).filter(status="queued", n__gt=0).exists()


def test_concurrent_cycles_split_the_queue_and_never_overbook(monkeypatch):
    monkeypatch.setattr(services, "_kick_scheduler", lambda: None)
    build_market()
    jobs = build_queue()
    assert len(jobs) == JOBS and all(job.status == "queued" for job in jobs)
    sequential = sequential_placements()
    assert 0 < sequential < JOBS / 4, "the market holds far fewer jobs than are queued"
    assert not Lease.objects.exists()

    spy = Spy()
    monkeypatch.setattr(matching, "schedule_cycle", spy)
    started = time.monotonic()

    first = run_round(spy, forced=True)
    assert_consistent()
    claims = list(spy.claims.values())
    ever_claimed = {int(job) for claim in claims for job in claim}
    assert len(claims) == WORKERS and all(len(claim) == CLAIM for claim in claims), "each worker claimed its share"
    assert len({job for claim in claims for job in claim}) == WORKERS * CLAIM, "SKIP LOCKED split the queue"
    assert sum(report.assigned for report in first) > 0
    assert sum(report.refused_at_commit for report in first) > 0, "colliding placements were refused at commit"

    placed_at_once = Job.objects.filter(status="scheduled").count()
    assert placed_at_once >= sequential * 0.8, (placed_at_once, sequential)

    for _ in range(CHURN_ROUNDS):
        free_some_capacity()
        run_round(spy, forced=False)
        ever_claimed.update(int(job) for claim in spy.claims.values() for job in claim)
        assert_consistent()
    for _ in range(3):  # until a round finds nothing more to place
        settled = not any(report.assigned for report in run_round(spy, forced=False))
        ever_claimed.update(int(job) for claim in spy.claims.values() for job in claim)
        assert_consistent()
        if settled:
            break
    assert settled
    seconds = time.monotonic() - started

    assert sequential_placements() <= 2, "the workers left no capacity a single cycle would still use"
    scheduled = Job.objects.filter(status="scheduled").count()
    cancelled = Job.objects.filter(status="cancelled").count()
    assert scheduled >= sequential * 0.8
    assert Job.objects.filter(status="queued").count() == JOBS - scheduled - cancelled, "no job was lost"
    unexplained = Job.objects.filter(status="queued", pk__in=ever_claimed, pending_reason="")
    assert not unexplained.exists(), "every job a cycle looked at and left queued says why"
    assert seconds < 60
