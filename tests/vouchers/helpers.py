"""Voucher test data made the way operators and buyers make it: through the services."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing import services as billing
from billing.models import UsageSample
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories
from vouchers import services
from vouchers.models import Voucher, VoucherProgramme

_names = itertools.count(1)
RATE = Decimal("0.08")


def programme(operator: Any, *, budget: str = "1000000.00", providers=(), sites=(), **overrides) -> VoucherProgramme:
    now = timezone.now()
    values: dict[str, Any] = {
        "name": f"Test programme {next(_names)}",
        "authority": "Test city data bureau",
        "ratio_rules": [{"ratio": "0.30"}],
        "application_opens": now - timedelta(days=1),
        "application_closes": now + timedelta(days=30),
        "validity_days": 90,
    }
    values.update(overrides)
    return services.programme_create(
        actor=operator,
        values=values,
        providers=providers,
        sites=sites,
        budget=Decimal(budget),
        funding_reference=f"deposit-{next(_names)}",
    )


def voucher(buyer: Any, programme_: VoucherProgramme, operator: Any, amount: str = "10000.00", **approve) -> Voucher:
    application = services.application_submit(
        user=buyer,
        programme=programme_,
        requested_amount=Decimal(amount),
        intended_use="model training",
        flags=approve.get("flags", ()),
    )
    assert application.status == "pending_review", application.reason
    return services.application_approve(application=application, actor=operator, **approve)


def voucher_balance(voucher_: Voucher) -> Decimal:
    return billing.balance(f"voucher:{voucher_.pk}")


def lease_for(buyer: Any, *, use_vouchers: bool = True, top_up: str = "100000.00", **job) -> Lease:
    """A scheduled lease of a new job of ``buyer`` (on whatever pool the market has), its hold taken."""
    billing.wallet_top_up(
        organisation=buyer.organisation, amount=Decimal(top_up), reference=f"top-up-{next(_names)}", actor=buyer
    )
    submitted = factories.submit(buyer, **job)
    if use_vouchers:
        services.job_voucher_choose(job=submitted, enabled=True, actor=buyer)
    scheduler_services.cycle_run()
    lease = Lease.objects.select_related("job", "pool__site").get(job=submitted)
    billing.hold_for_lease(lease=lease)  # unless the scheduling cycle took it already
    return lease


_sequences = itertools.count(1)


def usage(lease: Lease, gross: str) -> UsageSample:
    """A usage sample of ``lease`` whose charge is exactly ``gross`` CNY (no volume tiers)."""
    ncu_hours = Decimal(gross) / lease.unit_price
    assert ncu_hours == ncu_hours.quantize(Decimal("0.0001")), "pick an amount the locked price divides"
    sequence = next(_sequences)
    sample, _ = billing.usage_record(
        lease=lease,
        sequence=sequence,
        start=lease.start + timedelta(minutes=sequence),
        end=lease.start + timedelta(minutes=sequence + 1),
        ncu_hours=ncu_hours,
    )
    return sample


def charge(lease: Lease, gross: str):
    outcome = billing.charge_sample(sample_id=usage(lease, gross).pk, commission_rate=RATE)
    assert outcome.charge is not None and outcome.charge.gross == Decimal(gross)
    return outcome.charge
