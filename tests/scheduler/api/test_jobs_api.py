"""Buyers submit, watch and cancel jobs through the API; every refusal names its field and reason."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import AuditEntry
from scheduler import services
from scheduler.models import Job, Lease
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs"


def names_field(reported: str | None, field: str) -> bool:
    """Whether an error names ``field`` (or a part of it, like ``allowed_hubs.0``)."""
    return reported is not None and (reported == field or reported.startswith((f"{field}.", f"{field}[")))


def post_job(user, **overrides):
    return client_for(user).post(JOBS, _json(factories.job_values(**overrides)), format="json")


def _json(values: dict) -> dict:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in values.items()}


def without(field: str) -> dict:
    values = factories.job_values()
    del values[field]
    return values


# --- submission ------------------------------------------------------------------------------------------------------


def test_a_buyer_submits_a_job_and_it_is_queued(buyer):
    factories.market(nodes=2)
    response = post_job(buyer, name="render the hospital scans")
    assert response.status_code == 201, response.data
    assert response.data["status"] == "queued"
    assert response.data["name"] == "render the hospital scans"
    assert response.data["lease"] is None
    job = Job.objects.get(pk=response.data["id"])
    assert job.buyer == buyer.organisation and job.submitted_by == buyer
    assert job.buyer_city == "beijing", "the organisation's city is the default"


def hours_from_now(hours: float) -> str:
    return (timezone.now() + timedelta(hours=hours)).isoformat()


INVALID_JOBS = [
    pytest.param(
        {"earliest_start": hours_from_now(1), "deadline": hours_from_now(2), "duration_seconds": 2 * 3600},
        "deadline",
        id="deadline-before-earliest-start-plus-duration",
    ),
    pytest.param({"earliest_start": hours_from_now(5), "deadline": hours_from_now(4)}, "deadline", id="deadline-first"),
    pytest.param({"deadline": hours_from_now(-1)}, "deadline", id="deadline-passed"),
    pytest.param(
        {"software_stack": "cpu", "accelerators_per_node": 0, "cpu_milli_per_node": 8000},
        "cpu_architecture",
        id="cpu-job-without-architecture",
    ),
    pytest.param(
        {"software_stack": "cpu", "cpu_architecture": "x86_64", "cpu_milli_per_node": 8000},
        "accelerators_per_node",
        id="cpu-job-with-accelerators",
    ),
    pytest.param(
        {"accelerators_per_node": 8, "capacity_tflops": "2000", "capacity_precision": "fp16"},
        "accelerators_per_node",
        id="both-accelerators-and-capacity",
    ),
    pytest.param({"accelerators_per_node": 0}, "accelerators_per_node", id="accelerated-job-asking-for-nothing"),
    pytest.param({"capacity_tflops": "100"}, "capacity_precision", id="capacity-without-precision"),
    pytest.param({"allowed_hubs": ["XX"]}, "allowed_hubs", id="unknown-hub"),
    pytest.param({"allowed_hubs": "GZ"}, "allowed_hubs", id="hubs-not-a-list"),
    pytest.param(
        {"accelerators_per_node": 0, "accelerator_milli": 500, "nodes": 2}, "nodes", id="shared-slice-on-two-nodes"
    ),
    pytest.param({"accelerators_per_node": 0, "accelerator_milli": 1000}, "accelerator_milli", id="slice-too-big"),
    pytest.param({"duration_seconds": -3600}, "duration_seconds", id="negative-duration"),
    pytest.param({"duration_seconds": 0}, "duration_seconds", id="zero-duration"),
    pytest.param({"duration_seconds": "two hours"}, "duration_seconds", id="duration-not-a-number"),
    pytest.param({"nodes": 0}, "nodes", id="no-nodes"),
    pytest.param({"nodes": 10**20}, "nodes", id="absurd-nodes"),
    pytest.param({"software_stack": "abacus"}, "software_stack", id="unknown-stack"),
    pytest.param({"objective": "fastest"}, "objective", id="unknown-objective"),
    pytest.param({"earliest_start": "next tuesday"}, "earliest_start", id="unparsable-date"),
    pytest.param({"earliest_start": "9999-12-31T23:00:00Z"}, "earliest_start", id="start-at-the-end-of-time"),
    pytest.param({"deadline": "9999-12-31T23:59:59Z"}, "deadline", id="deadline-at-the-end-of-time"),
    pytest.param({"max_price_per_ncu_hour": "0"}, "max_price_per_ncu_hour", id="zero-price-cap"),
    pytest.param({"max_total_price": "-5"}, "max_total_price", id="negative-budget"),
    pytest.param({"max_latency_ms": 0}, "max_latency_ms", id="zero-latency"),
    pytest.param({"buyer_city": "atlantis"}, "buyer_city", id="unknown-city"),
    pytest.param({"command": "python train.py"}, "command", id="command-not-a-list"),
    pytest.param({"name": ""}, "name", id="blank-name"),
    pytest.param({"cpu_milli_per_node": -1}, "cpu_milli_per_node", id="negative-cpu"),
]


@pytest.mark.parametrize(("overrides", "field"), INVALID_JOBS)
def test_bad_job_input_is_a_400_naming_the_field_and_writes_nothing(buyer, overrides, field):
    factories.market(nodes=2)
    audit_before = AuditEntry.objects.count()
    response = post_job(buyer, **overrides)
    assert response.status_code == 400, response.data
    assert names_field(response.data["field"], field), response.data
    assert response.data["detail"]
    assert not Job.objects.exists()
    assert AuditEntry.objects.count() == audit_before


@pytest.mark.parametrize("field", ["duration_seconds", "software_stack", "name"])
def test_a_missing_required_field_is_a_400_naming_it(buyer, field):
    factories.market(nodes=2)
    response = client_for(buyer).post(JOBS, without(field), format="json")
    assert response.status_code == 400
    assert response.data["field"] == field
    assert "required" in response.data["detail"]
    assert not Job.objects.exists()


def test_a_body_that_is_not_an_object_is_a_400(buyer):
    factories.market(nodes=1)
    for body in ([1, 2, 3], "a job", 42):
        response = client_for(buyer).post(JOBS, body, format="json")
        assert response.status_code == 400, (body, response.data)
    assert not Job.objects.exists()


def test_a_job_no_pool_could_ever_run_is_refused_with_the_explanation(buyer):
    factories.market(pools=2, nodes=2)
    east = factories.provider(home_hub="JJJ", city="beijing")
    factories.offer(east, factories.pool(east, factories.site(east, hub="JJJ", city="beijing")))
    response = post_job(buyer, software_stack="cann")
    assert response.status_code == 422, response.data
    assert response.data["code"] == "job_never_fits"
    assert "0/3 pools fit: 3 wrong software stack" in response.data["detail"]
    assert response.data["explanation"]["reasons"] == {"wrong_stack": 3}
    mixed = post_job(buyer, allowed_hubs=["YRD"], max_price_per_ncu_hour="0.001")
    assert mixed.status_code == 422
    assert mixed.data["detail"].startswith("No pool can run this job: 0/3 pools fit: ")
    assert "outside allowed hubs" in mixed.data["detail"]
    assert not Job.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="job.").exists()


def test_a_job_too_big_for_any_pool_is_refused_at_submission(buyer):
    factories.market(nodes=2)
    response = post_job(buyer, nodes=3)
    assert response.status_code == 422
    assert response.data["detail"].endswith("0/1 pools fit: 1 too few nodes.")


def test_a_queued_job_shows_why_per_constraint_after_a_cycle(buyer):
    """Four pools: one fits but is full, one runs another stack, one is too
    dear, one stands outside the hubs the buyer allows."""
    provider, [fits] = factories.market(nodes=1)
    site = fits.site
    ascend = factories.device("huawei-ascend-910b")
    cann = factories.pool(provider, site, name="ascend", node_count=1, accelerator_model=ascend)
    factories.offer(provider, cann)
    dear = factories.pool(provider, site, name="dear", node_count=1)
    factories.offer(provider, dear, list_price=Decimal("9.00"))
    east = factories.provider(home_hub="JJJ", city="beijing")
    factories.offer(east, factories.pool(east, factories.site(east, hub="JJJ", city="beijing"), node_count=1))
    limits = {"allowed_hubs": ["GZ"], "max_price_per_ncu_hour": "0.05"}
    first = post_job(buyer, **limits)
    second = post_job(buyer, **limits)
    assert (first.status_code, second.status_code) == (201, 201)
    services.cycle_run()
    client = client_for(buyer)
    assert client.get(f"{JOBS}/{first.data['id']}").data["status"] == "scheduled"
    waiting = client.get(f"{JOBS}/{second.data['id']}").data
    assert waiting["status"] == "queued"
    reason = waiting["pending_reason"]
    assert reason.startswith("0/4 pools fit: ")
    for part in ("1 wrong software stack", "1 outside allowed hubs", "1 over price cap", "1 no free capacity"):
        assert part in reason, reason
    assert waiting["pending_detail"]["reasons"] == {
        "wrong_stack": 1,
        "outside_hubs": 1,
        "over_price_cap": 1,
        "no_capacity": 1,
    }
    listed = {j["id"]: j for j in client.get(JOBS, {"status": "queued"}).data["results"]}
    assert listed[second.data["id"]]["pending_reason"] == reason


# --- cancellation ----------------------------------------------------------------------------------------------------


def test_a_buyer_cancels_a_queued_job(buyer):
    factories.market(nodes=1)
    job = factories.submit(buyer)
    response = client_for(buyer).post(f"{JOBS}/{job.pk}/cancel", {"reason": "wrong dataset"}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["status"] == "cancelled"
    entry = AuditEntry.objects.get(entity_id=str(job.pk), action="job.transition", to_state="cancelled")
    assert (entry.actor, entry.from_state, entry.reason) == (buyer, "queued", "wrong dataset")


def test_cancelling_a_scheduled_job_cancels_its_lease_and_frees_the_capacity(buyer):
    factories.market(nodes=1)
    job, waiting = factories.submit(buyer), factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=job)
    response = client_for(buyer).post(f"{JOBS}/{job.pk}/cancel", format="json")
    assert response.status_code == 200
    assert response.data["status"] == "cancelled"
    assert response.data["lease"]["status"] == "cancelled"
    lease.refresh_from_db()
    assert lease.status == "cancelled" and lease.ended_at is not None
    assert AuditEntry.objects.filter(entity_id=str(lease.pk), action="lease.transition", to_state="cancelled").exists()
    services.cycle_run()
    waiting.refresh_from_db()
    assert waiting.status == "scheduled"


def test_cancelling_twice_is_a_409_with_the_current_state(buyer):
    factories.market(nodes=1)
    job = factories.submit(buyer)
    client = client_for(buyer)
    assert client.post(f"{JOBS}/{job.pk}/cancel").status_code == 200
    again = client.post(f"{JOBS}/{job.pk}/cancel")
    assert again.status_code == 409
    assert again.data["code"] == "illegal_transition"
    assert again.data["current"] == "cancelled"
    assert "cancelled" in again.data["detail"]
    assert AuditEntry.objects.filter(entity_id=str(job.pk), to_state="cancelled").count() == 1


def test_every_transition_of_a_job_is_audited_with_who_and_why(buyer):
    factories.market(nodes=1)
    job = factories.submit(buyer)
    services.cycle_run()
    client_for(buyer).post(f"{JOBS}/{job.pk}/cancel", {"reason": "results no longer needed"}, format="json")
    entries = list(
        AuditEntry.objects.filter(entity_type="scheduler.job", entity_id=str(job.pk))
        .order_by("id")
        .values_list("action", "from_state", "to_state", "actor_label", "reason")
    )
    assert [(e[1], e[2]) for e in entries] == [
        ("", "submitted"),
        ("submitted", "queued"),
        ("queued", "scheduled"),
        ("scheduled", "cancelled"),
    ]
    assert [e[3] for e in entries] == [buyer.username, buyer.username, "system", buyer.username]
    assert entries[1][4].startswith("1/1 pools fit")
    assert entries[2][4].startswith("placed on ")
    assert entries[3][4] == "results no longer needed"
    assert all(e[4] for e in entries[1:]), "every transition says why"


# --- isolation -------------------------------------------------------------------------------------------------------


def test_a_buyer_never_sees_or_cancels_another_organisations_job():
    factories.market(nodes=2)
    alice, bob = factories.buyer(), factories.buyer(category="medical_institution")
    alices = factories.submit(alice)
    services.cycle_run()
    bobs_client = client_for(bob)
    assert bobs_client.get(f"{JOBS}/{alices.pk}").status_code == 404
    assert bobs_client.post(f"{JOBS}/{alices.pk}/cancel").status_code == 404
    assert bobs_client.get(JOBS).data == {"count": 0, "results": []}
    assert bobs_client.get("/api/v1/leases").data == {"count": 0, "results": []}
    alices.refresh_from_db()
    assert alices.status == "scheduled"
    assert [j["id"] for j in client_for(alice).get(JOBS).data["results"]] == [alices.pk]


def test_a_colleague_in_the_same_organisation_sees_and_cancels_the_job():
    factories.market(nodes=1)
    alice = factories.buyer()
    colleague = type(alice).objects.create_user(
        username="alice-colleague", password=factories.PASSWORD, organisation=alice.organisation, role=alice.role
    )
    job = factories.submit(alice)
    assert client_for(colleague).get(f"{JOBS}/{job.pk}").status_code == 200
    assert client_for(colleague).post(f"{JOBS}/{job.pk}/cancel").status_code == 200


def test_providers_see_the_leases_on_their_own_pools_only(buyer):
    gz, [gz_pool] = factories.market(nodes=1)
    east = factories.provider(home_hub="JJJ", city="beijing")
    east_pool = factories.pool(east, factories.site(east, hub="JJJ", city="beijing"), node_count=1)
    factories.offer(east, east_pool)
    jobs = [factories.submit(buyer), factories.submit(buyer)]
    services.cycle_run()
    assert Lease.objects.filter(job__in=jobs).count() == 2
    for provider, pool in ((gz, gz_pool), (east, east_pool)):
        seen = client_for(provider).get("/api/v1/leases").data["results"]
        assert [lease["pool_identifier"] for lease in seen] == [pool.identifier]
    assert client_for(gz).get(JOBS).data["count"] == 0, "providers do not see buyers' orders"
    assert client_for(gz).post(f"{JOBS}/{jobs[0].pk}/cancel").status_code == 403
    assert client_for(buyer).get("/api/v1/leases").data["count"] == 2


def test_providers_and_operators_cannot_submit_jobs(provider, operator):
    factories.market(nodes=1)
    for user in (provider, operator):
        assert post_job(user).status_code == 403
    assert not Job.objects.exists()


def test_operators_see_every_organisations_jobs(operator):
    factories.market(nodes=1)
    alice, bob = factories.buyer(), factories.buyer(category="university")
    ids = {factories.submit(alice).pk, factories.submit(bob).pk}
    assert {j["id"] for j in client_for(operator).get(JOBS).data["results"]} == ids


# --- list cost -------------------------------------------------------------------------------------------------------


def test_listing_jobs_costs_a_constant_number_of_queries(buyer, django_assert_max_num_queries):
    factories.market(pools=4, nodes=2)
    for _ in range(30):
        factories.submit(buyer, accelerators_per_node=4)
    services.cycle_run()
    assert Lease.objects.count() >= 16
    client = client_for(buyer)
    with django_assert_max_num_queries(4):
        response = client.get(JOBS, {"limit": 100})
    assert response.data["count"] == 30
    assert sum(1 for j in response.data["results"] if j["lease"]) == Lease.objects.count()
    with django_assert_max_num_queries(4):
        assert client.get("/api/v1/leases", {"limit": 100}).data["count"] == Lease.objects.count()


@pytest.mark.postgres  # the one-statement trail is PostgreSQL's path (SQLite writes the pending rows apart)
def test_submitting_a_job_writes_the_job_once_and_its_trail_in_one_statement(buyer):
    factories.market(nodes=2)
    client = client_for(buyer)
    assert post_job(buyer, name="warm-up").status_code == 201  # the market snapshot is read once, then reused
    with CaptureQueriesContext(connection) as queries:
        response = client.post(JOBS, _json(factories.job_values(name="measured")), format="json")
    assert response.status_code == 201 and response.data["status"] == "queued" and response.data["lease"] is None
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    writes = [sql for sql in statements if not sql.startswith("SELECT")]
    assert len(writes) == 2, writes
    assert writes[0].startswith('INSERT INTO "scheduler_job"')
    assert "core_auditentry" in writes[1] and "core_auditpending" in writes[1], "entries and their pending rows"
    reads = [sql for sql in statements if sql.startswith("SELECT")]
    assert not any('"scheduler_job"' in sql or '"scheduler_lease"' in sql for sql in reads), "no job or lease read back"
    assert len(statements) <= 3, statements  # and the market snapshot's check

    job = Job.objects.get(pk=response.data["id"])
    assert job.status == "queued" and job.queued_at is not None
    assert response.data["queued_at"] and response.data["status_changed_at"] and response.data["created_at"]
    trail = AuditEntry.objects.filter(entity_type="scheduler.job", entity_id=str(job.pk)).order_by("id")
    assert list(trail.values_list("action", "from_state", "to_state", "actor_label")) == [
        ("job.submitted", "", "submitted", buyer.username),
        ("job.transition", "submitted", "queued", buyer.username),
    ]
    assert trail[0].data["explanation"]["message"] == trail[1].reason and trail[1].reason.startswith("1/1 pools fit")


def test_a_job_submitted_to_be_paid_with_vouchers_records_the_choice_between_submission_and_queueing(buyer):
    from vouchers.models import JobVoucherChoice

    factories.market(nodes=2)
    response = post_job(buyer, use_vouchers=True)
    assert response.status_code == 201 and response.data["status"] == "queued"
    job = Job.objects.get(pk=response.data["id"])
    assert JobVoucherChoice.objects.get(job=job).enabled
    actions = AuditEntry.objects.filter(entity_type="scheduler.job", entity_id=str(job.pk)).order_by("id")
    assert list(actions.values_list("action", "to_state")) == [
        ("job.submitted", "submitted"),
        ("job.vouchers_chosen", ""),
        ("job.transition", "queued"),
    ]


def test_bad_paging_is_a_400_not_a_500(buyer):
    response = client_for(buyer).get(JOBS, {"limit": "all"})
    assert response.status_code == 400
    assert response.data["field"] == "limit"
