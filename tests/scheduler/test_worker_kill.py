"""A scheduling worker killed mid-cycle loses no job and leaves no half-made lease.

A real Celery worker (its own process, its own queue) runs a cycle over a
few thousand queued jobs. The test holds a SHARE lock on the audit table,
so the cycle stops at its very last step: leases inserted and jobs marked
scheduled inside its transaction, the audit rows not yet written. The
worker is SIGKILLed there. PostgreSQL rolls the transaction back, the
message stays unacknowledged in Redis (acks_late), and once it is
redelivered a fresh worker schedules the jobs, without overbooking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from kombu import Connection

from core.models import AuditEntry
from scheduler import services
from scheduler.management.commands.check_capacity import audit_capacity
from scheduler.models import HOLDING_LEASE_STATES, Job, Lease
from scheduler.tasks import run_scheduling_cycle
from tests import factories

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

JOBS = 2000
DEADLINE = 90  # seconds for any one thing to happen
CELERY = Path(sys.executable).with_name("celery")


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = DEADLINE, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def build_market_and_queue() -> None:
    """Four pools of two 8-GPU nodes and 2000 queued jobs (a few submitted, the rest copies)."""
    provider = factories.provider()
    site = factories.site(provider)
    for i in range(4):
        pool = factories.pool(provider, site, name=f"pool {i}", node_count=2, sharing_allowed=True)
        factories.offer(provider, pool, list_price=Decimal("0.0200"))
    buyers = [factories.buyer(), factories.buyer(category="university")]
    shapes = [{"accelerators_per_node": 8}, {"accelerators_per_node": 2}, {"accelerator_milli": 500}]
    templates = [
        factories.submit(buyer, **{"accelerators_per_node": 0, **shape}) for buyer in buyers for shape in shapes
    ]
    fields = [f.attname for f in Job._meta.concrete_fields if not f.primary_key]
    rows = [{name: getattr(job, name) for name in fields} for job in templates]
    copies = [
        Job(**{**rows[n % len(rows)], "name": f"{rows[n % len(rows)]['name']} copy {n}"})
        for n in range(JOBS - len(templates))
    ]
    Job.objects.bulk_create(copies, batch_size=1000)


def database_url(application_name: str) -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    return (
        f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
        f"?application_name={application_name}"
    )


@contextmanager
def workers(queue: str, application_name: str, logs: Path) -> Iterator[Callable[[str], subprocess.Popen]]:
    """Start Celery workers on ``queue`` as asked; every one is killed on the way out."""
    started: list[subprocess.Popen] = []
    env = {
        **os.environ,
        "DATABASE_URL": database_url(application_name),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONUNBUFFERED": "1",
    }

    def start(name: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        command = [str(CELERY), "-A", "config", "worker", "--pool", "solo", "--concurrency", "1", "-Q", queue]
        command += ["-n", f"{name}-{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        process = subprocess.Popen(
            [*command, "--loglevel", "info"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def backends(application_name: str) -> list[tuple]:
    """The worker's database sessions: pid, wait event type, and whether it has inserted leases."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.pid, a.wait_event_type,
                   EXISTS (SELECT 1 FROM pg_locks l
                           WHERE l.pid = a.pid AND l.relation = 'scheduler_lease'::regclass
                             AND l.mode = 'RowExclusiveLock')
              FROM pg_stat_activity a
             WHERE a.application_name = %s
            """,
            [application_name],
        )
        return cursor.fetchall()


def unacked_for(broker: Connection, queue: str) -> dict[str, dict]:
    """Messages of ``queue`` delivered to a worker and not acknowledged, by delivery tag."""
    found = {}
    for tag, raw in broker.default_channel.client.hgetall("unacked").items():
        payload, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            found[tag.decode()] = payload
    return found


def assert_market_consistent() -> None:
    audit = audit_capacity()
    assert audit.overbooked == {}, {offer.pk: [str(o) for o in found] for offer, found in audit.overbooked.items()}
    holding = Counter(Lease.objects.filter(status__in=HOLDING_LEASE_STATES).values_list("job_id", flat=True))
    scheduled = set(Job.objects.filter(status="scheduled").values_list("pk", flat=True))
    assert set(holding) == scheduled, "every scheduled job has a holding lease and no other job has one"
    assert set(holding.values()) == {1}, "no job holds two leases"


def test_a_worker_killed_mid_cycle_loses_no_job_and_leaves_no_half_made_lease(monkeypatch):
    monkeypatch.setattr(services, "_kick_scheduler", lambda: None)
    build_market_and_queue()
    queued = set(Job.objects.filter(status="queued").values_list("pk", flat=True))
    assert len(queued) == JOBS
    audit_rows = AuditEntry.objects.count()

    queue = f"cx-test-worker-kill-{uuid.uuid4().hex[:12]}"
    application_name = f"cx-worker-{uuid.uuid4().hex[:12]}"
    db = connection.settings_dict
    broker = Connection(settings.CELERY_BROKER_URL)
    try:
        # Exits in reverse order: the workers are killed before the lock is let go.
        with (
            psycopg.connect(
                host=db["HOST"] or "localhost",
                port=db["PORT"] or 5432,
                dbname=db["NAME"],
                user=db["USER"],
                password=db["PASSWORD"] or None,
            ) as locker,
            tempfile.TemporaryDirectory() as logs,
            workers(queue, application_name, Path(logs)) as start_worker,
        ):
            # The audit table is locked: the cycle can do everything but write its audit rows and commit.
            locker.execute("LOCK TABLE core_auditentry IN SHARE MODE")
            doomed = start_worker("doomed")
            run_scheduling_cycle.apply_async(queue=queue)
            pid, _wait, _inserted = wait_for(
                "the cycle to insert its leases and stop at the audit table",
                lambda: next((b for b in backends(application_name) if b[1] == "Lock" and b[2]), None),
            )
            assert Lease.objects.count() == 0, "nothing is visible before the cycle commits"
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=30)
            locker.rollback()
            wait_for(
                "PostgreSQL to end the killed worker's session",
                lambda: pid not in [b[0] for b in backends(application_name)],
            )

            assert not Lease.objects.exists(), "the killed cycle left no lease"
            assert set(Job.objects.filter(status="queued").values_list("pk", flat=True)) == queued, "no job lost"
            assert AuditEntry.objects.count() == audit_rows
            assert not Job.objects.exclude(pending_reason="").exists(), "nothing of the cycle was written"

            # acks_late: the message was never acknowledged, so it is still in Redis, not lost.
            [(tag, payload)] = unacked_for(broker, queue).items()
            assert payload["headers"]["task"] == run_scheduling_cycle.name
            # Redis hands it back after the visibility timeout (an hour); do now what that timer does.
            broker.default_channel.qos.restore_by_tag(tag)

            start_worker("fresh")
            wait_for(
                "the fresh worker to run the redelivered cycle",
                lambda: Job.objects.filter(status="scheduled").exists() and not unacked_for(broker, queue),
            )
    finally:
        client = broker.default_channel.client
        for tag in unacked_for(broker, queue):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        broker.release()

    scheduled = Job.objects.filter(status="scheduled").count()
    assert scheduled > 0
    assert Job.objects.filter(status="queued").count() == JOBS - scheduled, "every other job is still queued"
    assert_market_consistent()
    assert AuditEntry.objects.filter(action="lease.created").count() == scheduled
