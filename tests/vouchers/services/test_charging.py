"""Redemption at charge time (核销): vouchers pay their share of a charge, the
buyer the rest; provider and platform shares do not change."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum

from billing import services as billing
from billing.models import Account, Hold, LedgerTransaction
from tests import factories
from tests.vouchers import helpers
from vouchers import services
from vouchers.models import ChargeSubsidy

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def market():
    provider, pools = factories.market(nodes=1)
    return provider, pools[0]


def fen(value) -> Decimal:
    """Sums come back from SQLite as binary floats: compare them to the fen."""
    return Decimal(value).quantize(D("0.01"))


def available(org) -> Decimal:
    return billing.balance(billing.account_code(org.pk, "available"))


def test_a_buyer_with_a_30_percent_voucher_pays_700_of_a_1000_charge(market, operator):
    provider, _pool = market
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator, amount="5000.00")
    lease = helpers.lease_for(buyer)
    hold_before = Hold.objects.get(lease=lease).remaining

    charge = helpers.charge(lease, "1000.00")

    assert charge.voucher_funded == D("300.00")
    assert charge.from_hold + charge.from_available + charge.owed == D("700.00")
    assert charge.gross == charge.commission + charge.provider_share, "shares of the whole charge, unchanged"
    assert helpers.voucher_balance(voucher) == D("4700.00")
    assert hold_before - Hold.objects.get(lease=lease).remaining == charge.from_hold
    payable = billing.balance(billing.account_code(provider.organisation_id, "payable"))
    assert payable == charge.provider_share
    assert billing.balance("platform:commission") == charge.commission
    line = ChargeSubsidy.objects.get(charge=charge)
    assert (line.voucher_id, line.amount, line.ratio, line.hub) == (voucher.pk, D("300.00"), D("0.3000"), "GZ")


def test_every_transaction_still_balances_and_balances_equal_postings(market, operator):
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    lease = helpers.lease_for(buyer)
    helpers.charge(lease, "1000.00")
    helpers.charge(lease, "123.45")
    for tx in LedgerTransaction.objects.all():
        assert fen(tx.postings.aggregate(total=Sum("amount"))["total"]) == 0
    for account in Account.objects.all():
        assert account.balance == fen(account.postings.aggregate(total=Sum("amount"))["total"] or 0)


def test_a_job_that_did_not_choose_vouchers_pays_in_full(market, operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator)
    lease = helpers.lease_for(buyer, use_vouchers=False)
    charge = helpers.charge(lease, "1000.00")
    assert charge.voucher_funded == 0
    assert helpers.voucher_balance(voucher) == voucher.amount
    services.job_voucher_choose(job=lease.job, enabled=True, actor=buyer)
    assert helpers.charge(lease, "1000.00").voucher_funded == D("300.00"), "chosen later, later charges use it"


def test_a_voucher_pays_up_to_its_balance_and_the_buyer_the_rest(market, operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator, amount="100.00")
    lease = helpers.lease_for(buyer)
    first = helpers.charge(lease, "1000.00")
    second = helpers.charge(lease, "1000.00")
    assert (first.voucher_funded, second.voucher_funded) == (D("100.00"), D("0.00"))
    assert helpers.voucher_balance(voucher) == 0


def test_a_retried_charge_redeems_the_voucher_once(market, operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator)
    lease = helpers.lease_for(buyer)
    sample = helpers.usage(lease, "1000.00")
    first = billing.charge_sample(sample_id=sample.pk, commission_rate=helpers.RATE)
    again = billing.charge_sample(sample_id=sample.pk, commission_rate=helpers.RATE)
    assert first.charge.pk == again.charge.pk
    assert ChargeSubsidy.objects.count() == 1
    assert helpers.voucher_balance(voucher) == voucher.amount - D("300.00")


def test_no_voucher_pays_between_related_organisations(market, operator):
    provider, _pool = market
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator)
    services.relation_declare(
        actor=operator, organisation=buyer.organisation, other=provider.organisation, kind="parent_subsidiary"
    )
    lease = helpers.lease_for(buyer)
    assert helpers.charge(lease, "1000.00").voucher_funded == 0
    assert helpers.voucher_balance(voucher) == voucher.amount


def test_no_voucher_pays_for_a_sister_company_under_the_same_parent(market, operator):
    provider, _pool = market
    buyer = factories.buyer()
    parent = factories.buyer().organisation
    helpers.voucher(buyer, helpers.programme(operator), operator)
    for child in (buyer.organisation, provider.organisation):
        services.relation_declare(actor=operator, organisation=parent, other=child, kind="parent_subsidiary")
    lease = helpers.lease_for(buyer)
    assert helpers.charge(lease, "1000.00").voucher_funded == 0


def test_no_voucher_pays_a_provider_off_the_partner_list_or_for_an_ineligible_class(market, operator):
    buyer = factories.buyer()
    elsewhere = factories.provider()
    helpers.voucher(buyer, helpers.programme(operator, providers=[elsewhere.organisation]), operator)
    helpers.voucher(buyer, helpers.programme(operator, eligible_classes=["general"]), operator)
    lease = helpers.lease_for(buyer)
    assert helpers.charge(lease, "1000.00").voucher_funded == 0


def test_the_yearly_cap_binds_across_charges(market, operator):
    buyer = factories.buyer()
    programme = helpers.programme(operator, per_org_yearly_cap="500.00", ratio_rules=[{"ratio": "0.50"}])
    helpers.voucher(buyer, programme, operator, amount="500.00")
    lease = helpers.lease_for(buyer)
    assert helpers.charge(lease, "800.00").voucher_funded == D("400.00")
    assert helpers.charge(lease, "800.00").voucher_funded == D("100.00")
    assert helpers.charge(lease, "800.00").voucher_funded == D("0.00")


def test_the_per_charge_cap_binds(market, operator):
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator, per_charge_cap="50.00"), operator)
    lease = helpers.lease_for(buyer)
    assert helpers.charge(lease, "1000.00").voucher_funded == D("50.00")


def test_a_buyer_short_of_money_owes_only_its_own_share(market, operator):
    buyer = factories.buyer()
    programme = helpers.programme(operator, ratio_rules=[{"ratio": "0.50"}], budget="10000000.00")
    helpers.voucher(buyer, programme, operator, amount="5000000.00")
    lease = helpers.lease_for(buyer, top_up="100.00")
    money = available(buyer.organisation) + billing.balance(billing.account_code(buyer.organisation_id, "held"))
    outcome = billing.charge_sample(sample_id=helpers.usage(lease, "8000000.00").pk, commission_rate=helpers.RATE)
    charge = outcome.charge
    assert charge.voucher_funded == D("4000000.00")
    assert charge.from_hold + charge.from_available == money, "all the buyer's money"
    assert charge.owed == D("4000000.00") - money, "the rest of the buyer's share, not of the charge"
    assert outcome.suspended, "the buyer's unpaid share suspends the lease as before"
    assert available(buyer.organisation) == 0
