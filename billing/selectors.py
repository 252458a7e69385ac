"""Read-side queries of billing."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Sum

from billing.domain import pricing
from billing.models import Charge


def month_start(moment: datetime) -> datetime:
    """Midnight of the first day of the month, China Standard Time (volume tiers count per CST month)."""
    local = moment.astimezone(pricing.CST)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_to_date_ncu_hours(buyer_id: int, at: datetime) -> Decimal:
    """NCU-hours the buyer has been charged for since the start of the month of ``at``."""
    total = Charge.objects.filter(buyer_id=buyer_id, created_at__gte=month_start(at)).aggregate(t=Sum("ncu_hours"))
    return total["t"] or Decimal(0)
