"""Many charges at once against one voucher, on PostgreSQL: it is never
overdrawn by one fen, and every charge is funded exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum

from billing import charging, checks
from billing import services as billing
from billing.models import Account, Charge
from scheduler.management.commands.check_capacity import audit_capacity
from scheduler.models import Lease
from tests import factories
from tests.concurrency import run_together
from tests.vouchers import helpers
from vouchers.models import ChargeSubsidy

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CHARGES = 100
THREADS = 25  # each on its own connection: PostgreSQL allows 100 in all
D = Decimal


@pytest.fixture
def voucher_for_ten_charges():
    """A buyer whose voucher covers exactly ten charges: each ¥20.00 charge gets
    50% up to the programme's ¥10.00 per-charge cap, and the voucher holds
    ¥100.00, all that is left of the programme's budget of ¥100.00."""
    operator = factories.operator()
    factories.market(nodes=1)
    buyer = factories.buyer()
    programme = helpers.programme(operator, ratio_rules=[{"ratio": "0.50"}], per_charge_cap="10.00", budget="100.00")
    voucher = helpers.voucher(buyer, programme, operator, amount="100.00")
    lease = helpers.lease_for(buyer, top_up="5000.00")
    samples = [helpers.usage(lease, "20.00") for _ in range(CHARGES)]
    return buyer, voucher, lease, samples


def check_the_money(buyer, voucher, lease_id: int) -> None:
    assert helpers.voucher_balance(voucher) == D("0.00"), "the whole voucher is redeemed, not a fen more"
    lines = ChargeSubsidy.objects.filter(voucher=voucher)
    assert lines.count() == 10
    assert lines.aggregate(total=Sum("amount"))["total"] == D("100.00")
    charges = Charge.objects.filter(buyer_id=buyer.organisation_id)
    assert charges.count() == CHARGES
    assert charges.aggregate(total=Sum("voucher_funded"))["total"] == D("100.00")
    for charge in charges:
        assert charge.gross == D("20.00")
        assert charge.voucher_funded in (D("0.00"), D("10.00"))
        assert charge.from_hold + charge.from_available + charge.owed + charge.voucher_funded == charge.gross
    for account in Account.objects.all():
        assert account.balance == (account.postings.aggregate(total=Sum("amount"))["total"] or 0)
        assert account.may_go_negative or account.balance >= 0
    programme = voucher.programme
    assert billing.balance(f"programme:{programme.pk}:budget") == D("0.00"), "the budget is not exceeded by a fen"
    assert Charge.objects.aggregate(total=Sum("voucher_funded"))["total"] <= programme.budget
    assert checks.ledger_breaches() == []
    assert not audit_capacity().overbooked
    lease = Lease.objects.get(pk=lease_id)
    assert lease.status == "scheduled" and lease.job.status == "scheduled", "the job is still placed"


def test_a_hundred_concurrent_charges_never_overdraw_a_voucher_for_ten(voucher_for_ten_charges):
    buyer, voucher, lease, samples = voucher_for_ten_charges
    per_thread = CHARGES // THREADS

    def charge_some(i: int) -> list[Decimal]:
        funded = []
        for sample in samples[i * per_thread : (i + 1) * per_thread]:
            outcome = billing.charge_sample(sample_id=sample.pk, commission_rate=helpers.RATE)
            funded.append(outcome.charge.voucher_funded)
        return funded

    funded = [amount for amounts in run_together(charge_some, THREADS) for amount in amounts]
    assert sorted(funded, reverse=True)[:11] == [D("10.00")] * 10 + [D("0.00")]
    check_the_money(buyer, voucher, lease.pk)


def test_charging_workers_at_once_redeem_the_voucher_exactly(voucher_for_ten_charges):
    buyer, voucher, lease, _samples = voucher_for_ten_charges
    runs = run_together(lambda _i: charging.charge_batch(limit=CHARGES), 4)
    assert sum(run.samples for run in runs) == CHARGES
    assert not any(run.failed for run in runs)
    check_the_money(buyer, voucher, lease.pk)
