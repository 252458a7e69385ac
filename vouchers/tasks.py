"""Celery tasks of the voucher programmes: thin wrappers around services,
idempotent (a second run finds nothing left to do), safe in several workers
at once (row locks decide)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from core.tasks import DURABLE
from vouchers import services, statements


@shared_task(**DURABLE)
def expire_vouchers() -> list[int]:
    """Expire vouchers past their validity: balances return to the programme
    or are forfeited, per programme. Returns the voucher ids expired."""
    return services.vouchers_expire_due()


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def expire_voucher(voucher_id: int) -> bool:
    """Expire one voucher if it is due; whether it was."""
    return services.voucher_expire(voucher_id=voucher_id) is not None


@shared_task(**DURABLE)
def close_redemption_statements() -> list[int]:
    """Put the redemptions of every elapsed period on statements for the
    operator's review (兑付). Returns the statement ids written."""
    return [statement.pk for statement in statements.redemption_close_due()]
