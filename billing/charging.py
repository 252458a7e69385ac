"""Batch charging: turn uncharged usage samples into charges, safely from
several workers at once.

A worker claims the oldest uncharged samples, up to ``BATCH`` at a time,
together with their leases, with ``SELECT … FOR NO KEY UPDATE SKIP LOCKED``:
two workers never take the same sample, and never samples of the same lease
at once, so a lease's usage is priced in order against its own running
total. ``NO KEY`` leaves the lease open to new usage samples (their foreign
key check only needs a key-share lock) while it is being charged. The batch
is charged in one short database transaction by
``services.charge_samples``, whose ledger transactions go through one
``post_many`` (accounts locked in one global order, so workers do not
deadlock). Samples of jobs paying with vouchers are charged after the
batch, each in its own transaction. If the batch is refused (a sample that
cannot be charged), its samples are charged one by one to set the culprit
aside.

Exactly-once does not rest on the claim: the services lock the samples and
leave out any already marked charged, and the unique sample on ``Charge``
and the unique ledger key ``capture:usage:<id>`` refuse a second charge in
the database."""

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


BATCH = 100  # samples charged in one database transaction


def _claim(count: int, skip: set[int]) -> list[tuple[int, int, int]]:
    """(sample id, lease id, offer id) of the ``count`` oldest uncharged
    samples no other worker holds, locked with their leases until the
    caller's transaction ends."""
    samples = (
        UsageSample.objects.filter(charged=False)
        .exclude(pk__in=skip)
        .select_related("lease")
        .only("id", "lease__id", "lease__offer_id")
        .select_for_update(skip_locked=True, no_key=True, of=("self", "lease"))
        .order_by("id")[:count]
    )
    return [(s.pk, s.lease.pk, s.lease.offer_id) for s in samples]


def _claim_one(sample_id: int) -> bool:
    """Whether the sample is uncharged and no other worker holds it or its lease (then locked for the caller)."""
    claimed = (
        UsageSample.objects.filter(pk=sample_id, charged=False)
        .select_related("lease")
        .only("id", "lease__id")
        .select_for_update(skip_locked=True, no_key=True, of=("self", "lease"))
    )
    return bool(list(claimed))


def _commission_rate(offer_id: int, cache: dict[int, Decimal]) -> Decimal:
    if offer_id not in cache:
        from scheduler.models import Offer
        from scheduler.services import commission_rate_for

        offer = Offer.objects.select_related("pool__site__provider").get(pk=offer_id)
        cache[offer_id] = commission_rate_for(offer)
    return cache[offer_id]


def charge_batch(*, limit: int = 500) -> ChargeRun:
    """Charge up to ``limit`` uncharged usage samples, oldest first, ``BATCH``
    to a database transaction; stops early when none is left to claim. Safe
    to run in several workers at once: they take disjoint samples."""
    run = ChargeRun()
    rates: dict[int, Decimal] = {}
    refused: set[int] = set()
    suspended: set[int] = set()
    while run.samples + len(run.failed) < limit:
        claimed: list[tuple[int, int, int]] = []
        try:
            with transaction.atomic():
                claimed = _claim(min(BATCH, limit - run.samples - len(run.failed)), refused)
                if not claimed:
                    break
                offers = {offer_id for _sample, _lease, offer_id in claimed}
                outcomes = services.charge_samples(
                    sample_ids=[sample_id for sample_id, _lease, _offer in claimed],
                    commission_rates={offer_id: _commission_rate(offer_id, rates) for offer_id in offers},
                )
        except ApplicationError:
            if not claimed:
                raise
            outcomes = _one_by_one(claimed, rates, run, refused)
        else:  # what the batch left (samples of jobs paying with vouchers), each in its own transaction
            outcomes |= _one_by_one([c for c in claimed if c[0] not in outcomes], rates, run, refused)
        for sample_id, lease_id, _offer in claimed:
            if sample_id in outcomes:
                _record(run, outcomes[sample_id], lease_id, suspended)
    return run


def _one_by_one(
    claimed: list[tuple[int, int, int]], rates: dict[int, Decimal], run: ChargeRun, refused: set[int]
) -> dict[int, services.ChargeOutcome]:
    """Charge a refused batch's samples each in its own transaction; those refused again are set aside."""
    outcomes = {}
    for sample_id, _lease_id, offer_id in claimed:
        try:
            with transaction.atomic():
                if not _claim_one(sample_id):  # another worker took it meanwhile
                    continue
                outcomes[sample_id] = services.charge_sample(
                    sample_id=sample_id, commission_rate=_commission_rate(offer_id, rates)
                )
        except ApplicationError as error:
            log.warning("usage sample %s was not charged: %s", sample_id, error.detail)
            refused.add(sample_id)
            run.failed.append((sample_id, error.detail))
    return outcomes


def _record(run: ChargeRun, outcome: services.ChargeOutcome, lease_id: int, suspended: set[int]) -> None:
    run.samples += 1
    if outcome.charge is not None:
        run.charges += 1
        run.gross += outcome.charge.gross
    if outcome.suspended and outcome.charge is not None and lease_id not in suspended:
        suspended.add(lease_id)
        run.suspended_leases.append(lease_id)
        _suspend(lease_id, owed=outcome.charge.owed)


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
