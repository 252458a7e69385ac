"""The verbs that move money. Every movement is one ledger transaction with
an idempotency key (a retry returns the first result and moves nothing
twice), postings summing to zero (checked by billing.domain.ledger), and
account balances updated in the same database transaction with ``F()``
(never read-modify-write). The database refuses a forbidden negative
balance (a CheckConstraint), so no race can overdraw an account. Writing
transactions is billing.posting's ``post`` (one) and ``post_many`` (a
batch, few round trips)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing.domain import ledger, pricing
from billing.domain.money import to_fen
from billing.domain.references import reference_key
from billing.models import (
    Account,
    AccountKind,
    Charge,
    Hold,
    HoldStatus,
    LedgerTransaction,
    UsageSample,
)
from billing.posting import ADJUSTMENTS as ADJUSTMENTS  # the ledger's verbs and accounts, for callers
from billing.posting import BANK_CLEARING, PLATFORM_COMMISSION, fen_sum, post, post_many
from billing.posting import InsufficientFunds as InsufficientFunds
from core.audit import audit_record
from core.errors import InvalidInput
from marketplace.models import Organisation, User

log = logging.getLogger(__name__)


def account_code(organisation_id: int, kind: str) -> str:
    return f"org:{organisation_id}:{kind}"


def balance(code: str) -> Decimal:
    account = Account.objects.filter(code=code).first()
    return account.balance if account else Decimal("0.00")


# --- wallet ----------------------------------------------------------------------------------------------------------


def payment_checked(amount: Decimal, reference: str) -> tuple[Decimal, str]:
    """A payment's amount (positive, whole fen) and reference (stripped, not empty); 400 naming the field otherwise."""
    if amount <= 0 or to_fen(amount) != amount:
        raise InvalidInput("a top-up is a positive amount in whole fen", field="amount")
    reference = reference.strip()
    if not reference_key(reference):
        raise InvalidInput("give the payment's reference", field="reference")
    return amount, reference


def wallet_top_up(
    *, organisation: Organisation, amount: Decimal, reference: str, actor: User | None
) -> LedgerTransaction:
    """Record money paid in (an external payment reference; no gateway). What
    the buyer owes from earlier usage is repaid first, out of the new money."""
    amount, reference = payment_checked(amount, reference)
    available = account_code(organisation.pk, AccountKind.BUYER_AVAILABLE)
    with transaction.atomic():
        row, created = post(
            ledger.top_up(
                available=available, clearing=BANK_CLEARING, amount=amount, reference=f"{organisation.pk}:{reference}"
            ),
            actor=actor,
            data={"organisation": organisation.pk, "reference": reference},
        )
        if created:
            audit_record(actor=actor, action="wallet.top_up", entity=row, data={"amount": str(amount)})
            _repay_debt(organisation=organisation, reference=row.key, actor=actor)
            if balance(account_code(organisation.pk, AccountKind.BUYER_DEBT)) == 0:
                transaction.on_commit(lambda: _resume_leases(organisation.pk))
    return row


def _resume_leases(buyer_id: int) -> None:
    from scheduler.execution import leases_resume

    leases_resume(buyer_id=buyer_id)


def _repay_debt(*, organisation: Organisation, reference: str, actor: User | None) -> None:
    debt_code = account_code(organisation.pk, AccountKind.BUYER_DEBT)
    owed = -balance(debt_code)
    if owed <= 0:
        return
    available = balance(account_code(organisation.pk, AccountKind.BUYER_AVAILABLE))
    amount = min(owed, available)
    if amount <= 0:
        return
    post(
        ledger.transfer(
            kind=ledger.TransactionKind.DEBT_REPAYMENT,
            source=account_code(organisation.pk, AccountKind.BUYER_AVAILABLE),
            destination=debt_code,
            amount=amount,
            reference=reference,
            memo=f"Repayment of {amount} CNY owed for earlier usage.",
        ),
        actor=actor,
    )


# --- holds -----------------------------------------------------------------------------------------------------------


def hold_for_lease(*, lease: Any) -> Hold:
    """Escrow the lease's estimated maximum cost from the buyer's available
    balance. Raises InsufficientFunds if the balance cannot cover it (the
    scheduler then leaves the job queued with that reason)."""
    buyer_id = lease.job.buyer_id
    amount = to_fen(lease.estimated_cost)
    with transaction.atomic():
        existing = Hold.objects.filter(lease_id=lease.pk).first()
        if existing is not None:
            return existing
        if amount > 0:
            post(
                ledger.hold(
                    available=account_code(buyer_id, AccountKind.BUYER_AVAILABLE),
                    held=account_code(buyer_id, AccountKind.BUYER_HELD),
                    amount=amount,
                    reference=f"lease:{lease.pk}",
                ),
                data={"lease": lease.pk},
            )
        return Hold.objects.create(lease_id=lease.pk, buyer_id=buyer_id, amount=amount)


def available_for_update(buyer_ids: set[int]) -> dict[int, Decimal]:
    """Lock the buyers' available accounts (in one order) and return their balances."""
    codes = {account_code(b, AccountKind.BUYER_AVAILABLE): b for b in buyer_ids}
    rows = Account.objects.select_for_update().filter(code__in=codes).order_by("code")
    balances = {b: Decimal("0.00") for b in buyer_ids}
    for account in rows:
        balances[codes[account.code]] = account.balance
    return balances


def holds_for_new_leases(leases: list[Any]) -> None:
    """Escrow for many new leases at once (a scheduling cycle): per lease one
    idempotent ledger transaction "hold:lease:<id>" moving its estimated cost
    from the buyer's available to held account, all written by one
    ``post_many`` (one SQL statement per thousand leases on PostgreSQL), and a
    Hold row. The caller has locked the available accounts
    (available_for_update) and checked they cover it; if one does not, the
    database refuses the lot (InsufficientFunds) and nothing is written."""
    wanted = [(lease, to_fen(lease.estimated_cost)) for lease in leases]
    drafts, data = [], []
    for lease, amount in wanted:
        if amount <= 0:
            continue
        buyer = lease.job.buyer_id
        drafts.append(
            ledger.hold(
                available=account_code(buyer, AccountKind.BUYER_AVAILABLE),
                held=account_code(buyer, AccountKind.BUYER_HELD),
                amount=amount,
                reference=f"lease:{lease.pk}",
            )
        )
        data.append({"lease": lease.pk})
    post_many(drafts, data=data)
    if connection.vendor != "postgresql":
        Hold.objects.bulk_create(
            [Hold(lease_id=lease.pk, buyer_id=lease.job.buyer_id, amount=amount) for lease, amount in wanted],
            batch_size=1000,
        )
        return
    with connection.cursor() as cursor:  # one statement, no model instances: thousands of leases a cycle
        cursor.execute(
            """
            INSERT INTO billing_hold (lease_id, buyer_id, amount, captured, released, status, created_at)
            SELECT lease_id, buyer_id, amount, 0, 0, %(status)s, %(now)s
            FROM unnest(%(leases)s::bigint[], %(buyers)s::bigint[], %(amounts)s::numeric[])
                AS h(lease_id, buyer_id, amount)
            """,
            {
                "status": HoldStatus.OPEN.value,
                "now": timezone.now(),
                "leases": [lease.pk for lease, _amount in wanted],
                "buyers": [lease.job.buyer_id for lease, _amount in wanted],
                "amounts": [amount for _lease, amount in wanted],
            },
        )


def hold_close(*, lease: Any, actor: User | None = None) -> Hold | None:
    """At the end of a lease: release what usage did not capture (void the
    hold if nothing was captured)."""
    with transaction.atomic():
        hold = Hold.objects.select_for_update().filter(lease_id=lease.pk).first()
        if hold is None or hold.status != HoldStatus.OPEN:
            return hold
        remaining = hold.remaining
        if remaining > 0:
            post(
                ledger.release(
                    held=account_code(hold.buyer_id, AccountKind.BUYER_HELD),
                    available=account_code(hold.buyer_id, AccountKind.BUYER_AVAILABLE),
                    amount=remaining,
                    reference=f"lease:{lease.pk}",
                ),
                actor=actor,
                data={"lease": lease.pk},
            )
        status = HoldStatus.VOIDED if hold.captured == 0 else HoldStatus.CLOSED
        Hold.objects.filter(pk=hold.pk).update(
            released=fen_sum(F("released"), remaining), status=status, closed_at=timezone.now()
        )
        audit_record(
            actor=actor,
            action="hold.closed",
            entity=hold,
            from_state=HoldStatus.OPEN,
            to_state=status,
            data={"released": str(remaining)},
        )
    hold.refresh_from_db()
    return hold


# --- usage and charges -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargeOutcome:
    charge: Charge | None
    suspended: bool = False


def usage_record(
    *,
    lease: Any,
    sequence: int,
    start: datetime,
    end: datetime,
    ncu_hours: Decimal,
    device_seconds: Decimal = Decimal(0),
    energy_kwh: Decimal | None = None,
    signature: str = "",
) -> tuple[UsageSample, bool]:
    """Record a usage sample once: the same (lease, sequence) again returns the first."""
    if end <= start:
        raise InvalidInput("a sample's interval ends after it starts", field="end")
    if ncu_hours < 0:
        raise InvalidInput("usage cannot be negative", field="ncu_hours")
    existing = UsageSample.objects.filter(lease_id=lease.pk, sequence=sequence).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            sample = UsageSample.objects.create(
                lease_id=lease.pk,
                sequence=sequence,
                start=start,
                end=end,
                ncu_hours=ncu_hours,
                device_seconds=device_seconds,
                energy_kwh=energy_kwh,
                signature=signature,
            )
    except IntegrityError:
        return UsageSample.objects.get(lease_id=lease.pk, sequence=sequence), False
    return sample, True


def _month_start(moment: datetime) -> datetime:
    local = moment.astimezone(pricing.CST)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _voucher_plan(*, lease: Any, sample: UsageSample, gross: Decimal) -> Any:
    """The share of a charge the buyer's compute vouchers pay, if the job chose
    vouchers (see vouchers.redemption): the vouchers stay locked until the
    charge's transaction ends."""
    from vouchers.redemption import charge_plan

    return charge_plan(lease=lease, sample=sample, gross=gross)


def _voucher_plan_record(*, charge: Charge, plan: Any) -> None:
    from vouchers.redemption import charge_plan_record

    charge_plan_record(charge=charge, plan=plan)


def _volume_tiers(lease: Any) -> tuple[pricing.VolumeTier, ...]:
    """The offer's volume tiers, locked with the lease's price (the offer's rules cannot change under a lease)."""
    from scheduler.selectors import price_rules

    return price_rules(lease.offer).volume_tiers


def charge_sample(*, sample_id: int, commission_rate: Decimal) -> ChargeOutcome:
    """Charge one usage sample exactly once at the lease's locked price.

    Funding rule (documented in README): if the job chose vouchers, the
    buyer's applicable vouchers pay their share first (``voucher_funded``,
    decided by vouchers.domain.subsidy); of the buyer's share, the hold pays
    first; what the hold cannot cover comes from the buyer's available
    balance; what neither covers is recorded as debt on the buyer's debt
    account and the lease is reported for suspension
    (``ChargeOutcome.suspended``). The provider share and the commission are
    those of the whole charge, however it is funded."""
    from scheduler.models import Lease

    with transaction.atomic():
        sample = UsageSample.objects.select_for_update().filter(pk=sample_id).first()
        if sample is None or sample.charged:
            return ChargeOutcome(charge=getattr(sample, "charge", None) if sample else None)
        # The lease is locked before its earlier usage is read: its samples are priced one after another.
        lease = (
            Lease.objects.select_related("job", "pool__site", "offer")
            .select_for_update(no_key=True, of=("self",))
            .get(pk=sample.lease_id)
        )
        buyer_id, provider_id = lease.job.buyer_id, lease.pool.site.provider_id
        month_to_date = Charge.objects.filter(buyer_id=buyer_id, created_at__gte=_month_start(sample.end)).aggregate(
            total=Sum("ncu_hours")
        )["total"] or Decimal(0)
        before = Charge.objects.filter(lease_id=lease.pk).aggregate(total=Sum("ncu_hours"))["total"] or Decimal(0)
        locked = pricing.LockedPrice(
            pricing_type=pricing.PricingType(lease.pricing_type),
            unit_price=lease.unit_price,
            commission_rate=commission_rate,
            volume_tiers=_volume_tiers(lease),
            month_to_date_ncu_hours=lease.volume_position,
        )
        result = pricing.charge(
            locked, sample.ncu_hours, month_to_date_ncu_hours=month_to_date, lease_ncu_hours_before=before
        )
        UsageSample.objects.filter(pk=sample.pk).update(charged=True)
        if result.gross <= 0:
            return ChargeOutcome(charge=None)
        vouchers = _voucher_plan(lease=lease, sample=sample, gross=result.gross)
        buyer_share = result.gross - vouchers.total
        hold = Hold.objects.select_for_update().filter(lease_id=lease.pk).first()
        from_hold = min(buyer_share, hold.remaining) if hold and hold.status == HoldStatus.OPEN else Decimal("0.00")
        rest = buyer_share - from_hold
        available_code = account_code(buyer_id, AccountKind.BUYER_AVAILABLE)
        from_available = Decimal("0.00")
        if rest > 0:
            row = Account.objects.select_for_update().filter(code=available_code).first()
            from_available = min(rest, row.balance) if row else Decimal("0.00")
        owed = rest - from_available
        sources = (
            *vouchers.sources,
            (account_code(buyer_id, AccountKind.BUYER_HELD), from_hold),
            (available_code, from_available),
            (account_code(buyer_id, AccountKind.BUYER_DEBT), owed),
        )
        tx, _created = post(
            ledger.capture_funded(
                sources=sources,
                provider_payable=account_code(provider_id, AccountKind.PROVIDER_PAYABLE),
                platform_commission=PLATFORM_COMMISSION,
                charge=result,
                reference=f"usage:{sample.pk}",
            ),
            data={"lease": lease.pk, "sample": sample.pk},
        )
        if hold is not None and from_hold:
            Hold.objects.filter(pk=hold.pk).update(captured=fen_sum(F("captured"), from_hold))
        charge = Charge.objects.create(
            sample=sample,
            lease=lease,
            buyer_id=buyer_id,
            provider_id=provider_id,
            pricing_type=result.pricing_type.value,
            unit_price=result.unit_price,
            ncu_hours=result.ncu_hours,
            gross=result.gross,
            commission=result.commission,
            provider_share=result.provider_share,
            from_hold=from_hold,
            from_available=from_available,
            owed=owed,
            voucher_funded=vouchers.total,
            transaction=tx,
        )
        _voucher_plan_record(charge=charge, plan=vouchers)
    return ChargeOutcome(charge=charge, suspended=owed > 0)


@dataclass
class _Pending:
    """One sample of a batch being charged: its price, then how it is funded."""

    sample: UsageSample
    lease: Any
    result: pricing.Charge
    from_hold: Decimal
    rest: Decimal
    from_available: Decimal = Decimal("0.00")


def charge_samples(*, sample_ids: list[int], commission_rates: dict[int, Decimal]) -> dict[int, ChargeOutcome]:
    """Charge many usage samples in one database transaction: each exactly
    once, with the prices, funding and outcome ``charge_sample`` gives them
    one after another in id order (vouchers aside, below), and their ledger transactions written by
    one ``post_many``. ``commission_rates`` maps each lease's offer id to its
    commission rate. Samples already charged are left out of the result.

    The samples and their leases are locked (the leases ``FOR NO KEY
    UPDATE``: new usage can still be reported); each lease's earlier usage
    and each buyer's month-to-date are read once and carried forward as
    running totals through the batch; the holds are locked, and the
    available accounts of the buyers whose holds fall short, in one order.
    Samples of jobs that pay with vouchers are left uncharged, for the caller
    to charge each with ``charge_sample`` in its own transaction: their
    vouchers decide per charge, and the voucher and programme accounts they
    lock would fall outside the batch's one lock order."""
    from scheduler.models import Lease
    from vouchers.models import JobVoucherChoice

    with transaction.atomic():
        samples = list(
            UsageSample.objects.select_for_update(of=("self",)).filter(pk__in=sample_ids, charged=False).order_by("id")
        )
        if not samples:
            return {}
        leases = {
            lease.pk: lease
            for lease in Lease.objects.select_related("job", "pool__site", "offer")
            .select_for_update(no_key=True, of=("self",))
            .filter(pk__in={s.lease_id for s in samples})
            .order_by("pk")
        }
        with_vouchers = set(
            JobVoucherChoice.objects.filter(
                job_id__in={lease.job_id for lease in leases.values()}, enabled=True
            ).values_list("job_id", flat=True)
        )
        return _charge_together(
            [s for s in samples if leases[s.lease_id].job_id not in with_vouchers], leases, commission_rates
        )


def _charge_together(samples: list[UsageSample], leases: dict[int, Any], rates: dict[int, Decimal]) -> dict[int, Any]:
    if not samples:
        return {}
    lease_ids = {s.lease_id for s in samples}
    lease_before = dict(
        Charge.objects.filter(lease_id__in=lease_ids)
        .values("lease_id")
        .annotate(total=Sum("ncu_hours"))
        .values_list("lease_id", "total")
    )
    month_base: dict[tuple[int, datetime], Decimal] = {}
    charged_now: dict[int, Decimal] = {}  # NCU-hours charged in this batch, per buyer: all of this month
    holds = {h.lease_id: h for h in Hold.objects.select_for_update().filter(lease_id__in=lease_ids).order_by("pk")}
    remaining = {lease_id: h.remaining for lease_id, h in holds.items() if h.status == HoldStatus.OPEN}
    prices: dict[int, pricing.LockedPrice] = {}
    pending: list[_Pending] = []
    for sample in samples:
        lease = leases[sample.lease_id]
        buyer_id = lease.job.buyer_id
        month = (buyer_id, _month_start(sample.end))
        if month not in month_base:
            month_base[month] = Charge.objects.filter(buyer_id=buyer_id, created_at__gte=month[1]).aggregate(
                total=Sum("ncu_hours")
            )["total"] or Decimal(0)
        if lease.pk not in prices:
            prices[lease.pk] = pricing.LockedPrice(
                pricing_type=pricing.PricingType(lease.pricing_type),
                unit_price=lease.unit_price,
                commission_rate=rates[lease.offer_id],
                volume_tiers=_volume_tiers(lease),
                month_to_date_ncu_hours=lease.volume_position,
            )
        before = lease_before.get(lease.pk) or Decimal(0)
        result = pricing.charge(
            prices[lease.pk],
            sample.ncu_hours,
            month_to_date_ncu_hours=month_base[month] + charged_now.get(buyer_id, Decimal(0)),
            lease_ncu_hours_before=before,
        )
        if result.gross <= 0:
            continue
        lease_before[lease.pk] = before + result.ncu_hours
        charged_now[buyer_id] = charged_now.get(buyer_id, Decimal(0)) + result.ncu_hours
        from_hold = min(result.gross, remaining.get(lease.pk, Decimal("0.00")))
        if lease.pk in remaining:
            remaining[lease.pk] -= from_hold
        pending.append(_Pending(sample, lease, result, from_hold=from_hold, rest=result.gross - from_hold))
    short = {p.lease.job.buyer_id for p in pending if p.rest > 0}
    available = available_for_update(short) if short else {}
    for p in pending:
        if p.rest > 0:
            buyer_id = p.lease.job.buyer_id
            p.from_available = min(p.rest, max(available[buyer_id], Decimal("0.00")))
            available[buyer_id] -= p.from_available
    drafts = []
    for p in pending:
        buyer_id, provider_id = p.lease.job.buyer_id, p.lease.pool.site.provider_id
        drafts.append(
            ledger.capture_funded(
                sources=(
                    (account_code(buyer_id, AccountKind.BUYER_HELD), p.from_hold),
                    (account_code(buyer_id, AccountKind.BUYER_AVAILABLE), p.from_available),
                    (account_code(buyer_id, AccountKind.BUYER_DEBT), p.rest - p.from_available),
                ),
                provider_payable=account_code(provider_id, AccountKind.PROVIDER_PAYABLE),
                platform_commission=PLATFORM_COMMISSION,
                charge=p.result,
                reference=f"usage:{p.sample.pk}",
            )
        )
    written = post_many(drafts, data=[{"lease": p.lease.pk, "sample": p.sample.pk} for p in pending])
    UsageSample.objects.filter(pk__in=[s.pk for s in samples]).update(charged=True)
    captured: dict[int, Decimal] = {}
    for p in pending:
        if p.from_hold:
            captured[p.lease.pk] = captured.get(p.lease.pk, Decimal(0)) + p.from_hold
    for lease_id, amount in sorted(captured.items()):
        Hold.objects.filter(pk=holds[lease_id].pk).update(captured=fen_sum(F("captured"), amount))
    charges = Charge.objects.bulk_create(
        [
            Charge(
                sample=p.sample,
                lease=p.lease,
                buyer_id=p.lease.job.buyer_id,
                provider_id=p.lease.pool.site.provider_id,
                pricing_type=p.result.pricing_type.value,
                unit_price=p.result.unit_price,
                ncu_hours=p.result.ncu_hours,
                gross=p.result.gross,
                commission=p.result.commission,
                provider_share=p.result.provider_share,
                from_hold=p.from_hold,
                from_available=p.from_available,
                owed=p.rest - p.from_available,
                transaction=row,
            )
            for p, (row, _created) in zip(pending, written, strict=True)
        ]
    )
    outcomes: dict[int, Any] = {s.pk: ChargeOutcome(charge=None) for s in samples}
    for charge in charges:
        outcomes[charge.sample_id] = ChargeOutcome(charge=charge, suspended=charge.owed > 0)
    return outcomes
