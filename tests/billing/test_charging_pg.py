"""Several charging workers at once, on PostgreSQL: every usage sample is
charged exactly once and the money adds up to the fen."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Sum

from billing import charging, checks, services
from billing.domain.money import to_fen
from billing.models import Charge, Posting, UsageSample
from core.models import Notice
from scheduler import services as scheduler_services
from scheduler.management.commands.check_capacity import audit_capacity
from scheduler.models import Lease
from tests import factories
from tests.concurrency import run_together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 4


def balance(org_id: int, kind: str) -> Decimal:
    return services.balance(services.account_code(org_id, kind))


def drain(_: int) -> charging.ChargeRun:
    """One worker: batches of 50 until nothing is left to claim."""
    total = charging.ChargeRun()
    while True:
        run = charging.charge_batch(limit=50)
        total.samples += run.samples
        total.charges += run.charges
        total.gross += run.gross
        total.suspended_leases += run.suspended_leases
        total.failed += run.failed
        if run.samples == 0 and not run.failed:
            return total


def leases_for(buyer, count: int) -> list[Lease]:
    jobs = [factories.submit(buyer) for _ in range(count)]
    scheduler_services.cycle_run()
    leases = list(Lease.objects.filter(job__in=jobs).select_related("job", "pool__site").order_by("id"))
    assert len(leases) == count
    return leases


def meter(lease: Lease, samples: int, *, ncu_hours: Decimal, first: int = 1) -> None:
    """The provider's agent reports one sample a minute."""
    for sequence in range(first, first + samples):
        start = lease.start + timedelta(minutes=sequence - 1)
        services.usage_record(
            lease=lease, sequence=sequence, start=start, end=start + timedelta(minutes=1), ncu_hours=ncu_hours
        )


def top_ups(org_id: int) -> Decimal:
    """What the organisation paid in, from the ledger."""
    code = services.account_code(org_id, "available")
    paid = Posting.objects.filter(transaction__kind="top_up", account__code=code).aggregate(total=Sum("amount"))
    return paid["total"]


def test_four_workers_charge_thousands_of_samples_exactly_once_and_the_money_adds_up():
    provider_user, _pools = factories.market(pools=4, nodes=1)
    provider_id = provider_user.organisation_id
    rich, poor = factories.buyer(), factories.buyer(funds=Decimal("200.00"))
    rich_leases = leases_for(rich, 2)
    poor_leases = leases_for(poor, 2)  # their estimated costs are held when they are scheduled
    for lease in rich_leases:
        # 500 samples of 1/400 of the estimate each: 125% of the hold, the rest from the wallet.
        meter(lease, 500, ncu_hours=(lease.ncu_hours / 400).quantize(Decimal("0.0001")))
    for lease in poor_leases:
        scheduler_services.lease_transition(lease=lease, to="running", actor=None)
        # 10.00 CNY more than the poor buyer paid in, over 1,000 samples: the last ones are owed.
        per_sample = (Decimal("210.00") / 1000 / lease.unit_price).quantize(Decimal("0.0001"))
        meter(lease, 500, ncu_hours=per_sample)
    samples = UsageSample.objects.count()
    assert samples == 2000

    runs = run_together(drain, WORKERS)

    assert sum(run.samples for run in runs) == samples
    assert sum(run.samples > 0 for run in runs) >= 2, "workers charged side by side"
    assert not any(run.failed for run in runs)
    assert not UsageSample.objects.filter(charged=False).exists()
    assert Charge.objects.count() == samples
    assert Charge.objects.values("sample").distinct().count() == samples
    assert checks.ledger_breaches() == []
    call_command("check_ledger")

    gross = Charge.objects.aggregate(total=Sum("gross"))["total"]
    assert sum((run.gross for run in runs), Decimal(0)) == gross
    assert balance(provider_id, "payable") + services.balance(services.PLATFORM_COMMISSION) == gross
    # Every fen paid in is in the wallet, in escrow or paid for usage; what was not paid is owed.
    for buyer in (rich, poor):
        org = buyer.organisation_id
        charged = Charge.objects.filter(buyer_id=org).aggregate(total=Sum("gross"))["total"]
        owed = -balance(org, "debt")
        assert balance(org, "available") + balance(org, "held") + charged - owed == top_ups(org)
    assert balance(rich.organisation_id, "debt") == 0
    assert balance(poor.organisation_id, "available") == 0
    assert balance(poor.organisation_id, "debt") < 0
    suspended = {lease for run in runs for lease in run.suspended_leases}
    assert suspended <= {lease.pk for lease in poor_leases} and suspended
    # Usage nobody pays for stops: those leases are suspended and the buyer is told.
    assert set(Lease.objects.filter(status="suspended").values_list("pk", flat=True)) == suspended
    notices = Notice.objects.filter(organisation_id=poor.organisation_id, kind="lease.suspended")
    assert notices.count() == len(suspended)


def test_a_usage_batch_delivered_three_times_is_charged_once():
    factories.market(pools=1, nodes=1)
    buyer = factories.buyer()
    (lease,) = leases_for(buyer, 1)
    per_sample = Decimal("1.5000")

    run_together(lambda _: meter(lease, 200, ncu_hours=per_sample), 3)
    runs = run_together(drain, 2)

    assert UsageSample.objects.count() == 200
    assert sum(run.samples for run in runs) == 200
    assert Charge.objects.count() == 200
    assert Charge.objects.aggregate(total=Sum("ncu_hours"))["total"] == per_sample * 200
    # Charged in order against the lease's running total: never above the price of the whole usage.
    assert Charge.objects.aggregate(total=Sum("gross"))["total"] <= to_fen(lease.unit_price * per_sample * 200)
    meter(lease, 200, ncu_hours=per_sample)  # a fourth delivery, after charging
    assert charging.charge_pending(limit=500) == 0
    assert Charge.objects.count() == 200
    assert checks.ledger_breaches() == []
    assert not audit_capacity().overbooked
    assert Lease.objects.get(pk=lease.pk).job.status in {"scheduled", "running"}, "the job is still placed"
