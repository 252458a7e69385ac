"""Celery tasks of the core: sealing the audit trail."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from core.audit import audit_seal


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def seal_audit_trail() -> int:
    """Append the committed audit entries to the hash chain; returns how many.
    Idempotent and safe to run anywhere at once: a second sealer finds the
    lock taken and leaves the work to the first."""
    return audit_seal(wait=False)
