"""The agent API as a provider's agent uses it: pull, start, report, finish."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Charge, UsageSample
from core.models import AuditEntry
from scheduler import execution, services
from scheduler.models import Job, Lease
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def agent_client(provider_user):
    issued = client_for(provider_user).post("/api/v1/agents", {"name": "node-17"}, format="json").data
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Agent {issued['token']}")
    return client, issued


def scheduled(buyer=None, **job_overrides):
    provider, _pools = factories.market(nodes=1)
    buyer = buyer or factories.buyer()
    job = factories.submit(buyer, **job_overrides)
    services.cycle_run()
    return provider, buyer, Job.objects.get(pk=job.pk), Lease.objects.get(job=job)


def signed_usage(secret, lease, sequence, start, end, ncu_hours, device_seconds="0"):
    body = {
        "sequence": sequence,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "device_seconds": device_seconds,
        "ncu_hours": str(ncu_hours),
        "energy_kwh": None,
    }
    message = execution.usage_message(
        lease_id=lease.pk,
        sequence=sequence,
        start=body["start"],
        end=body["end"],
        device_seconds=body["device_seconds"],
        ncu_hours=body["ncu_hours"],
        energy_kwh=None,
    )
    body["signature"] = execution.sign_usage(secret, message)
    return body


def started(provider):
    agent, issued = agent_client(provider)
    return agent, issued


def test_an_agent_runs_a_lease_from_start_to_success(django_capture_on_commit_callbacks):
    provider, _buyer, job, lease = scheduled()
    agent, issued = started(provider)
    listed = agent.get("/api/v1/agent/leases").data["results"]
    assert [row["id"] for row in listed] == [lease.pk]
    assert listed[0]["job"]["command"] == ["python", "train.py"]
    assert listed[0]["devices"] == 8 and listed[0]["last_sequence"] == 0
    assert listed[0]["pool"] == lease.pool.identifier and listed[0]["site"] == lease.pool.site.identifier

    assert agent.post(f"/api/v1/agent/leases/{lease.pk}/ack").data["status"] == "running"
    job.refresh_from_db()
    assert job.status == "running"
    assert (
        agent.post(
            f"/api/v1/agent/leases/{lease.pk}/progress", {"percent": "40", "message": "epoch 4/10"}, format="json"
        ).status_code
        == 200
    )
    lease.refresh_from_db()
    assert (lease.progress_percent, lease.progress_message) == (Decimal("40.00"), "epoch 4/10")

    start = lease.start
    end = start + timedelta(seconds=20)
    usage = (lease.ncu * 20 / 3600).quantize(Decimal("0.0001"))
    body = signed_usage(issued["secret"], lease, 1, start, end, usage)
    assert agent.post(f"/api/v1/agent/leases/{lease.pk}/usage", body, format="json").status_code == 201
    assert agent.post(f"/api/v1/agent/leases/{lease.pk}/usage", body, format="json").status_code == 200
    assert UsageSample.objects.filter(lease=lease).count() == 1

    with django_capture_on_commit_callbacks(execute=True):
        done = agent.post(f"/api/v1/agent/leases/{lease.pk}/complete", {"exit_code": 0, "message": "ok"}, format="json")
    assert done.status_code == 200 and done.data["status"] == "completed"
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert list(
        AuditEntry.objects.filter(entity_type="scheduler.job", entity_id=str(job.pk)).values_list("to_state", flat=True)
    ) == ["submitted", "queued", "scheduled", "running", "succeeded"]
    charge = Charge.objects.get(lease=lease)
    assert charge.ncu_hours == usage and charge.gross > 0


def test_a_forged_sample_is_refused_and_audited():
    provider, _buyer, _job, lease = scheduled()
    agent, _issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    body = signed_usage("not-the-secret", lease, 1, lease.start, lease.start + timedelta(seconds=1), "0.0001")
    response = agent.post(f"/api/v1/agent/leases/{lease.pk}/usage", body, format="json")
    assert response.status_code == 400 and response.data["field"] == "signature"
    assert AuditEntry.objects.filter(action="usage.rejected", entity_id=str(lease.pk)).exists()
    assert not UsageSample.objects.exists()


def test_usage_above_leased_capacity_times_elapsed_is_refused():
    provider, _buyer, _job, lease = scheduled()
    agent, issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    start = lease.start
    end = start + timedelta(seconds=1)
    too_much = (lease.ncu / 3600 * 2).quantize(Decimal("0.0001"))
    body = signed_usage(issued["secret"], lease, 1, start, end, too_much)
    response = agent.post(f"/api/v1/agent/leases/{lease.pk}/usage", body, format="json")
    assert response.status_code == 400 and response.data["field"] == "ncu_hours"


def test_a_sample_outside_the_lease_is_refused():
    provider, _buyer, _job, lease = scheduled()
    agent, issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    early = lease.start - timedelta(hours=1)
    body = signed_usage(issued["secret"], lease, 1, early, early + timedelta(seconds=10), "0")
    response = agent.post(f"/api/v1/agent/leases/{lease.pk}/usage", body, format="json")
    assert response.status_code == 400 and response.data["field"] == "start"


def test_an_agent_never_sees_or_touches_another_providers_lease():
    _provider, _buyer, _job, lease = scheduled()
    stranger = factories.provider()
    agent, _issued = agent_client(stranger)
    assert agent.get("/api/v1/agent/leases").data["results"] == []
    for action in ("ack", "heartbeat", "complete"):
        response = agent.post(f"/api/v1/agent/leases/{lease.pk}/{action}", {"exit_code": 0}, format="json")
        assert response.status_code == 404, action
    lease.refresh_from_db()
    assert lease.status == "scheduled"


def test_revoked_and_rotated_tokens_stop_working():
    provider, _buyer, _job, _lease = scheduled()
    agent, issued = agent_client(provider)
    owner = client_for(provider)
    rotated = owner.post(f"/api/v1/agents/{issued['id']}/rotate").data
    assert agent.get("/api/v1/agent/leases").status_code == 401
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Agent {rotated['token']}")
    assert fresh.get("/api/v1/agent/leases").status_code == 200
    owner.post(f"/api/v1/agents/{issued['id']}/revoke")
    assert fresh.get("/api/v1/agent/leases").status_code == 401
    assert "token" not in owner.get("/api/v1/agents").data[0]


def test_a_buyer_or_provider_token_cannot_call_the_agent_api():
    provider, buyer, _job, _lease = scheduled()
    for user in (provider, buyer):
        assert client_for(user).get("/api/v1/agent/leases").status_code == 403


def test_heartbeat_tells_the_agent_to_stop_a_cancelled_lease():
    provider, buyer, job, lease = scheduled()
    agent, _issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    assert agent.post(f"/api/v1/agent/leases/{lease.pk}/heartbeat").data == {"status": "running", "stop": False}
    services.job_cancel(job=job, actor=buyer, reason="no longer needed")
    assert agent.post(f"/api/v1/agent/leases/{lease.pk}/heartbeat").data == {"status": "cancelled", "stop": True}
    late = agent.post(f"/api/v1/agent/leases/{lease.pk}/complete", {"exit_code": 0}, format="json")
    assert late.status_code == 409 and late.data["current"] == "cancelled"


def test_a_silent_lease_is_lost_its_job_requeued_and_reliability_drops():
    provider, _buyer, job, lease = scheduled()
    agent, _issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    assert execution.reliability_of(provider.organisation_id) == Decimal("1.0000")
    later = timezone.now() + execution.heartbeat_timeout() + timedelta(seconds=1)
    assert execution.leases_watch(now=later) == [lease.pk]
    lease.refresh_from_db()
    job.refresh_from_db()
    assert lease.status == "lost"
    assert job.status == "queued"
    assert execution.reliability_of(provider.organisation_id) < Decimal("1.0000")


def test_a_job_that_asked_not_to_be_retried_fails_when_its_lease_is_lost():
    provider, _buyer, job, lease = scheduled(retry_on_loss=False)
    agent, _issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    execution.leases_watch(now=timezone.now() + execution.heartbeat_timeout() + timedelta(seconds=1))
    job.refresh_from_db()
    assert job.status == "failed"


def test_buyers_rate_completed_leases_and_profiles_show_the_average():
    provider, buyer, _job, lease = scheduled()
    agent, _issued = started(provider)
    agent.post(f"/api/v1/agent/leases/{lease.pk}/ack")
    rating_url = f"/api/v1/leases/{lease.pk}/rating"
    assert client_for(buyer).post(rating_url, {"score": 5}, format="json").status_code == 409
    agent.post(f"/api/v1/agent/leases/{lease.pk}/complete", {"exit_code": 0}, format="json")
    assert client_for(factories.buyer()).post(rating_url, {"score": 1}, format="json").status_code == 404
    created = client_for(buyer).post(rating_url, {"score": 4, "comment": "fast nodes"}, format="json")
    assert created.status_code == 201
    assert client_for(buyer).post(rating_url, {"score": 5}, format="json").status_code == 409
    assert client_for(buyer).post(rating_url, {"score": 6}, format="json").status_code == 400
    profile = APIClient().get(f"/api/v1/providers/{provider.organisation.identifier}/profile").data
    assert profile["rating_average"] == Decimal("4.00") and profile["rating_count"] == 1
    assert profile["recent_ratings"][0]["comment"] == "fast nodes"
    assert profile["lease_outcomes"]["completed"] == 1
