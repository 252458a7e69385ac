"""Statements through the API: who sees what, operator review, exports, closing a period."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services
from billing.models import LedgerTransaction, SettlementStatement
from tests import factories
from tests.billing.test_settlement import charged_leases, close_until_now, payable
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def settled():
    """A provider and a buyer with two leases charged and settled: (provider, buyer, provider statement)."""
    provider, buyer, _leases = charged_leases(2)
    close_until_now()
    statement = SettlementStatement.objects.get(organisation=provider.organisation, role="provider")
    return provider, buyer, statement


def test_a_provider_lists_and_reads_its_own_statement_with_lines(settled):
    provider, _buyer, statement = settled
    client = client_for(provider)
    listed = client.get("/api/v1/statements")
    assert listed.status_code == 200
    assert [s["id"] for s in listed.data["results"]] == [statement.pk]
    assert listed.data["results"][0]["number"].startswith("CX-ST-")
    detail = client.get(f"/api/v1/statements/{statement.pk}")
    assert detail.status_code == 200
    assert detail.data["status"] == "pending_review" and detail.data["role"] == "provider"
    assert Decimal(detail.data["gross"]) == statement.gross
    assert sum(Decimal(line["gross"]) for line in detail.data["lines"]) == statement.gross
    assert len(detail.data["lines"]) == 2
    assert all(line["pool_identifier"].startswith("CX-") for line in detail.data["lines"])
    assert detail.data["history"][0]["action"] == "statement.created"


def test_a_provider_never_sees_another_providers_statement(settled):
    _provider, _buyer, statement = settled
    stranger = factories.provider()
    client = client_for(stranger)
    assert client.get("/api/v1/statements").data["count"] == 0
    for suffix in ("", "/export.csv", "/export.pdf"):
        response = client.get(f"/api/v1/statements/{statement.pk}{suffix}")
        assert response.status_code == 404, suffix
        assert response["Content-Type"].startswith("application/json")


def test_a_buyer_sees_its_buyer_statement(settled):
    _provider, buyer, statement = settled
    client = client_for(buyer)
    listed = client.get("/api/v1/statements")
    assert [(s["role"], s["organisation"]) for s in listed.data["results"]] == [("buyer", buyer.organisation.pk)]
    mine = listed.data["results"][0]
    assert mine["status"] == "final"
    assert Decimal(mine["gross"]) == statement.gross
    assert client.get(f"/api/v1/statements/{mine['id']}").data["lines"][0]["job"]
    assert client.get(f"/api/v1/statements/{statement.pk}").status_code == 404


@pytest.mark.parametrize("who", ["provider", "buyer"])
def test_only_operators_review_and_close(settled, who):
    provider, buyer, statement = settled
    client = client_for(provider if who == "provider" else buyer)
    for action, body in (
        ("approve", {}),
        ("dispute", {"reason": "mine", "amount": "1.00"}),
        ("adjust", {"reason": "mine", "amount": "1.00"}),
    ):
        response = client.post(f"/api/v1/statements/{statement.pk}/{action}", body, format="json")
        assert response.status_code == 403, action
        assert response.data["code"] == "permission_denied"
    now = timezone.now()
    period = {"start": now - timedelta(days=3), "end": now - timedelta(days=2)}
    closing = client.post("/api/v1/settlement/close", period, format="json")
    assert closing.status_code == 403
    statement.refresh_from_db()
    assert statement.status == "pending_review" and statement.adjustments == 0


def test_the_operator_approves_and_the_provider_is_paid_once(settled, operator):
    provider, _buyer, statement = settled
    client = client_for(operator)
    approved = client.post(f"/api/v1/statements/{statement.pk}/approve", {"reason": "logs match"}, format="json")
    assert approved.status_code == 200, approved.data
    assert approved.data["status"] == "paid"
    assert [e["action"] for e in approved.data["history"]][-2:] == ["statement.approved", "statement.paid"]
    assert payable(provider.organisation) == 0
    again = client.post(f"/api/v1/statements/{statement.pk}/approve", {}, format="json")
    assert again.status_code == 409
    assert (again.data["code"], again.data["current"]) == ("illegal_transition", "paid")
    assert LedgerTransaction.objects.filter(kind="payout").count() == 1


def test_a_dispute_needs_a_reason_and_an_amount_within_what_is_payable(settled, operator):
    provider, _buyer, statement = settled
    client = client_for(operator)
    url = f"/api/v1/statements/{statement.pk}/dispute"
    missing = client.post(url, {"amount": "1.00"}, format="json")
    assert (missing.status_code, missing.data["field"]) == (400, "reason")
    too_much = client.post(url, {"reason": "x", "amount": str(statement.net + Decimal("0.01"))}, format="json")
    assert (too_much.status_code, too_much.data["field"]) == (400, "amount")
    disputed = client.post(url, {"reason": "a node was down", "amount": "2.50"}, format="json")
    assert disputed.status_code == 200, disputed.data
    assert disputed.data["status"] == "disputed"
    assert Decimal(disputed.data["payable"]) == statement.net - Decimal("2.50")
    assert payable(provider.organisation) == statement.net - Decimal("2.50")


def test_an_adjustment_through_the_api_is_a_ledger_transaction(settled, operator):
    _provider, _buyer, statement = settled
    client = client_for(operator)
    url = f"/api/v1/statements/{statement.pk}/adjust"
    body = {"amount": "-1.25", "reason": "duplicate sample", "reference": "TICKET-9"}
    first = client.post(url, body, format="json")
    retried = client.post(url, body, format="json")
    assert first.status_code == retried.status_code == 200
    assert Decimal(retried.data["adjustments"]) == Decimal("-1.25")
    assert LedgerTransaction.objects.filter(kind="adjustment").count() == 1
    assert client.post(url, {"amount": "1.00"}, format="json").data["field"] == "reason"


def test_operators_filter_statements_by_status_and_role_in_a_bounded_number_of_queries(
    settled, operator, django_assert_max_num_queries
):
    charged_leases(1)
    close_until_now(start=settled[2].period.end)
    client = client_for(operator)
    with django_assert_max_num_queries(3):
        everything = client.get("/api/v1/statements")
    assert everything.data["count"] == 4
    providers = client.get("/api/v1/statements", {"role": "provider", "status": "pending_review"})
    assert providers.data["count"] == 2
    assert {s["role"] for s in providers.data["results"]} == {"provider"}
    assert client.get("/api/v1/statements", {"status": "paid"}).data["count"] == 0


def test_exports_download_as_csv_and_pdf(settled):
    provider, _buyer, statement = settled
    client = client_for(provider)
    response = client.get(f"/api/v1/statements/{statement.pk}/export.csv", HTTP_ACCEPT="text/csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].endswith('.csv"')
    text = response.content.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert dict(row for row in rows if len(row) == 2)["gross"] == str(statement.gross)
    pdf = client.get(f"/api/v1/statements/{statement.pk}/export.pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")


def test_the_operator_closes_a_period_once(operator):
    provider, _buyer, _leases = charged_leases(1)
    client = client_for(operator)
    body = {"start": (timezone.now() - timedelta(hours=1)).isoformat(), "end": timezone.now().isoformat()}
    closed = client.post("/api/v1/settlement/close", body, format="json")
    assert closed.status_code == 200, closed.data
    assert closed.data["status"] == "closed"
    assert sorted(s["role"] for s in closed.data["statements"]) == ["buyer", "provider"]
    again = client.post("/api/v1/settlement/close", body, format="json")
    assert again.data["id"] == closed.data["id"]
    assert SettlementStatement.objects.count() == 2
    future = {"start": timezone.now().isoformat(), "end": (timezone.now() + timedelta(hours=1)).isoformat()}
    refused = client.post("/api/v1/settlement/close", future, format="json")
    assert (refused.status_code, refused.data["field"]) == (400, "end")
    assert services.balance(services.account_code(provider.organisation.pk, "payable")) > 0
