"""Celery tasks of the scheduler: thin, id-only wrappers around services."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from core.tasks import DURABLE
from scheduler import services


@shared_task(**DURABLE)
def run_scheduling_cycle(
    hub: str | None = None, shard: list[int] | None = None, not_before: float | None = None, kick: str | None = None
) -> dict[str, float | int]:
    """Run one scheduling cycle (all hubs, or one hub's shard; ``shard=[i, n]``:
    worker i of n, which writes its buyers' part of the plan of the whole
    queue). ``not_before``: a whole-market cycle a submission asked for waits
    until then (at most ``CX_CYCLE_MIN_GAP_SECONDS``), then takes the queue;
    ``kick``: the mark the submission set, cleared as it starts (see
    :func:`~scheduler.services.cycle_started`).
    Idempotent: a cycle only places jobs that are still queued."""
    if hub is None and shard is None:
        services.cycle_wait(not_before)
        services.cycle_started(kick)
    report = services.cycle_run(hub=hub, shard=None if shard is None else (int(shard[0]), int(shard[1])))
    return {
        "queued": report.queued,
        "assigned": report.assigned,
        "pending": report.pending,
        "refused_at_commit": report.refused_at_commit,
        "preempted": report.preempted,
        "seconds": report.seconds,
    }


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def watch_leases() -> list[int]:
    """Declare lost the leases whose heartbeats stopped (or that never started);
    their jobs go back to the queue. Returns the lost lease ids."""
    from scheduler.execution import leases_end_unpaid, leases_watch

    leases_end_unpaid()
    lost = leases_watch()
    if lost:
        run_scheduling_cycle.delay()
    return lost


@shared_task(**DURABLE)
def repair_stuck_work() -> dict:
    """Find and repair work stuck without progress (see scheduler.repair);
    idempotent. Returns what was repaired."""
    from scheduler.repair import repair_stuck_work as sweep

    report = sweep()
    if report.cycle_needed or report.jobs_queued:
        run_scheduling_cycle.delay()
    return report.as_dict()
