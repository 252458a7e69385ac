"""End to end: the agent against the real platform (Django's live server), so the two sides of the contract
cannot drift apart unnoticed. The other agent tests use the in-process fake platform."""

from __future__ import annotations

import itertools
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from agent.daemon import Agent, AgentConfig
from billing.models import UsageSample
from scheduler import services
from scheduler.models import Job, Lease
from tests import factories
from tests.agent.conftest import AgentThread
from tests.conftest import client_for

WORKLOAD = [sys.executable, "-u", "-c", "import time\nprint('CX-PROGRESS 50 half way')\ntime.sleep(1.2)\nprint('bye')"]


@pytest.mark.django_db(transaction=True)
def test_an_agent_runs_a_scheduled_job_on_the_platform(live_server, tmp_path: Path) -> None:
    provider, _pools = factories.market(nodes=1)
    job = factories.submit(factories.buyer(), command=WORKLOAD)
    services.cycle_run()
    lease = Lease.objects.get(job=job)
    issued = client_for(provider).post("/api/v1/agents", {"name": "node-0"}, format="json").data
    agent = Agent(
        AgentConfig(
            server=live_server.url,
            token=issued["token"],
            secret=issued["secret"],
            state_dir=tmp_path,
            poll_seconds=0.2,
            report_seconds=0.4,
            grace_seconds=1,
            progress_seconds=0.1,
        )
    )

    AgentThread(agent, once=True).join(timeout=30)

    lease.refresh_from_db()
    assert lease.status == "completed"
    assert (lease.progress_percent, lease.progress_message) == (Decimal(50), "half way")
    assert Job.objects.get(pk=job.pk).status == "succeeded"
    samples = list(UsageSample.objects.filter(lease=lease).order_by("sequence"))
    assert [s.sequence for s in samples] == list(range(1, len(samples) + 1))
    assert len(samples) >= 2
    for before, after in itertools.pairwise(samples):
        assert after.start == before.end
    held = lease.ncu * Decimal((samples[-1].end - samples[0].start).total_seconds()) / 3600
    assert sum(s.ncu_hours for s in samples) <= held
