"""The operator console: review queues whose bulk actions ask for a reason
and call the services (audited); records nobody can edit or delete."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing import payments, settlement
from billing import services as billing
from billing.models import Account, LedgerTransaction, SettlementStatement
from core.models import AuditEntry
from marketplace.models import Organisation
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories
from tests.vouchers import helpers as voucher_helpers
from vouchers import services as voucher_services

pytestmark = pytest.mark.django_db


def console(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def pending_statement():
    """A provider statement awaiting approval, from two charged usage samples."""
    provider, _pools = factories.market(nodes=1)
    buyer = factories.buyer()
    billing.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10000.00"), reference="R", actor=buyer)
    job = factories.submit(buyer)
    scheduler_services.cycle_run()
    lease = Lease.objects.get(job=job)
    billing.hold_for_lease(lease=lease)
    for sequence in (1, 2):
        start = lease.start + timedelta(minutes=10 * sequence)
        sample, _ = billing.usage_record(
            lease=lease, sequence=sequence, start=start, end=start + timedelta(minutes=10), ncu_hours=lease.ncu / 6
        )
        billing.charge_sample(sample_id=sample.pk, commission_rate=Decimal("0.08"))
    settlement.settlement_close(start=timezone.now() - timedelta(hours=1), end=timezone.now())
    return SettlementStatement.objects.get(organisation=provider.organisation, role="provider")


def bulk(client: Client, url: str, action: str, ids: list[int], **fields) -> object:
    data = {"action": action, "_selected_action": [str(i) for i in ids], "select_across": "0", "confirm": "yes"}
    data.update(fields)
    return client.post(url, data, follow=True)


STATEMENTS = "/admin/billing/settlementstatement/"
PAYMENTS = "/admin/billing/paymentnotice/"


def test_the_queue_lists_statements_awaiting_approval(operator, pending_statement):
    response = console(operator).get(f"{STATEMENTS}?role__exact=provider&status__exact=pending_review")
    assert response.status_code == 200
    assert settlement.statement_number(pending_statement) in response.content.decode()


def test_a_bulk_action_first_asks_for_the_reason(operator, pending_statement):
    page = console(operator).post(
        STATEMENTS, {"action": "dispute_selected", "_selected_action": [pending_statement.pk], "index": "0"}
    )
    assert page.status_code == 200
    assert 'name="reason"' in page.content.decode()
    pending_statement.refresh_from_db()
    assert pending_statement.status == "pending_review", "nothing happens before the operator confirms"


def test_approving_selected_statements_pays_them_out_and_records_who_and_why(operator, pending_statement):
    response = bulk(console(operator), STATEMENTS, "approve_selected", [pending_statement.pk], reason="logs match")
    assert response.status_code == 200
    pending_statement.refresh_from_db()
    assert pending_statement.status == "paid"
    entry = AuditEntry.objects.get(entity_id=str(pending_statement.pk), action="statement.approved")
    assert (entry.actor_label, entry.reason) == (operator.username, "logs match")


def test_a_dispute_without_a_reason_is_refused_and_changes_nothing(operator, pending_statement):
    response = bulk(console(operator), STATEMENTS, "dispute_selected", [pending_statement.pk], reason=" ")
    assert "Say why" in response.content.decode()
    pending_statement.refresh_from_db()
    assert pending_statement.status == "pending_review"

    bulk(
        console(operator), STATEMENTS, "dispute_selected", [pending_statement.pk], reason="node stalled", amount="0.01"
    )
    pending_statement.refresh_from_db()
    assert (pending_statement.status, pending_statement.disputed_amount) == ("disputed", Decimal("0.01"))


def test_the_statement_page_shows_lines_usage_history_and_records_a_decision(operator, pending_statement):
    client = console(operator)
    html = client.get(f"{STATEMENTS}{pending_statement.pk}/change/").content.decode()
    line = pending_statement.lines.get()
    assert f"/admin/scheduler/lease/{line.lease_id}/change/" in html
    assert html.count("<td>platform</td>") == 2, "both usage samples"
    assert "statement.created" in html
    assert f"{pending_statement.pk}/export.csv" in html

    client.post(f"{STATEMENTS}{pending_statement.pk}/review/", {"decision": "adjust", "amount": "5.00", "reason": ""})
    pending_statement.refresh_from_db()
    assert pending_statement.adjustments == 0, "an adjustment needs a reason"
    client.post(
        f"{STATEMENTS}{pending_statement.pk}/review/", {"decision": "adjust", "amount": "5.00", "reason": "SLA credit"}
    )
    pending_statement.refresh_from_db()
    assert pending_statement.adjustments == Decimal("5.00")
    assert "SLA credit" in client.get(f"{STATEMENTS}{pending_statement.pk}/change/").content.decode()


def test_the_statement_exports_download_from_the_console(operator, pending_statement):
    pytest.importorskip("billing.exports")
    response = console(operator).get(f"{STATEMENTS}{pending_statement.pk}/export.csv")
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]


def test_providers_are_verified_and_rejected_with_reasons(operator):
    waiting = [factories.provider(verified=False).organisation for _ in range(2)]
    url = "/admin/marketplace/organisation/"
    client = console(operator)
    bulk(client, url, "reject_selected", [waiting[0].pk], reason="")
    assert Organisation.objects.get(pk=waiting[0].pk).verification_status == "pending"
    bulk(client, url, "reject_selected", [waiting[0].pk], reason="credit code belongs to another company")
    bulk(client, url, "verify_selected", [waiting[1].pk], reason="")
    statuses = dict(
        Organisation.objects.filter(pk__in=[o.pk for o in waiting]).values_list("pk", "verification_status")
    )
    assert statuses == {waiting[0].pk: "rejected", waiting[1].pk: "verified"}
    assert AuditEntry.objects.filter(
        entity_id=str(waiting[0].pk), to_state="rejected", reason="credit code belongs to another company"
    ).exists()


def test_voucher_applications_are_rejected_only_with_a_reason(operator):
    buyer = factories.buyer()
    programme = voucher_helpers.programme(operator)
    application = voucher_services.application_submit(
        user=buyer, programme=programme, requested_amount=Decimal("1000.00"), intended_use="training", flags=()
    )
    url = "/admin/vouchers/voucherapplication/"
    client = console(operator)
    bulk(client, url, "reject_selected", [application.pk], reason="")
    application.refresh_from_db()
    assert application.status == "pending_review"
    bulk(client, url, "reject_selected", [application.pk], reason="outside the programme's city")
    application.refresh_from_db()
    assert (application.status, application.reason) == ("rejected", "outside the programme's city")


def test_nobody_edits_or_deletes_a_posted_transaction_or_an_audit_entry(operator, buyer):
    billing.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10.00"), reference="R9", actor=buyer)
    tx = LedgerTransaction.objects.latest("id")
    entry = AuditEntry.objects.latest("id")
    client = console(operator)
    assert client.get(f"/admin/billing/ledgertransaction/{tx.pk}/change/").status_code == 200, "it can be read"
    for url in (f"/admin/billing/ledgertransaction/{tx.pk}/", f"/admin/core/auditentry/{entry.pk}/"):
        assert client.post(f"{url}change/", {"memo": "edited", "reason": "edited"}).status_code == 403
        assert client.post(f"{url}delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/billing/ledgertransaction/add/").status_code == 403
    tx.refresh_from_db()
    entry.refresh_from_db()
    assert tx.memo != "edited"
    assert entry.reason != "edited"


def test_only_operators_open_the_console(buyer):
    buyer.is_staff = True  # even a staff flag does not make a buyer an operator
    buyer.save(update_fields=["is_staff"])
    client = console(buyer)
    assert client.get("/admin/billing/settlementstatement/").status_code == 403
    assert b"Settlement statements" not in client.get("/admin/").content


def test_payments_found_on_the_bank_statement_are_confirmed_from_the_console_and_credited_once(operator):
    buyer = factories.buyer(funds=Decimal(0))
    found, _ = payments.payment_notice_submit(
        organisation=buyer.organisation, amount=Decimal("300.00"), reference="CCB-77", user=buyer
    )
    missing, _ = payments.payment_notice_submit(
        organisation=buyer.organisation, amount=Decimal("9000.00"), reference="CCB-78", user=buyer
    )
    client = console(operator)
    assert "CCB-77" in client.get(PAYMENTS + "?status__exact=pending").content.decode()

    bulk(client, PAYMENTS, "confirm_selected", [found.pk], reason="statement of 23 Nov")
    bulk(client, PAYMENTS, "confirm_selected", [found.pk], reason="clicked twice")
    bulk(client, PAYMENTS, "reject_selected", [missing.pk], reason="no such transfer")

    found.refresh_from_db()
    missing.refresh_from_db()
    assert (found.status, missing.status) == ("confirmed", "rejected")
    assert Account.objects.get(organisation=buyer.organisation, kind="available").balance == Decimal("300.00")
    entry = AuditEntry.objects.get(entity_id=str(found.pk), action="payment_notice.confirmed")
    assert (entry.actor_label, entry.reason) == (operator.username, "statement of 23 Nov")
