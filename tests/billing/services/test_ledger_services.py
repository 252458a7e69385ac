from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing import services
from billing.models import Account, Charge, Hold, LedgerTransaction
from core.errors import Conflict
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories

pytestmark = pytest.mark.django_db

RATE = Decimal("0.08")


def available(org) -> Decimal:
    return services.balance(services.account_code(org.pk, "available"))


def held(org) -> Decimal:
    return services.balance(services.account_code(org.pk, "held"))


def scheduled_lease(buyer) -> Lease:
    job = factories.submit(buyer)
    scheduler_services.cycle_run()
    return Lease.objects.select_related("job", "pool__site").get(job=job)


def test_every_transaction_balances_and_balances_equal_postings():
    buyer = factories.buyer(funds=Decimal(0))
    services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("500.00"), reference="BANK-1", actor=buyer)
    for tx in LedgerTransaction.objects.all():
        assert tx.postings.aggregate(total=Sum("amount"))["total"] == 0
    for account in Account.objects.all():
        assert account.balance == (account.postings.aggregate(total=Sum("amount"))["total"] or 0)
    assert available(buyer.organisation) == Decimal("500.00")


def test_a_retried_top_up_moves_money_once():
    buyer = factories.buyer(funds=Decimal(0))
    first = services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10.00"), reference="R", actor=buyer)
    again = services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10.00"), reference="R", actor=buyer)
    assert first.pk == again.pk
    assert available(buyer.organisation) == Decimal("10.00")
    with pytest.raises(Conflict):
        services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("99.00"), reference="R", actor=buyer)


def test_hold_capture_and_release_leave_the_buyer_paying_only_for_usage():
    factories.market(nodes=1)
    buyer = factories.buyer(funds=Decimal(0))
    services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10000.00"), reference="R1", actor=buyer)
    lease = scheduled_lease(buyer)
    hold = Hold.objects.get(lease=lease)  # held when the job was scheduled
    assert hold.amount == lease.estimated_cost
    assert held(buyer.organisation) == lease.estimated_cost
    sample, created = services.usage_record(
        lease=lease,
        sequence=1,
        start=lease.start,
        end=lease.start + timedelta(hours=1),
        ncu_hours=lease.ncu_hours / 2,
    )
    assert created
    outcome = services.charge_sample(sample_id=sample.pk, commission_rate=RATE)
    charge = outcome.charge
    assert charge is not None and not outcome.suspended
    assert charge.gross == charge.commission + charge.provider_share
    assert charge.from_hold == charge.gross
    again = services.charge_sample(sample_id=sample.pk, commission_rate=RATE)
    assert Charge.objects.count() == 1 and again.charge.pk == charge.pk
    services.hold_close(lease=lease)
    assert held(buyer.organisation) == 0
    assert available(buyer.organisation) == Decimal("10000.00") - charge.gross
    provider_payable = services.balance(services.account_code(lease.pool.site.provider_id, "payable"))
    assert provider_payable == charge.provider_share
    assert services.balance(services.PLATFORM_COMMISSION) == charge.commission
    assert Hold.objects.get(pk=hold.pk).status == "closed"


def test_a_job_the_wallet_cannot_cover_stays_queued_with_the_reason_and_nothing_is_written():
    factories.market(nodes=1)
    buyer = factories.buyer(funds=Decimal("0.01"))
    job = factories.submit(buyer)
    before = LedgerTransaction.objects.count()
    scheduler_services.cycle_run()
    job.refresh_from_db()
    assert job.status == "queued"
    assert "cannot cover" in job.pending_reason and "0.01" in job.pending_reason
    assert not Lease.objects.filter(job=job).exists()
    assert LedgerTransaction.objects.count() == before
    assert available(buyer.organisation) == Decimal("0.01")
    services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10000.00"), reference="R2", actor=buyer)
    scheduler_services.cycle_run()
    lease = Lease.objects.get(job=job)
    assert held(buyer.organisation) == lease.estimated_cost


def test_usage_beyond_the_hold_comes_from_available_then_becomes_debt():
    factories.market(nodes=1)
    buyer = factories.buyer(funds=Decimal(0))
    estimate = scheduler_services.quote_for(user=buyer, values=factories.job_values())["options"][0]["breakdown"]
    services.wallet_top_up(
        organisation=buyer.organisation, amount=estimate.subtotal.amount + Decimal("1.00"), reference="R", actor=buyer
    )
    lease = scheduled_lease(buyer)
    # Three times the estimate: the hold pays the first third, the wallet 1.00, the rest is owed.
    sample, _ = services.usage_record(
        lease=lease, sequence=1, start=lease.start, end=lease.end, ncu_hours=lease.ncu_hours * 3
    )
    outcome = services.charge_sample(sample_id=sample.pk, commission_rate=RATE)
    charge = outcome.charge
    assert outcome.suspended
    assert charge.from_hold == lease.estimated_cost
    assert charge.from_available == Decimal("1.00")
    assert charge.owed == charge.gross - charge.from_hold - charge.from_available > 0
    assert available(buyer.organisation) == 0
    debt = services.balance(services.account_code(buyer.organisation.pk, "debt"))
    assert debt == -charge.owed
    services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("100000.00"), reference="R2", actor=buyer)
    assert services.balance(services.account_code(buyer.organisation.pk, "debt")) == 0
    assert available(buyer.organisation) == Decimal("100000.00") - charge.owed


def test_a_hold_for_a_lease_that_never_ran_is_voided():
    factories.market(nodes=1)
    buyer = factories.buyer(funds=Decimal(0))
    services.wallet_top_up(organisation=buyer.organisation, amount=Decimal("10000.00"), reference="R", actor=buyer)
    lease = scheduled_lease(buyer)
    hold = services.hold_close(lease=lease)
    assert hold.status == "voided"
    assert available(buyer.organisation) == Decimal("10000.00")
