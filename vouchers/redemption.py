"""Redemption at charge time (核销), the subsidy shown on a quote, and refunds
of voucher-funded charges.

**The charge integration.** ``billing.services.charge_sample`` asks
:func:`charge_plan` for the vouchers' share of a charge before it funds the
rest: when the lease's job chose vouchers, the buyer's usable vouchers are
locked (``SELECT … FOR UPDATE``, in id order) and the pure decision
(:func:`vouchers.domain.subsidy.decide`) says which pay how much. The
capture's sources then start with the voucher accounts, followed by the
buyer's hold, wallet and debt for the buyer's share only; the provider share
and the platform commission are those of the whole charge, unchanged. The
charge records ``voucher_funded`` (gross = voucher_funded + from_hold +
from_available + owed, a database constraint) and :func:`charge_plan_record`
writes one :class:`~vouchers.models.ChargeSubsidy` per paying voucher.

**Concurrency.** Every movement of a voucher's money (charges, expiry,
refunds) takes the voucher's row lock first, so a decision always sees the
balance it spends; and the voucher's ledger account may not go below zero
(a database constraint), so even a path that forgot the lock could not
overdraw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing.domain import pricing
from billing.domain.money import Money, to_fen
from billing.models import AccountKind, Charge
from billing.services import ADJUSTMENTS, PLATFORM_COMMISSION, InsufficientFunds, account_code, balance, post
from core.audit import audit_record
from core.errors import Conflict, Forbidden, InvalidInput
from marketplace.models import ResourcePool, Role, User
from vouchers import selectors
from vouchers.domain import movements, subsidy
from vouchers.models import (
    ChargeRefund,
    ChargeSubsidy,
    ClawbackRule,
    JobVoucherChoice,
    SubsidyOutcome,
    Voucher,
    VoucherStatus,
)

ZERO = Decimal("0.00")


@dataclass(frozen=True)
class ChargePlan:
    """The vouchers' share of one charge, decided under the vouchers' row locks."""

    decision: subsidy.SubsidyDecision | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> Decimal:
        return self.decision.total if self.decision else ZERO

    @property
    def sources(self) -> tuple[tuple[str, Decimal], ...]:
        """The capture's voucher sources: (account code, amount), in decision order."""
        if self.decision is None:
            return ()
        return tuple((movements.voucher_account(s.voucher_id), s.amount) for s in self.decision.subsidies)


NO_VOUCHERS = ChargePlan()


def charge_plan(*, lease: Any, sample: Any, gross: Decimal) -> ChargePlan:
    """The vouchers' share of ``gross`` for a usage sample of ``lease``: none
    unless the job chose vouchers. Call inside the charge's transaction: the
    buyer's usable vouchers stay locked until it ends."""
    if gross <= 0 or not JobVoucherChoice.objects.filter(job_id=lease.job_id, enabled=True).exists():
        return NO_VOUCHERS
    at = sample.end
    buyer_id = lease.job.buyer_id
    vouchers = list(selectors.usable_vouchers(buyer_id=buyer_id, at=at).select_for_update(of=("self",)))
    if not vouchers:
        return NO_VOUCHERS
    pool = ResourcePool.objects.select_related("site", "accelerator_model", "cpu_model").get(pk=lease.pool_id)
    decision = selectors.decision_for(buyer_id=buyer_id, pool=pool, gross=gross, at=at, vouchers=vouchers)
    return ChargePlan(decision=decision, facts=selectors.pool_facts(pool))


def charge_plan_record(*, charge: Charge, plan: ChargePlan) -> list[ChargeSubsidy]:
    """Write what each voucher paid of ``charge`` (one row per paying voucher)."""
    if plan.decision is None or not plan.decision.subsidies:
        return []
    return ChargeSubsidy.objects.bulk_create(
        [
            ChargeSubsidy(
                charge=charge,
                voucher_id=s.voucher_id,
                programme_id=s.programme_id,
                buyer_id=charge.buyer_id,
                provider_id=charge.provider_id,
                hub=plan.facts["hub"],
                compute_class=plan.facts["compute_class"],
                ratio=s.ratio,
                amount=s.amount,
            )
            for s in plan.decision.subsidies
        ]
    )


# --- quotes ----------------------------------------------------------------------------------------------------------


def quote_subsidy(
    *,
    buyer_id: int,
    pool: ResourcePool,
    quote: pricing.Quote,
    at: datetime | None = None,
    vouchers: list[Voucher] | None = None,
) -> tuple[pricing.Quote, subsidy.SubsidyDecision]:
    """The quote with the subsidy the buyer's vouchers would pay of its
    subtotal now (their balances and caps as they stand; nothing is locked or
    reserved), and the decision saying which vouchers and why not others.
    ``vouchers``: the buyer's usable vouchers at ``at`` when already read
    (one read for all the options of a quote)."""
    decision = selectors.decision_for(
        buyer_id=buyer_id, pool=pool, gross=quote.subtotal.amount, at=at or timezone.now(), vouchers=vouchers
    )
    return quote.with_voucher_subsidy(Money(decision.total)), decision


# --- refunds ---------------------------------------------------------------------------------------------------------


def charge_refund(*, charge: Charge, amount: Decimal, reason: str, reference: str, actor: User) -> ChargeRefund:
    """Refund or correct part of a charge (operators). The provider and the
    platform give back their shares in proportion; what the vouchers paid
    returns in proportion to each voucher (to the programme if the voucher has
    expired: its budget, or forfeited if the programme forfeits), never to the
    buyer's cash; the buyer's own share returns to the buyer (first to what
    the buyer owes). A share the operator clawed back after a rejected
    redemption returns to whoever repaid it. Idempotent per reference."""
    if getattr(actor, "role", "") != Role.OPERATOR:
        raise Forbidden("only platform operators may refund charges")
    reason, reference = (reason or "").strip(), (reference or "").strip()
    if not reason:
        raise InvalidInput("say why the charge is refunded", field="reason")
    if not reference:
        raise InvalidInput("give the correction's reference", field="reference")
    with transaction.atomic():
        locked = Charge.objects.select_for_update().get(pk=charge.pk)
        existing = ChargeRefund.objects.filter(charge=locked, reference=reference).first()
        if existing is not None:
            if existing.amount != amount:
                raise Conflict(f"reference {reference} was already used for a different refund", field="reference")
            return existing
        voucher_ids = ChargeSubsidy.objects.filter(charge=locked).values_list("voucher_id", flat=True)
        vouchers = {
            v.pk: v
            for v in Voucher.objects.select_for_update(of=("self",))
            .select_related("programme")
            .filter(pk__in=list(voucher_ids))
            .order_by("id")
        }
        subsidies = list(ChargeSubsidy.objects.select_for_update().filter(charge=locked).order_by("id"))
        refunded = ChargeRefund.objects.filter(charge=locked).aggregate(total=Sum("to_buyer"))["total"]
        buyer_refunded = to_fen(refunded or ZERO)
        try:
            split = subsidy.refund_split(
                amount=amount,
                gross=locked.gross,
                commission=locked.commission,
                refundable_by_voucher=[(s.pk, s.amount - s.refunded) for s in subsidies],
                refundable_by_buyer=locked.gross - locked.voucher_funded - buyer_refunded,
            )
        except ValueError as error:
            raise InvalidInput(str(error), field="amount") from None
        destinations: list[tuple[str, Decimal]] = []
        by_subsidy = dict(split.to_vouchers)
        for s in subsidies:
            back = by_subsidy.get(s.pk, ZERO)
            if back > 0:
                destinations.append((_refund_destination(s, vouchers[s.voucher_id], locked.buyer_id), back))
        destinations.extend(_buyer_destinations(locked.buyer_id, split.to_buyer))
        try:
            tx, _ = post(
                movements.refund(
                    provider_payable=account_code(locked.provider_id, AccountKind.PROVIDER_PAYABLE),
                    platform_commission=PLATFORM_COMMISSION,
                    provider_share=split.provider_share,
                    commission=split.commission,
                    destinations=destinations,
                    reference=f"charge:{locked.pk}:{reference}",
                    memo=f"Refund of {split.amount} CNY on charge {locked.pk}: {reason}"[:500],
                ),
                actor=actor,
                data={"charge": locked.pk, "reference": reference},
            )
        except InsufficientFunds:
            raise Conflict(
                "the provider's earnings or the platform's commission from this charge were already paid out; "
                "correct it with an adjustment on the provider's next settlement statement",
                field="amount",
            ) from None
        for s in subsidies:
            back = by_subsidy.get(s.pk, ZERO)
            if back > 0:
                ChargeSubsidy.objects.filter(pk=s.pk).update(refunded=F("refunded") + back)
        refund = ChargeRefund.objects.create(
            charge=locked,
            reference=reference,
            amount=split.amount,
            provider_share=split.provider_share,
            commission=split.commission,
            to_vouchers=split.amount - split.to_buyer,
            to_buyer=split.to_buyer,
            reason=reason,
            transaction=tx,
            actor=actor,
        )
        audit_record(
            actor=actor,
            action="charge.refunded",
            entity=locked,
            reason=reason,
            data={
                "amount": str(split.amount),
                "to_vouchers": str(split.amount - split.to_buyer),
                "to_buyer": str(split.to_buyer),
                "transaction": tx.key,
            },
        )
    return refund


def _refund_destination(s: ChargeSubsidy, voucher: Voucher, buyer_id: int) -> str:
    """Where a voucher's share of a refund goes: the voucher while it is
    valid, else its programme; after a clawback, whoever repaid it."""
    if s.outcome == SubsidyOutcome.CLAWED_BACK:
        if voucher.programme.clawback_rule == ClawbackRule.WRITE_OFF:
            return ADJUSTMENTS
        return account_code(buyer_id, AccountKind.BUYER_AVAILABLE)
    if voucher.status == VoucherStatus.ACTIVE and voucher.expires_at > timezone.now():
        return movements.voucher_account(voucher.pk)
    if voucher.programme.return_on_expiry:
        return movements.budget_account(voucher.programme_id)
    return movements.lapsed_account(voucher.programme_id)


def _buyer_destinations(buyer_id: int, amount: Decimal) -> list[tuple[str, Decimal]]:
    """The buyer's share of a refund: first what the buyer owes, then the wallet."""
    if amount <= 0:
        return []
    owed = max(-balance(account_code(buyer_id, AccountKind.BUYER_DEBT)), ZERO)
    to_debt = min(owed, amount)
    parts = [(account_code(buyer_id, AccountKind.BUYER_DEBT), to_debt)] if to_debt else []
    if amount - to_debt:
        parts.append((account_code(buyer_id, AccountKind.BUYER_AVAILABLE), amount - to_debt))
    return parts
