"""End to end with real processes: the API server, a scheduling worker with
its beat, and a provider agent, on PostgreSQL and Redis.

A buyer submits a short real job over HTTP; the worker's cycle places it,
the agent runs it and reports progress and signed usage, the beat charges
the usage. Then the same with the agent SIGKILLed mid-run: the beat's
watchdog declares the lease lost after the heartbeat timeout, the job goes
back to the queue and is placed on the other provider's pool, the buyer
pays only for the usage reported before the loss, and the lost provider's
reliability drops."""

from __future__ import annotations

import json
import os
import signal
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum
from rest_framework.authtoken.models import Token

from billing import services as billing
from billing.models import AccountKind, Charge, Hold, UsageSample
from core.models import AuditEntry
from scheduler.execution import agent_create, reliability_of
from scheduler.models import Job, Lease
from tests import factories
from tests.e2e.conftest import Platform, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

FUNDS = Decimal("1000000.00")
PRICE = Decimal("50.0000")  # per NCU-hour: high enough that a few seconds of usage cost whole fen
SHORT_JOB = [
    "python3",
    "-c",
    "import time\nprint('CX-PROGRESS 50 half way', flush=True)\ntime.sleep(3)\n"
    "print('CX-PROGRESS 100 done', flush=True)",
]


def provider_pool(**site_overrides):
    """A verified provider with one site and a one-node pool offered now."""
    provider = factories.provider()
    site = factories.site(provider, **site_overrides)
    pool = factories.pool(provider, site, name="one node", node_count=1)
    factories.offer(provider, pool, list_price=PRICE)
    return provider, pool


def submit_over_http(platform: Platform, buyer, command: list[str]) -> Job:
    token = Token.objects.get_or_create(user=buyer)[0].key
    body = {
        "name": "end-to-end job",
        "command": command,
        "software_stack": "cuda",
        "accelerators_per_node": 8,
        "nodes": 1,
        "duration_seconds": 600,
    }
    status, answer = platform.request("POST", "/api/v1/jobs", token=token, body=json.dumps(body).encode())
    assert status == 201, answer
    return Job.objects.get(pk=json.loads(answer)["id"])


def job_states(job: Job) -> list[str]:
    return list(
        AuditEntry.objects.filter(entity_type="scheduler.job", entity_id=str(job.pk))
        .exclude(to_state="")
        .order_by("id")
        .values_list("to_state", flat=True)
    )


def status_of(job: Job) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


def test_a_real_job_runs_from_submission_to_success_and_is_charged(platform: Platform) -> None:
    provider, pool = provider_pool()
    buyer = factories.buyer(funds=FUNDS)
    issued = agent_create(user=provider, name="node-0")
    platform.start_agent("agent", token=issued.token, secret=issued.secret)

    job = submit_over_http(platform, buyer, SHORT_JOB)
    wait_for("the job to succeed", lambda: status_of(job) in {"succeeded", "failed"}, timeout=60)

    assert status_of(job) == "succeeded"
    assert job_states(job) == ["submitted", "queued", "scheduled", "running", "succeeded"]
    lease = Lease.objects.get(job=job)
    assert (lease.pool_id, lease.status, lease.exit_code) == (pool.pk, "completed", 0)
    assert lease.progress_percent == Decimal(100)
    samples = UsageSample.objects.filter(lease=lease)
    assert samples.exists()
    assert all(s.signature for s in samples)
    assert samples.aggregate(t=Sum("ncu_hours"))["t"] > 0

    wait_for(
        "every usage sample to be charged and the hold closed",
        lambda: not samples.filter(charged=False).exists() and Hold.objects.get(lease=lease).status == "closed",
        timeout=30,
    )
    charges = Charge.objects.filter(lease=lease)
    assert charges.count() == samples.count()
    assert charges.aggregate(t=Sum("ncu_hours"))["t"] == samples.aggregate(t=Sum("ncu_hours"))["t"]
    gross = charges.aggregate(t=Sum("gross"))["t"]
    assert gross > 0
    assert billing.balance(billing.account_code(buyer.organisation_id, AccountKind.BUYER_AVAILABLE)) == FUNDS - gross
    assert billing.balance(billing.account_code(buyer.organisation_id, AccountKind.BUYER_HELD)) == 0
    assert platform.alive("agent"), "the agent keeps running after its lease ended"


def test_an_agent_killed_mid_run_loses_its_lease_and_the_job_is_placed_elsewhere(
    platform: Platform, tmp_path: Path
) -> None:
    first_provider, _ = provider_pool()
    second_provider, _ = provider_pool()
    providers = {p.organisation_id: p for p in (first_provider, second_provider)}
    buyer = factories.buyer(funds=FUNDS)
    pid_file = tmp_path / "workload.pid"
    platform.workload_pids.append(pid_file)
    long_job = [
        "python3",
        "-c",
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "for i in range(1, 60):\n"
        "    print(f'CX-PROGRESS {i} step {i}', flush=True); time.sleep(1)",
    ]

    job = submit_over_http(platform, buyer, long_job)
    lease = wait_for("the cycle to place the job", lambda: Lease.objects.filter(job=job).first(), timeout=30)
    lost_provider = providers[lease.pool.site.provider_id]
    other_provider = next(p for p in providers.values() if p is not lost_provider)
    issued = agent_create(user=lost_provider, name="node-0")
    agent = platform.start_agent("agent", token=issued.token, secret=issued.secret)
    wait_for(
        "the lease to run and report usage",
        lambda: (
            Lease.objects.get(pk=lease.pk).status == "running" and UsageSample.objects.filter(lease=lease).count() >= 2
        ),
        timeout=30,
    )

    # The node goes away: the agent and its workload die without a word.
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)

    wait_for("the watchdog to declare the lease lost", lambda: Lease.objects.get(pk=lease.pk).status == "lost")
    lease.refresh_from_db()
    new_lease = wait_for(
        "the job to be placed again",
        lambda: Lease.objects.filter(job=job).exclude(pk=lease.pk).first(),
        timeout=30,
    )
    assert new_lease.pool.site.provider_id == other_provider.organisation_id, "placed on the other provider's pool"
    assert new_lease.status == "scheduled"
    assert status_of(job) == "scheduled"
    assert job_states(job) == ["submitted", "queued", "scheduled", "running", "queued", "scheduled"]

    samples = UsageSample.objects.filter(lease=lease)
    assert samples.count() >= 2
    assert not samples.filter(received_at__gt=lease.ended_at).exists(), "no usage accepted after the loss"
    wait_for(
        "the lost lease's usage to be charged and its hold closed",
        lambda: not samples.filter(charged=False).exists() and Hold.objects.get(lease=lease).status == "closed",
        timeout=30,
    )
    charges = Charge.objects.filter(lease=lease)
    assert charges.aggregate(t=Sum("ncu_hours"))["t"] == samples.aggregate(t=Sum("ncu_hours"))["t"]
    totals = charges.aggregate(gross=Sum("gross"), owed=Sum("owed"), voucher=Sum("voucher_funded"))
    assert totals["owed"] == 0 and totals["voucher"] == 0
    lost_hold, new_hold = Hold.objects.get(lease=lease), Hold.objects.get(lease=new_lease)
    assert lost_hold.captured == totals["gross"]
    assert lost_hold.released == lost_hold.amount - totals["gross"] > 0, "the unused part went back to the buyer"
    available = billing.balance(billing.account_code(buyer.organisation_id, AccountKind.BUYER_AVAILABLE))
    assert available == FUNDS - new_hold.amount - totals["gross"]

    assert reliability_of(lost_provider.organisation_id) < 1
    assert reliability_of(other_provider.organisation_id) == 1
