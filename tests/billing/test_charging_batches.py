"""Charging usage in batches gives every sample the charge it gets charged
alone, one after another: the same price (volume tiers, the lease's running
total), the same funding (hold, then wallet, then debt) and suspension."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction

from billing import charging, checks, services
from billing.domain import ledger
from billing.models import Charge, Hold, UsageSample
from core.errors import InvalidInput
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories

pytestmark = pytest.mark.django_db

RATE = Decimal("0.08")
FIELDS = ("sample_id", "gross", "commission", "provider_share", "from_hold", "from_available", "owed", "ncu_hours")


def usage_beyond_the_wallet() -> list[int]:
    """A buyer with 300 CNY and two leases on an offer with a volume discount,
    metered past both holds and the wallet: samples of both leases, interleaved."""
    provider = factories.provider()
    pool = factories.pool(provider, factories.site(provider), node_count=2)
    tiers = [{"from_ncu_hours": "0", "discount": "0"}, {"from_ncu_hours": "40", "discount": "0.25"}]
    factories.offer(provider, pool, price_rules={"volume_tiers": tiers})
    buyer = factories.buyer(funds=Decimal("300.00"))
    jobs = [factories.submit(buyer) for _ in range(2)]
    scheduler_services.cycle_run()
    leases = list(Lease.objects.filter(job__in=jobs).select_related("job").order_by("id"))
    assert len(leases) == 2
    per_sample = (Decimal("4.00") / leases[0].unit_price).quantize(Decimal("0.0001"))
    for sequence in range(1, 61):
        for lease in leases:
            start = lease.start + timedelta(minutes=sequence - 1)
            services.usage_record(
                lease=lease, sequence=sequence, start=start, end=start + timedelta(minutes=1), ncu_hours=per_sample
            )
    return list(UsageSample.objects.order_by("id").values_list("pk", flat=True))


def charges() -> list[tuple]:
    return list(Charge.objects.order_by("sample_id").values_list(*FIELDS))


def test_a_batch_charges_each_sample_as_charging_it_alone_would():
    samples = usage_beyond_the_wallet()
    with transaction.atomic():
        for sample_id in samples:
            services.charge_sample(sample_id=sample_id, commission_rate=RATE)
        alone = charges()
        holds_alone = list(Hold.objects.order_by("id").values_list("captured", flat=True))
        transaction.set_rollback(True)
    assert Charge.objects.count() == 0

    outcomes = services.charge_samples(sample_ids=samples, commission_rates=dict.fromkeys(_offers(), RATE))

    assert charges() == alone
    assert list(Hold.objects.order_by("id").values_list("captured", flat=True)) == holds_alone
    assert {row[6] > 0 for row in alone} == {True, False}, "some usage was paid, some is owed"
    assert sum(1 for o in outcomes.values() if o.suspended) == sum(1 for row in alone if row[6] > 0)
    # Again: nothing is charged twice.
    assert services.charge_samples(sample_ids=samples, commission_rates=dict.fromkeys(_offers(), RATE)) == {}
    assert checks.ledger_breaches() == []
    call_command("check_ledger")


def test_the_charging_task_in_batches_suspends_the_unpaid_leases_and_settles_everything():
    samples = usage_beyond_the_wallet()

    run = charging.charge_batch(limit=len(samples) + 10)

    assert run.samples == len(samples) and not run.failed
    assert not UsageSample.objects.filter(charged=False).exists()
    assert run.charges == Charge.objects.count()
    assert set(run.suspended_leases) == set(Charge.objects.filter(owed__gt=0).values_list("lease_id", flat=True))
    assert checks.ledger_breaches() == []


def _offers() -> set[int]:
    return set(Lease.objects.values_list("offer_id", flat=True))


def test_a_sample_that_cannot_be_charged_is_set_aside_and_the_rest_of_its_batch_is_charged(monkeypatch):
    samples = usage_beyond_the_wallet()
    bad = samples[7]
    capture = ledger.capture_funded

    def refusing(**kwargs):
        if kwargs["reference"] == f"usage:{bad}":
            raise InvalidInput("this sample cannot be captured", field="sources")
        return capture(**kwargs)

    monkeypatch.setattr(ledger, "capture_funded", refusing)

    run = charging.charge_batch(limit=len(samples))

    assert run.failed == [(bad, "this sample cannot be captured")]
    assert run.samples == len(samples) - 1
    assert set(UsageSample.objects.filter(charged=False).values_list("pk", flat=True)) == {bad}
    assert not Charge.objects.filter(sample_id=bad).exists()
    assert Charge.objects.count() == len(samples) - 1
    assert checks.ledger_breaches() == []
