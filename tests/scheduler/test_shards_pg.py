"""Sharded scheduling workers (``cycle_run(shard=(i, n))``) on PostgreSQL.

Each worker plans the whole queue on the whole market and writes the
placements of its own buyers' jobs. Workers that read the same state write one
plan between them, the plan a single cycle over the whole queue would make,
with nothing refused; a worker whose reading went stale before it wrote is
refused at commit where capacity went, and capacity is never overbooked."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from scheduler import services
from scheduler.domain import matching
from scheduler.models import HOLDING_LEASE_STATES, Job, Lease
from scheduler.tasks import run_scheduling_cycle
from tests import factories
from tests.concurrency import run_together
from tests.scheduler.test_concurrency_pg import assert_consistent, build_market, build_queue

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SHARDS = 2
TIMEOUT = 60


def placements() -> set[tuple[int, int]]:
    return set(Lease.objects.filter(status__in=HOLDING_LEASE_STATES).values_list("job_id", "offer_id"))


def settle(shards: int = SHARDS) -> None:
    """Sharded cycles (the Celery task's body, one per shard, all at once) until none is refused at commit."""
    for _ in range(5):
        reports = run_together(lambda i: run_scheduling_cycle(shard=[i, shards]), shards)
        if not any(r["refused_at_commit"] or r["preempted"] for r in reports):
            return
    raise AssertionError("the shards never settled")


def assert_every_job_placed_or_explained() -> None:
    queued = Job.objects.filter(status="queued")
    assert not queued.filter(pending_reason="").exists(), "every job left queued says why"
    assert queued.count() + Job.objects.filter(status="scheduled").count() == Job.objects.count(), "no job lost"


def test_concurrent_shards_write_the_single_cycle_plan_without_collisions(monkeypatch):
    monkeypatch.setattr(services, "_kick_scheduler", lambda: None)
    build_market()
    jobs = build_queue()
    now = timezone.now()
    with transaction.atomic():
        services.cycle_run(now=now)
        single = placements()
        transaction.set_rollback(True)
    assert 0 < len(single) < len(jobs) / 4, "the market holds far fewer jobs than are queued"

    original = matching.schedule_cycle
    reading = threading.Barrier(SHARDS, timeout=TIMEOUT)

    def both_read_first(jobs, pools, leases, now, config=None):  # type: ignore[no-untyped-def]
        reading.wait()  # every shard has read the queue and the market before any writes
        return original(jobs, pools, leases, now, config)

    monkeypatch.setattr(matching, "schedule_cycle", both_read_first)
    reports = run_together(lambda i: services.cycle_run(now=now, shard=(i, SHARDS)), SHARDS)

    assert [r.refused_at_commit for r in reports] == [0] * SHARDS, "the shards' placements never collide"
    assert all(r.assigned for r in reports), "both shards placed jobs"
    assert placements() == single, "together the shards wrote exactly the plan of one cycle over the whole queue"
    for i, report in enumerate(reports):
        buyers = set(Lease.objects.filter(pk__in=report.lease_ids).values_list("job__buyer_id", flat=True))
        assert buyers and all(b % SHARDS == i for b in buyers), "a shard writes only its own buyers' jobs"
    assert_consistent()
    assert_every_job_placed_or_explained()


def test_a_shard_whose_reading_went_stale_is_refused_at_commit_and_never_overbooks(monkeypatch):
    monkeypatch.setattr(services, "_kick_scheduler", lambda: None)
    build_market()
    build_queue()
    original = matching.schedule_cycle
    planned, intruded = threading.Event(), threading.Event()

    def stale(jobs, pools, leases, now, config=None):  # type: ignore[no-untyped-def]
        result = original(jobs, pools, leases, now, config)
        if threading.current_thread() is not threading.main_thread() and not planned.is_set():
            planned.set()
            assert intruded.wait(TIMEOUT)  # another scheduler writes between this reading and the write
        return result

    monkeypatch.setattr(matching, "schedule_cycle", stale)
    reports: list[services.CycleReport] = []

    def shard_worker() -> None:
        reports.extend(run_together(lambda i: services.cycle_run(shard=(0, 1)), 1))  # its own connection

    worker = threading.Thread(target=shard_worker)
    worker.start()
    assert planned.wait(TIMEOUT)
    # meanwhile another buyer's whole-node jobs, older than the queue, are placed by another scheduler
    newcomer = factories.buyer(category="university")
    first = Job.objects.order_by("queued_at").first()
    assert first is not None
    urgent = [factories.submit(newcomer, name=f"urgent {n}", accelerators_per_node=8) for n in range(12)]
    Job.objects.filter(pk__in=[job.pk for job in urgent]).update(queued_at=first.queued_at - timedelta(minutes=5))
    intruder = services.cycle_run(limit=len(urgent))
    intruded.set()
    worker.join(TIMEOUT)
    assert not worker.is_alive() and reports

    assert intruder.assigned == len(urgent)
    stale_report = reports[0]
    assert stale_report.refused_at_commit > 0, "placements on capacity the intruder took were refused"
    retrying = Job.objects.filter(status="queued", pending_reason__startswith="capacity was taken by another")
    assert retrying.count() == stale_report.refused_at_commit, "each refused job stays queued and says why"
    assert_consistent()  # zero overbooking, one holding lease per scheduled job
    settle()
    assert_consistent()
    assert_every_job_placed_or_explained()
