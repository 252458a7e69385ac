"""The verbs that move money. Every movement is one ledger transaction with
an idempotency key (a retry returns the first result and moves nothing
twice), postings summing to zero (checked by billing.domain.ledger), and
account balances updated in the same database transaction with ``F()``
(never read-modify-write). The database refuses a forbidden negative
balance (a CheckConstraint), so no race can overdraw an account."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import DataError, IntegrityError, transaction
from django.db.models import F, Sum
from django.db.models.functions import Round
from django.utils import timezone

from billing.domain import ledger, pricing
from billing.domain.money import to_fen
from billing.models import (
    MAY_GO_NEGATIVE,
    Account,
    AccountKind,
    Charge,
    Hold,
    HoldStatus,
    LedgerTransaction,
    Posting,
    UsageSample,
)
from core.audit import audit_record
from core.errors import ApplicationError, Conflict, InvalidInput
from marketplace.models import Organisation, User

log = logging.getLogger(__name__)

PLATFORM_COMMISSION = "platform:commission"
BANK_CLEARING = "platform:clearing"
ADJUSTMENTS = "platform:adjustments"
PLATFORM_KINDS = {
    PLATFORM_COMMISSION: AccountKind.PLATFORM_COMMISSION,
    BANK_CLEARING: AccountKind.BANK_CLEARING,
    ADJUSTMENTS: AccountKind.ADJUSTMENTS,
}


def _fen_sum(column: F, amount: Decimal) -> Round:
    """column + amount rounded to the fen in the database: PostgreSQL's numeric
    is exact anyway; SQLite adds in binary floating point, where 10.00 − 9.99
    − 0.01 is a hair below zero and would trip the non-negative constraint."""
    return Round(column + amount, 2)


class InsufficientFunds(ApplicationError):
    code = "insufficient_funds"
    status = 402


def account_code(organisation_id: int, kind: str) -> str:
    return f"org:{organisation_id}:{kind}"


# Voucher programme accounts (see vouchers.domain.movements): "programme:<id>:budget",
# "programme:<id>:lapsed" and "voucher:<id>", owned by no organisation.
PROGRAMME_KINDS = {"budget": AccountKind.PROGRAMME_BUDGET, "lapsed": AccountKind.PROGRAMME_LAPSED}


def _voucher_account_kind(code: str) -> str | None:
    """The kind of a voucher programme account code, or None if it is not one."""
    parts = code.split(":")
    if len(parts) == 2 and parts[0] == "voucher" and parts[1].isdigit():
        return AccountKind.VOUCHER
    if len(parts) == 3 and parts[0] == "programme" and parts[1].isdigit() and parts[2] in PROGRAMME_KINDS:
        return PROGRAMME_KINDS[parts[2]]
    return None


def _account_rows(codes: set[str]) -> dict[str, Account]:
    """The accounts named by ``codes``, created on first use."""
    found = {a.code: a for a in Account.objects.filter(code__in=codes)}
    for code in codes - set(found):
        if code in PLATFORM_KINDS:
            kind, org_id = PLATFORM_KINDS[code], None
        elif voucher_kind := _voucher_account_kind(code):
            kind, org_id = voucher_kind, None
        else:
            prefix, org, kind = code.split(":")
            if prefix != "org" or kind not in AccountKind.values:
                raise InvalidInput(f"unknown account {code}", field="account")
            org_id = int(org)
        try:
            with transaction.atomic():
                found[code] = Account.objects.create(
                    code=code, organisation_id=org_id, kind=kind, may_go_negative=kind in MAY_GO_NEGATIVE
                )
        except IntegrityError:  # created by a concurrent transaction meanwhile
            found[code] = Account.objects.get(code=code)
    return found


def post(
    draft: ledger.TransactionDraft, *, actor: User | None = None, data: dict[str, Any] | None = None
) -> tuple[LedgerTransaction, bool]:
    """Write a transaction once. Returns (row, created): a retry with the same
    key and the same postings returns the first row and moves nothing; the
    same key with different postings is a conflict."""
    ledger.validate_transaction(draft)
    with transaction.atomic():
        existing = LedgerTransaction.objects.filter(key=draft.key).first()
        if existing is None:
            try:
                with transaction.atomic():
                    row = LedgerTransaction.objects.create(
                        key=draft.key,
                        kind=str(draft.kind),
                        memo=draft.memo[:500],
                        fingerprint=draft.fingerprint,
                        data=data or {},
                        actor=actor if getattr(actor, "pk", None) else None,
                    )
            except IntegrityError:
                existing = LedgerTransaction.objects.get(key=draft.key)
        if existing is not None:
            if existing.fingerprint != draft.fingerprint:
                raise Conflict(f"idempotency key {draft.key} was already used for a different movement", field="key")
            return existing, False
        accounts = _account_rows({p.account for p in draft.postings})
        Posting.objects.bulk_create(
            [Posting(transaction=row, account=accounts[p.account], amount=p.amount) for p in draft.postings]
        )
        for p in sorted(draft.postings, key=lambda p: p.account):  # one lock order: no deadlocks
            try:
                with transaction.atomic():
                    Account.objects.filter(pk=accounts[p.account].pk).update(balance=_fen_sum(F("balance"), p.amount))
            except IntegrityError:
                raise InsufficientFunds(
                    f"{p.account} cannot cover {-p.amount} CNY ({draft.memo})", field="amount"
                ) from None
            except DataError:  # numeric overflow: past the largest balance a MONEY column holds
                raise InvalidInput(
                    f"{p.account} cannot hold {p.amount} CNY more ({draft.memo}): the amount is too large",
                    field="amount",
                ) from None
    return row, True


def balance(code: str) -> Decimal:
    account = Account.objects.filter(code=code).first()
    return account.balance if account else Decimal("0.00")


# --- wallet ----------------------------------------------------------------------------------------------------------


def wallet_top_up(
    *, organisation: Organisation, amount: Decimal, reference: str, actor: User | None
) -> LedgerTransaction:
    """Record money paid in (an external payment reference; no gateway). What
    the buyer owes from earlier usage is repaid first, out of the new money."""
    if amount <= 0 or to_fen(amount) != amount:
        raise InvalidInput("a top-up is a positive amount in whole fen", field="amount")
    reference = reference.strip()
    if not reference:
        raise InvalidInput("give the payment's reference", field="reference")
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
    from the buyer's available to held account, and a Hold row; account
    balances move with one UPDATE per account. The caller has locked the
    available accounts (available_for_update) and checked they cover it."""
    wanted = [(lease, to_fen(lease.estimated_cost)) for lease in leases]
    drafts = []
    for lease, amount in wanted:
        if amount <= 0:
            continue
        buyer = lease.job.buyer_id
        drafts.append(
            (
                lease,
                ledger.hold(
                    available=account_code(buyer, AccountKind.BUYER_AVAILABLE),
                    held=account_code(buyer, AccountKind.BUYER_HELD),
                    amount=amount,
                    reference=f"lease:{lease.pk}",
                ),
            )
        )
    if drafts:
        accounts = _account_rows({p.account for _, d in drafts for p in d.postings})
        rows = LedgerTransaction.objects.bulk_create(
            [
                LedgerTransaction(
                    key=d.key, kind=str(d.kind), memo=d.memo[:500], fingerprint=d.fingerprint, data={"lease": lease.pk}
                )
                for lease, d in drafts
            ],
            batch_size=1000,
        )
        Posting.objects.bulk_create(
            [
                Posting(transaction=row, account=accounts[p.account], amount=p.amount)
                for row, (_lease, d) in zip(rows, drafts, strict=True)
                for p in d.postings
            ],
            batch_size=2000,
        )
        moves: dict[str, Decimal] = {}
        for _lease, d in drafts:
            for p in d.postings:
                moves[p.account] = moves.get(p.account, Decimal(0)) + p.amount
        for code in sorted(moves):
            try:
                with transaction.atomic():
                    Account.objects.filter(pk=accounts[code].pk).update(balance=_fen_sum(F("balance"), moves[code]))
            except IntegrityError:
                raise InsufficientFunds(f"{code} cannot cover the holds of this cycle", field="amount") from None
    Hold.objects.bulk_create(
        [Hold(lease_id=lease.pk, buyer_id=lease.job.buyer_id, amount=amount) for lease, amount in wanted],
        batch_size=1000,
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
            released=_fen_sum(F("released"), remaining), status=status, closed_at=timezone.now()
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
        lease = Lease.objects.select_related("job", "pool__site", "offer").get(pk=sample.lease_id)
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
            Hold.objects.filter(pk=hold.pk).update(captured=_fen_sum(F("captured"), from_hold))
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
