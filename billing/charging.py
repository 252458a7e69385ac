"""Batch charging: turn uncharged usage samples into charges, safely from
several workers at once.

Each sample is charged in its own short database transaction. The worker
claims the oldest uncharged sample together with its lease with
``SELECT … FOR NO KEY UPDATE SKIP LOCKED``: two workers never take the same
sample, and never two samples of the same lease at once, so a lease's usage
is priced in order against its own running total (``charge_sample`` reads
what the lease metered before). ``NO KEY`` leaves the lease open to new
usage samples (their foreign key check only needs a key-share lock) while it
is being charged. Accounts are then locked by ``services.post`` in one global
order, so workers do not deadlock; one sample per transaction keeps the
platform commission account, which every charge credits, locked for
milliseconds only.

Exactly-once does not rest on the claim: ``charge_sample`` locks the sample
and returns without charging a sample already marked charged, and the unique
sample on ``Charge`` and the unique ledger key ``capture:usage:<id>`` refuse a
second charge in the database."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction

from billing import services
from billing.models import UsageSample
from core.errors import ApplicationError

log = logging.getLogger(__name__)


@dataclass
class ChargeRun:
    """What one batch did. ``samples`` counts the usage samples settled (a
    sample too small to cost a fen is settled without a charge);
    ``suspended_leases`` are leases whose usage neither the hold nor the
    buyer's wallet could cover (the rest was recorded as debt); running ones
    were suspended (``scheduler.execution.lease_suspend``). ``failed`` lists
    samples refused with the reason; they stay uncharged and are retried by
    the next batch."""

    samples: int = 0
    charges: int = 0
    gross: Decimal = Decimal("0.00")
    suspended_leases: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a Celery task's result."""
        return {
            "samples": self.samples,
            "charges": self.charges,
            "gross": str(self.gross),
            "suspended_leases": self.suspended_leases,
            "failed": [{"sample": sample_id, "reason": reason} for sample_id, reason in self.failed],
        }


def _claim_next(skip: set[int]) -> tuple[int, int, int] | None:
    """(sample id, lease id, offer id) of the oldest uncharged sample no other
    worker holds, locked with its lease until the caller's transaction ends."""
    sample = (
        UsageSample.objects.filter(charged=False)
        .exclude(pk__in=skip)
        .select_related("lease")
        .only("id", "lease__id", "lease__offer_id")
        .select_for_update(skip_locked=True, no_key=True, of=("self", "lease"))
        .order_by("id")
        .first()
    )
    return None if sample is None else (sample.pk, sample.lease.pk, sample.lease.offer_id)


def _commission_rate(offer_id: int, cache: dict[int, Decimal]) -> Decimal:
    if offer_id not in cache:
        from scheduler.models import Offer
        from scheduler.services import commission_rate_for

        offer = Offer.objects.select_related("pool__site__provider").get(pk=offer_id)
        cache[offer_id] = commission_rate_for(offer)
    return cache[offer_id]


def charge_batch(*, limit: int = 500) -> ChargeRun:
    """Charge up to ``limit`` uncharged usage samples, oldest first, each in
    its own transaction; stops early when none is left to claim. Safe to run
    in several workers at once: they take disjoint samples."""
    run = ChargeRun()
    rates: dict[int, Decimal] = {}
    suspended: set[int] = set()
    refused: set[int] = set()
    for _ in range(limit):
        claimed: tuple[int, int, int] | None = None
        try:
            with transaction.atomic():
                claimed = _claim_next(refused)
                if claimed is None:
                    break
                sample_id, lease_id, offer_id = claimed
                outcome = services.charge_sample(sample_id=sample_id, commission_rate=_commission_rate(offer_id, rates))
        except ApplicationError as error:
            if claimed is None:
                raise
            log.warning("usage sample %s was not charged: %s", claimed[0], error.detail)
            refused.add(claimed[0])
            run.failed.append((claimed[0], error.detail))
            continue
        run.samples += 1
        if outcome.charge is not None:
            run.charges += 1
            run.gross += outcome.charge.gross
        if outcome.suspended and outcome.charge is not None and lease_id not in suspended:
            suspended.add(lease_id)
            run.suspended_leases.append(lease_id)
            _suspend(lease_id, owed=outcome.charge.owed)
    return run


def _suspend(lease_id: int, *, owed: Decimal) -> None:
    """The lease's usage is no longer paid for: suspend it (a lease that is
    not running, or that another worker suspended first, stays as it is).
    Its own transaction, after the charge's: a failure here loses no charge."""
    from scheduler.execution import lease_suspend
    from scheduler.models import Lease

    log.warning("lease %s: %s CNY of usage is not covered by the hold or the wallet", lease_id, owed)
    try:
        lease_suspend(lease=Lease.objects.select_related("pool__site").get(pk=lease_id), owed=owed)
    except ApplicationError as error:  # e.g. another worker suspended it meanwhile
        log.info("lease %s was not suspended: %s", lease_id, error.detail)


def charge_pending(*, limit: int = 500) -> int:
    """Charge up to ``limit`` uncharged usage samples; the number settled."""
    return charge_batch(limit=limit).samples


def charge_usage(*, limit: int = 500) -> dict[str, Any]:
    """The body of the Celery task ``billing.tasks.charge_usage``: one batch,
    its report as a dict (samples, charges, gross, suspended_leases, failed)."""
    return charge_batch(limit=limit).as_dict()
