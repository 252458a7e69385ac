"""Celery tasks of the core: sealing the audit trail."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from core.audit import audit_seal

# Options of tasks that change state: acknowledged only when done and given back
# when their worker dies (so another worker runs them), retried with backoff when
# the database is unreachable. Their work is idempotent, so running twice is safe.
DURABLE = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "max_retries": 5,
}


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def seal_audit_trail() -> int:
    """Append the committed audit entries to the hash chain; returns how many.
    Idempotent and safe to run anywhere at once: a second sealer finds the
    lock taken and leaves the work to the first."""
    return audit_seal(wait=False)
