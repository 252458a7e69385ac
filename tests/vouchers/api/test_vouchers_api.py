"""The voucher API as its three users meet it: the public and buyers find and
apply for programmes, operators review and run them, buyers spend vouchers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from billing.models import Charge
from tests import factories
from tests.conftest import client_for
from tests.vouchers import helpers
from vouchers import statements
from vouchers.models import ChargeSubsidy

pytestmark = pytest.mark.django_db
D = Decimal


def programme_body(**overrides) -> dict:
    now = timezone.now()
    body = {
        "name": "Hangzhou compute vouchers",
        "authority": "Hangzhou Bureau of Economy and Information Technology",
        "ratio_rules": [{"domestic": True, "ratio": "0.30"}, {"ratio": "0.20"}],
        "per_org_yearly_cap": "8000000.00",
        "eligible_categories": ["enterprise", "university"],
        "sme_only": True,
        "registration_cities": ["hangzhou"],
        "application_opens": (now - timedelta(days=1)).isoformat(),
        "application_closes": (now + timedelta(days=300)).isoformat(),
        "validity_days": 365,
        "budget": "250000000.00",
        "funding_reference": "HZ-2026-01",
    }
    body.update(overrides)
    return body


def assert_error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"code", "detail", "field"}
    if field is not None:
        assert body["field"] == field
    return body


# --- programmes --------------------------------------------------------------------------------------------------


def test_an_operator_creates_a_programme_anyone_reads_it_in_plain_language(api, operator):
    created = client_for(operator).post("/api/v1/voucher-programmes", programme_body())
    assert created.status_code == 201, created.content
    assert created.data["budget_available"] == "250000000.00"
    listed = api.get("/api/v1/voucher-programmes")
    assert listed.status_code == 200 and listed.data["count"] == 1
    eligibility = listed.data["results"][0]["eligibility"]
    assert eligibility[0] == "Pays 30% of charges on domestic-chip compute; 20% of charges on other compute."
    assert "The applicant must be registered in hangzhou." in eligibility
    assert api.get(f"/api/v1/voucher-programmes/{created.data['id']}").status_code == 200


def test_programmes_outside_their_window_are_shown_only_to_operators(api, operator):
    now = timezone.now()
    later = helpers.programme(
        operator, application_opens=now + timedelta(days=5), application_closes=now + timedelta(days=9)
    )
    assert api.get("/api/v1/voucher-programmes").data["count"] == 0
    assert_error(api.get(f"/api/v1/voucher-programmes/{later.pk}"), 404)
    assert client_for(operator).get("/api/v1/voucher-programmes").data["count"] == 1
    early = client_for(factories.buyer()).post(
        "/api/v1/voucher-applications", {"programme": later.pk, "requested_amount": "10.00", "intended_use": "x"}
    )
    assert early.data["status"] == "rejected" and "opens for applications" in early.data["reason"]


def test_only_operators_create_and_bad_rules_name_their_field(api, operator):
    assert_error(client_for(factories.buyer()).post("/api/v1/voucher-programmes", programme_body()), 403)
    assert_error(api.post("/api/v1/voucher-programmes", programme_body()), 401)
    bad = client_for(operator).post("/api/v1/voucher-programmes", programme_body(ratio_rules=[{"ratio": "1.5"}]))
    assert assert_error(bad, 400)["field"].startswith("ratio_rules")
    closes = client_for(operator).post(
        "/api/v1/voucher-programmes",
        programme_body(application_closes=(timezone.now() - timedelta(days=2)).isoformat()),
    )
    assert_error(closes, 400, "application_closes")
    classes = client_for(operator).post("/api/v1/voucher-programmes", programme_body(eligible_classes=["quantum"]))
    assert_error(classes, 400, "eligible_classes")


def test_the_operator_funds_closes_and_reports_on_a_programme(operator):
    programme = helpers.programme(operator, budget="1000.00")
    client = client_for(operator)
    funded = client.post(f"/api/v1/voucher-programmes/{programme.pk}/fund", {"amount": "500.00", "reference": "Q2"})
    assert funded.status_code == 200 and funded.data["budget_available"] == "1500.00"
    report = client.get(f"/api/v1/voucher-programmes/{programme.pk}/report")
    assert report.data["deposited"] == "1500.00"
    csv = client.get(f"/api/v1/voucher-programmes/{programme.pk}/report.csv")
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    assert b"figure,deposited,,1500.00" in csv.content
    closed = client.post(f"/api/v1/voucher-programmes/{programme.pk}/close", {"reason": "year over"})
    assert closed.data["status"] == "closed"
    assert_error(client.post(f"/api/v1/voucher-programmes/{programme.pk}/close", {}), 409)
    assert_error(client_for(factories.buyer()).get(f"/api/v1/voucher-programmes/{programme.pk}/report"), 403)


# --- eligibility and applications ---------------------------------------------------------------------------------


def test_a_buyer_sees_how_many_programmes_it_qualifies_for_and_why_not_the_others(operator):
    helpers.programme(operator, per_org_yearly_cap="80000.00")
    helpers.programme(operator, registration_cities=["chengdu"])
    response = client_for(factories.buyer(city="hangzhou")).get("/api/v1/voucher-eligibility")
    assert response.status_code == 200
    assert response.data["summary"] == "You qualify for 1 programme, up to ¥80,000."
    refused = [p for p in response.data["programmes"] if not p["qualifies"]]
    assert "registered in chengdu" in refused[0]["reasons"][0]
    assert_error(client_for(operator).get("/api/v1/voucher-eligibility"), 403)


def test_apply_review_and_spend_through_the_api(operator):
    programme = helpers.programme(operator, per_org_yearly_cap="50000.00")
    buyer = factories.buyer()
    applied = client_for(buyer).post(
        "/api/v1/voucher-applications",
        {"programme": programme.pk, "requested_amount": "60000.00", "intended_use": "train a model"},
    )
    assert applied.status_code == 201 and applied.data["status"] == "pending_review"
    cap = next(c for c in applied.data["checks"] if c["name"] == "yearly_cap")
    assert cap == {"name": "yearly_cap", "passed": False, "hard": False, "detail": cap["detail"]}
    approve = client_for(operator).post(
        f"/api/v1/voucher-applications/{applied.data['id']}/approve", {"amount": "50000.00", "reason": "within cap"}
    )
    assert approve.status_code == 201, approve.content
    assert approve.data["balance"] == "50000.00" and approve.data["amount"] == "50000.00"
    again = client_for(operator).post(f"/api/v1/voucher-applications/{applied.data['id']}/approve", {})
    assert assert_error(again, 409)["current"] == "approved"
    mine = client_for(buyer).get("/api/v1/vouchers")
    assert mine.data["count"] == 1 and mine.data["results"][0]["expires_at"]
    assert client_for(factories.buyer()).get("/api/v1/vouchers").data["count"] == 0
    detail = client_for(buyer).get(f"/api/v1/voucher-applications/{applied.data['id']}")
    assert detail.data["voucher"] == approve.data["id"] and detail.data["granted_amount"] == "50000.00"


def test_a_hard_failure_comes_back_rejected_with_the_reason(operator):
    programme = helpers.programme(operator, registration_cities=["shenzhen"])
    response = client_for(factories.buyer(city="beijing")).post(
        "/api/v1/voucher-applications",
        {"programme": programme.pk, "requested_amount": "100.00", "intended_use": "rendering"},
    )
    assert response.status_code == 201
    assert response.data["status"] == "rejected" and response.data["automatic"] is True
    assert "registered in shenzhen" in response.data["reason"]


def test_applications_are_scoped_to_the_applicant(operator):
    programme = helpers.programme(operator)
    buyer, other = factories.buyer(), factories.buyer()
    applied = client_for(buyer).post(
        "/api/v1/voucher-applications", {"programme": programme.pk, "requested_amount": "10.00", "intended_use": "x"}
    )
    assert client_for(other).get("/api/v1/voucher-applications").data["count"] == 0
    assert_error(client_for(other).get(f"/api/v1/voucher-applications/{applied.data['id']}"), 404)
    assert client_for(operator).get("/api/v1/voucher-applications?status=pending_review").data["count"] == 1
    assert_error(client_for(other).post(f"/api/v1/voucher-applications/{applied.data['id']}/withdraw"), 404)
    withdrawn = client_for(buyer).post(f"/api/v1/voucher-applications/{applied.data['id']}/withdraw")
    assert withdrawn.data["status"] == "withdrawn"


def test_rejection_needs_a_reason_and_only_operators_review(operator):
    programme = helpers.programme(operator)
    buyer = factories.buyer()
    applied = client_for(buyer).post(
        "/api/v1/voucher-applications", {"programme": programme.pk, "requested_amount": "10.00", "intended_use": "x"}
    )
    url = f"/api/v1/voucher-applications/{applied.data['id']}"
    assert_error(client_for(operator).post(f"{url}/reject", {}), 400, "reason")
    assert_error(client_for(buyer).post(f"{url}/approve", {}), 403)
    rejected = client_for(operator).post(f"{url}/reject", {"reason": "no plan attached"})
    assert rejected.data["status"] == "rejected" and rejected.data["reason"] == "no plan attached"


def test_supporting_files_upload_and_download_for_applicant_and_operator_only(operator):
    programme = helpers.programme(operator)
    buyer = factories.buyer()
    applied = client_for(buyer).post(
        "/api/v1/voucher-applications", {"programme": programme.pk, "requested_amount": "10.00", "intended_use": "x"}
    )
    url = f"/api/v1/voucher-applications/{applied.data['id']}/documents"
    upload = SimpleUploadedFile("plan.pdf", b"%PDF-1.7 business plan", content_type="application/pdf")
    posted = client_for(buyer).post(url, {"file": upload}, format="multipart")
    assert posted.status_code == 201, posted.content
    assert posted.data["size"] == 22
    download = client_for(operator).get(f"/api/v1/voucher-documents/{posted.data['id']}")
    assert download.status_code == 200 and download.content == b"%PDF-1.7 business plan"
    assert_error(client_for(factories.buyer()).get(f"/api/v1/voucher-documents/{posted.data['id']}"), 404)
    assert len(client_for(operator).get(url).data) == 1


# --- spending ----------------------------------------------------------------------------------------------------


@pytest.fixture
def holder(operator):
    factories.market(nodes=1)
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator, amount="5000.00")
    return buyer, voucher


def test_a_quote_shows_the_subsidy_before_submission(holder):
    buyer, voucher = holder
    response = client_for(buyer).post("/api/v1/voucher-quotes", factories.job_values())
    assert response.status_code == 200, response.content
    option = response.data["options"][0]
    subtotal, subsidy = D(option["subtotal"]), D(option["voucher_subsidy"])
    assert subsidy == (subtotal * D("0.30")).quantize(D("0.01"), rounding="ROUND_DOWN") > 0
    assert D(option["buyer_pays"]) == subtotal - subsidy
    assert option["vouchers"][0]["voucher"] == voucher.pk
    nothing = client_for(factories.buyer()).post("/api/v1/voucher-quotes", factories.job_values())
    assert nothing.data["options"][0]["voucher_subsidy"] == "0.00"


def test_a_buyer_chooses_vouchers_for_a_job(holder):
    buyer, _voucher = holder
    lease = helpers.lease_for(buyer, use_vouchers=False)
    url = f"/api/v1/jobs/{lease.job_id}/vouchers"
    assert client_for(buyer).get(url).data == {"job": lease.job_id, "use_vouchers": False}
    assert client_for(buyer).put(url, {"use_vouchers": True}).data["use_vouchers"] is True
    assert_error(client_for(factories.buyer()).put(url, {"use_vouchers": True}), 404)
    assert helpers.charge(lease, "1000.00").voucher_funded == D("300.00")


# --- redemption statements ------------------------------------------------------------------------------------------


def test_operators_review_redemption_statements_with_their_evidence(holder, operator):
    buyer, _voucher = holder
    lease = helpers.lease_for(buyer)
    helpers.charge(lease, "1000.00")
    helpers.charge(lease, "100.00")
    programme = ChargeSubsidy.objects.first().programme
    statement = statements.redemption_close(programme=programme, end=timezone.now() + timedelta(seconds=1))
    client = client_for(operator)
    listed = client.get("/api/v1/redemption-statements?status=pending_review")
    assert listed.data["count"] == 1 and listed.data["results"][0]["amount"] == "330.00"
    detail = client.get(f"/api/v1/redemption-statements/{statement.pk}")
    evidence = detail.data["evidence"]
    assert [line["amount"] for line in evidence] == ["300.00", "30.00"]
    assert evidence[0]["buyer_paid"] == "700.00" and evidence[0]["delivery_confirmed"] is False
    dashboard = client.get("/api/v1/voucher-dashboard").data
    assert dashboard[0]["statements_pending"] == 1
    assert_error(client_for(buyer).get("/api/v1/redemption-statements"), 403)
    bad = client.post(
        f"/api/v1/redemption-statements/{statement.pk}/approve", {"rejected": [{"subsidy": 999999, "reason": "x"}]}
    )
    assert_error(bad, 400, "rejected")
    small = evidence[1]["subsidy"]
    approved = client.post(
        f"/api/v1/redemption-statements/{statement.pk}/approve",
        {"rejected": [{"subsidy": small, "reason": "metered twice"}], "reason": "checked"},
    )
    assert approved.status_code == 200, approved.content
    assert approved.data["approved_amount"] == "300.00" and approved.data["clawed_back_amount"] == "30.00"
    assert_error(client.post(f"/api/v1/redemption-statements/{statement.pk}/reject", {"reason": "late"}), 409)


# --- relations and refunds ------------------------------------------------------------------------------------------


def test_members_declare_their_own_relations_and_operators_remove_them(operator):
    buyer, provider = factories.buyer(), factories.provider()
    body = {"organisation": buyer.organisation_id, "other": provider.organisation_id, "relation_kind": "common_control"}
    declared = client_for(buyer).post("/api/v1/organisation-relations", body)
    assert declared.status_code == 201 and declared.data["relation_kind"] == "common_control"
    stranger = factories.buyer()
    assert_error(client_for(stranger).post("/api/v1/organisation-relations", body), 403)
    assert client_for(stranger).get("/api/v1/organisation-relations").data["count"] == 0
    assert client_for(provider).get("/api/v1/organisation-relations").data["count"] == 1
    url = f"/api/v1/organisation-relations/{declared.data['id']}/remove"
    assert_error(client_for(buyer).post(url, {"reason": "sold"}), 403)
    assert client_for(operator).post(url, {"reason": "shares sold"}).status_code == 204


def test_operators_refund_a_voucher_funded_charge_to_the_voucher(holder, operator):
    buyer, voucher = holder
    charge = helpers.charge(helpers.lease_for(buyer), "1000.00")
    body = {"charge": charge.pk, "amount": "1000.00", "reason": "job never started", "reference": "C-1"}
    assert_error(client_for(buyer).post("/api/v1/charge-refunds", body), 403)
    refunded = client_for(operator).post("/api/v1/charge-refunds", body)
    assert refunded.status_code == 201, refunded.content
    assert (refunded.data["to_vouchers"], refunded.data["to_buyer"]) == ("300.00", "700.00")
    assert helpers.voucher_balance(voucher) == D("5000.00")
    assert_error(client_for(operator).post("/api/v1/charge-refunds", {**body, "charge": 0}), 400, "charge")
    assert Charge.objects.get(pk=charge.pk).voucher_funded == D("300.00")


# --- bounded queries --------------------------------------------------------------------------------------------------


def test_lists_cost_the_same_queries_however_long(operator, django_assert_max_num_queries):
    buyer = factories.buyer()
    for _ in range(3):
        helpers.voucher(buyer, helpers.programme(operator), operator, amount="10.00")
    client = client_for(buyer)
    with django_assert_max_num_queries(12):
        assert client.get("/api/v1/vouchers").data["count"] == 3
    with django_assert_max_num_queries(12):
        assert client.get("/api/v1/voucher-applications").data["count"] == 3
    with django_assert_max_num_queries(14):
        assert client_for(operator).get("/api/v1/voucher-programmes").data["count"] == 3
