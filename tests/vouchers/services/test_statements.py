"""Redemption statements (兑付): assembled the day after, with evidence;
approved or rejected and clawed back; the programme report reconciles."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from billing import settlement
from billing.models import Charge
from core.errors import IllegalTransition, InvalidInput
from core.models import AuditEntry
from tests import factories
from tests.vouchers import helpers
from vouchers import redemption, selectors, statements
from vouchers.models import ChargeSubsidy, RedemptionStatement

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def redeemed(operator):
    """A buyer whose 30% voucher paid ¥300 of a ¥1,000 charge and ¥30 of a ¥100 one, yesterday."""
    factories.market(nodes=1)
    buyer = factories.buyer()
    programme = helpers.programme(operator, budget="100000.00")
    voucher = helpers.voucher(buyer, programme, operator, amount="5000.00")
    lease = helpers.lease_for(buyer)
    charges = [helpers.charge(lease, "1000.00"), helpers.charge(lease, "100.00")]
    yesterday = timezone.now() - timedelta(days=1)
    Charge.objects.filter(pk__in=[c.pk for c in charges]).update(created_at=yesterday)
    ChargeSubsidy.objects.update(created_at=yesterday)
    return buyer, programme, voucher, lease, charges


def available(org) -> Decimal:
    return billing.balance(billing.account_code(org.pk, "available"))


def test_yesterdays_redemptions_are_on_a_statement_today_with_their_evidence(redeemed):
    _buyer, programme, voucher, lease, charges = redeemed
    made = statements.redemption_close_due()
    assert [s.programme_id for s in made] == [programme.pk]
    statement = made[0]
    assert (statement.lines, statement.amount, statement.status) == (2, D("330.00"), "pending_review")
    assert statement.period_end <= timezone.now() and statement.period_end - statement.period_start == timedelta(days=1)
    assert statements.redemption_close_due() == [], "closing again writes nothing"
    evidence = statements.statement_evidence(statement)
    first = evidence[0]
    assert first["amount"] == D("300.00") and first["voucher"] == voucher.pk
    assert first["buyer_paid"] == D("700.00"), "the buyer's share as the ledger records it"
    assert first["charge"]["gross"] == D("1000.00") and first["charge"]["voucher_funded"] == D("300.00")
    assert first["lease"]["id"] == lease.pk and first["usage"]["ncu_hours"] == charges[0].ncu_hours
    assert first["delivery_confirmed"] is False, "the lease has not completed"
    assert first["invoice_number"] == "", "not invoiced before settlement"


def test_the_provider_is_paid_the_voucher_funded_part_in_the_same_settlement_run(redeemed, operator):
    _buyer, _programme, _voucher, _lease, charges = redeemed
    start, end = settlement.period_containing(Charge.objects.get(pk=charges[0].pk).created_at)
    settlement.settlement_close(start=start, end=end)
    provider_statement = Charge.objects.get(pk=charges[0].pk).provider_statement
    paid = settlement.statement_approve(statement=provider_statement, actor=operator)
    assert settlement.statement_payout(paid).amount == sum(c.provider_share for c in charges)
    statement = statements.redemption_close_due()[0]
    line = statements.statement_evidence(statement)[0]
    assert line["invoice_number"].startswith("CX-ST-")
    assert line["provider_paid"] is True


def test_approval_redeems_and_a_rejected_line_is_rebilled_to_the_buyer(redeemed, operator):
    buyer, programme, _voucher, _lease, _charges = redeemed
    statement = statements.redemption_close_due()[0]
    big, small = ChargeSubsidy.objects.order_by("id")
    cash = available(buyer.organisation)
    budget = selectors.budget_available(programme.pk)
    with pytest.raises(InvalidInput):
        statements.redemption_approve(statement=statement, actor=operator, rejected={small.pk: ""})
    approved = statements.redemption_approve(
        statement=statement, actor=operator, rejected={small.pk: "usage not delivered"}, reason="checked"
    )
    assert (approved.status, approved.approved_amount, approved.clawed_back_amount) == (
        "approved",
        D("300.00"),
        D("30.00"),
    )
    big.refresh_from_db()
    small.refresh_from_db()
    assert (big.outcome, small.outcome) == ("approved", "clawed_back")
    assert available(buyer.organisation) == cash - D("30.00"), "re-billed to the buyer"
    assert selectors.budget_available(programme.pk) == budget + D("30.00"), "back in the programme"
    assert small.clawback_transaction.key == f"voucher_clawback:subsidy:{small.pk}"
    assert AuditEntry.objects.filter(action="voucher_redemption.clawed_back", entity_id=str(small.pk)).exists()
    assert AuditEntry.objects.filter(action="redemption_statement.approved").exists()
    with pytest.raises(IllegalTransition):
        statements.redemption_approve(statement=statement, actor=operator)


def test_a_buyer_without_cash_owes_the_clawback(redeemed, operator):
    buyer, _programme, _voucher, lease, _charges = redeemed
    billing.hold_close(lease=lease)
    spend = available(buyer.organisation) - D("10.00")
    from billing.domain import ledger

    billing.post(
        ledger.payout(
            provider_payable=billing.account_code(buyer.organisation_id, "available"),
            clearing="platform:clearing",
            amount=spend,
            reference="withdrawal",
        )
    )
    statement = statements.redemption_close_due()[0]
    statements.redemption_reject(statement=statement, actor=operator, reason="programme audit failed")
    assert available(buyer.organisation) == 0
    assert billing.balance(billing.account_code(buyer.organisation_id, "debt")) == D("-320.00")


def test_a_write_off_programme_takes_a_rejection_on_the_platform(operator):
    factories.market(nodes=1)
    buyer = factories.buyer()
    programme = helpers.programme(operator, clawback_rule="write_off")
    helpers.voucher(buyer, programme, operator)
    helpers.charge(helpers.lease_for(buyer), "1000.00")
    cash = available(buyer.organisation)
    statement = statements.redemption_close(programme=programme, end=timezone.now() + timedelta(seconds=1))
    rejected = statements.redemption_reject(statement=statement, actor=operator, reason="provider not accredited")
    assert rejected.status == "rejected" and rejected.clawed_back_amount == D("300.00")
    assert available(buyer.organisation) == cash, "the buyer is not charged"
    assert billing.balance("platform:adjustments") == D("-300.00")


def test_redemptions_after_a_reviewed_statement_wait_for_the_next_one(redeemed, operator):
    _buyer, programme, _voucher, lease, _charges = redeemed
    statement = statements.redemption_close_due()[0]
    statements.redemption_approve(statement=statement, actor=operator)
    late = helpers.charge(lease, "10.00")
    ChargeSubsidy.objects.filter(charge=late).update(created_at=statement.period_start + timedelta(hours=1))
    assert statements.redemption_close(programme=programme, end=statement.period_end) is None
    later = statements.redemption_close(programme=programme, end=statement.period_end + timedelta(days=1))
    assert later.pk != statement.pk and later.lines == 1


def test_the_dashboard_shows_how_long_statements_have_waited(redeemed):
    _buyer, programme, *_ = redeemed
    statement = statements.redemption_close_due()[0]
    now = statement.period_end + timedelta(hours=30)
    row = next(r for r in selectors.dashboard(now=now) if r["programme"] == programme.pk)
    assert row["statements_pending"] == 1 and row["oldest_statement_age_hours"] == D("30.0")
    assert row["statements_pending_amount"] == D("330.00")


def test_the_programme_report_reconciles_and_exports_as_csv(redeemed, operator):
    _buyer, programme, _voucher, _lease, charges = redeemed
    statement = statements.redemption_close_due()[0]
    small = ChargeSubsidy.objects.order_by("id").last()
    statements.redemption_approve(statement=statement, actor=operator, rejected={small.pk: "duplicate"})
    redemption.charge_refund(charge=charges[0], amount=D("100.00"), reason="slow node", reference="X", actor=operator)
    other = factories.buyer(category="university")
    helpers.voucher(other, programme, operator, amount="1000.00")
    report = selectors.programme_report(programme)
    assert report["deposited"] == D("100000.00")
    assert report["committed"] == D("6000.00") and report["vouchers_issued"] == 2
    assert report["redeemed"] == D("330.00") and report["refunded"] == D("30.00")
    assert report["clawed_back"] == D("30.00") and report["net_spent"] == D("270.00")
    assert report["beneficiaries"] == 1
    assert report["beneficiaries_by_hub"] == [{"key": "GZ", "organisations": 1, "amount": D("300.00")}]
    assert (
        report["deposited"] + report["clawed_back"]
        == report["budget_available"]
        + report["outstanding"]
        + report["redeemed"]
        - report["refunded"]
        + report["forfeited"]
    )
    rows = list(csv.reader(io.StringIO(statements.programme_report_csv(report))))
    assert rows[0] == ["section", "key", "organisations", "amount"]
    assert ["figure", "net_spent", "", "270.00"] in rows
    assert ["by_category", "enterprise", "1", "300.00"] in rows
    assert RedemptionStatement.objects.count() == 1
