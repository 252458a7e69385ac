"""Expiry returns or forfeits balances; refunds return a voucher's share to
the voucher (or programme), never to the buyer's cash."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from core.errors import Conflict, Forbidden, InvalidInput
from core.models import AuditEntry
from tests import factories
from tests.vouchers import helpers
from vouchers import redemption, selectors, services
from vouchers.models import ChargeSubsidy

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def market():
    return factories.market(nodes=1)


def available(org) -> Decimal:
    return billing.balance(billing.account_code(org.pk, "available"))


def test_an_expired_balance_returns_to_the_programme_budget(operator):
    programme = helpers.programme(operator, budget="10000.00", validity_days=10)
    voucher = helpers.voucher(factories.buyer(), programme, operator, amount="4000.00")
    assert services.vouchers_expire_due() == [], "not due yet"
    later = timezone.now() + timedelta(days=10, seconds=1)
    assert services.vouchers_expire_due(now=later) == [voucher.pk]
    voucher.refresh_from_db()
    assert voucher.status == "expired" and helpers.voucher_balance(voucher) == 0
    assert selectors.budget_available(programme.pk) == D("10000.00")
    entry = AuditEntry.objects.get(action="voucher.expired")
    assert entry.data["balance"] == "4000.00" and entry.data["returned_to_budget"] is True
    assert services.vouchers_expire_due(now=later) == [], "expiring twice moves nothing"


def test_an_expired_balance_is_forfeited_where_the_programme_says_so(operator):
    programme = helpers.programme(operator, budget="10000.00", validity_days=1, return_on_expiry=False)
    voucher = helpers.voucher(factories.buyer(), programme, operator, amount="4000.00")
    services.vouchers_expire_due(now=timezone.now() + timedelta(days=2))
    assert selectors.budget_available(programme.pk) == D("6000.00")
    assert billing.balance(f"programme:{programme.pk}:lapsed") == D("4000.00")
    assert selectors.programme_report(programme)["forfeited"] == D("4000.00")
    voucher.refresh_from_db()
    assert voucher.status == "expired"


def test_an_expired_voucher_pays_no_more_charges(market, operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator, validity_days=1), operator)
    lease = helpers.lease_for(buyer)
    services.voucher_expire(voucher_id=voucher.pk, now=timezone.now() + timedelta(days=1, seconds=1))
    assert helpers.charge(lease, "1000.00").voucher_funded == 0


def test_a_refund_returns_the_voucher_share_to_the_voucher_and_only_the_buyer_share_to_the_buyer(market, operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator, amount="5000.00")
    lease = helpers.lease_for(buyer)
    charge = helpers.charge(lease, "1000.00")
    cash_before = available(buyer.organisation)
    refund = redemption.charge_refund(
        charge=charge, amount=D("1000.00"), reason="node failed, nothing useful ran", reference="C-1", actor=operator
    )
    assert (refund.to_vouchers, refund.to_buyer) == (D("300.00"), D("700.00"))
    assert helpers.voucher_balance(voucher) == D("5000.00"), "the voucher gets its ¥300 back"
    assert available(buyer.organisation) - cash_before == D("700.00"), "the buyer gets only what it paid"
    assert billing.balance(billing.account_code(charge.provider_id, "payable")) == 0
    assert billing.balance("platform:commission") == 0
    assert ChargeSubsidy.objects.get(charge=charge).refunded == D("300.00")
    again = redemption.charge_refund(
        charge=charge, amount=D("1000.00"), reason="retry", reference="C-1", actor=operator
    )
    assert again.pk == refund.pk, "a retry with the same reference refunds once"
    with pytest.raises(InvalidInput):
        redemption.charge_refund(charge=charge, amount=D("0.01"), reason="more", reference="C-2", actor=operator)


def test_a_partial_correction_splits_in_proportion(market, operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator, amount="5000.00")
    lease = helpers.lease_for(buyer)
    charge = helpers.charge(lease, "1000.00")
    refund = redemption.charge_refund(
        charge=charge, amount=D("100.01"), reason="metered twice", reference="C-9", actor=operator
    )
    assert refund.to_vouchers + refund.to_buyer == D("100.01")
    assert refund.to_vouchers == D("30.00") and refund.to_buyer == D("70.01")
    assert refund.provider_share + refund.commission == D("100.01")
    assert helpers.voucher_balance(voucher) == D("4730.00")


def test_a_refund_after_expiry_returns_the_voucher_share_to_the_programme(market, operator):
    buyer = factories.buyer()
    programme = helpers.programme(operator, budget="10000.00", validity_days=1)
    voucher = helpers.voucher(buyer, programme, operator, amount="5000.00")
    charge = helpers.charge(helpers.lease_for(buyer), "1000.00")
    services.voucher_expire(voucher_id=voucher.pk, now=timezone.now() + timedelta(days=2))
    assert selectors.budget_available(programme.pk) == D("9700.00")
    redemption.charge_refund(charge=charge, amount=D("1000.00"), reason="refund", reference="R", actor=operator)
    assert selectors.budget_available(programme.pk) == D("10000.00")
    assert helpers.voucher_balance(voucher) == 0


def test_a_refund_after_the_provider_was_paid_out_is_refused_with_what_to_do(market, operator):
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    charge = helpers.charge(helpers.lease_for(buyer), "1000.00")
    from billing.domain import ledger

    billing.post(
        ledger.payout(
            provider_payable=billing.account_code(charge.provider_id, "payable"),
            clearing="platform:clearing",
            amount=charge.provider_share,
            reference="statement:test",
        )
    )
    with pytest.raises(Conflict) as error:
        redemption.charge_refund(charge=charge, amount=D("1000.00"), reason="late", reference="R", actor=operator)
    assert "adjustment" in error.value.detail


def test_only_operators_refund(market, operator):
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    charge = helpers.charge(helpers.lease_for(buyer), "1000.00")
    with pytest.raises(Forbidden):
        redemption.charge_refund(charge=charge, amount=D("1.00"), reason="mine", reference="R", actor=buyer)
