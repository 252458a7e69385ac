"""Celery tasks of billing: thin wrappers around the charging and settlement
services. All are idempotent (a charged sample is not charged again, closing
a closed period changes nothing), so a redelivered message is harmless."""

from __future__ import annotations

from celery import shared_task
from django.utils.dateparse import parse_datetime

from billing import charging, settlement
from core.errors import InvalidInput
from core.tasks import DURABLE


@shared_task(**DURABLE)
def charge_usage(limit: int = 500) -> dict:
    """Charge up to ``limit`` uncharged usage samples (several workers may run
    it at once: samples are claimed with SKIP LOCKED)."""
    return charging.charge_usage(limit=limit)


@shared_task(**DURABLE)
def close_due_periods() -> dict[str, list[int]]:
    """Close every elapsed settlement period not closed yet (the beat runs it
    a few times an hour; the previous period closes soon after it ends)."""
    periods = settlement.settlement_close_due()
    return {"closed": [period.pk for period in periods]}


@shared_task(**DURABLE)
def close_period(start: str, end: str) -> int:
    """Close the period [start, end) given as ISO 8601 date-times with their
    offset; returns the period's id."""
    bounds = parse_datetime(start), parse_datetime(end)
    if None in bounds:
        raise InvalidInput("start and end are ISO 8601 date-times", field="start")
    return settlement.settlement_close(start=bounds[0], end=bounds[1]).pk
