"""Money paid in from outside. A buyer gives notice of a bank transfer with
its reference; an operator who finds it on the platform's bank statement
confirms it, which posts the top-up to the ledger, or rejects it with a
reason. A buyer's word alone never moves money."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.domain.references import reference_key
from billing.models import PaymentNotice, PaymentNoticeStatus
from billing.services import payment_checked, wallet_top_up
from core.audit import audit_record
from core.errors import Conflict, IllegalTransition, InvalidInput
from core.notices import notify
from marketplace.models import Organisation, User

TRANSITIONS: dict[str, set[str]] = {
    PaymentNoticeStatus.PENDING: {PaymentNoticeStatus.CONFIRMED, PaymentNoticeStatus.REJECTED},
    PaymentNoticeStatus.CONFIRMED: set(),
    PaymentNoticeStatus.REJECTED: set(),
}


def same_reference_elsewhere() -> Coalesce:
    """For annotating notices: how many other notices (any organisation) cite the same transfer."""
    others = (
        PaymentNotice.objects.filter(reference_key=OuterRef("reference_key"))
        .exclude(pk=OuterRef("pk"))
        .order_by()
        .values("reference_key")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(others, output_field=IntegerField()), 0)


def payment_notice_submit(
    *, organisation: Organisation, amount: Decimal, reference: str, user: User | None
) -> tuple[PaymentNotice, bool]:
    """Record a notice of money paid in, pending an operator's check. The same
    reference again (however spelt: case, spaces and separators aside) is a
    retry and returns the first notice (``created`` is false); with another
    amount it is refused (409)."""
    amount, reference = payment_checked(amount, reference)
    with transaction.atomic():
        notice, created = PaymentNotice.objects.get_or_create(
            organisation=organisation,
            reference_key=reference_key(reference),
            defaults={"amount": amount, "reference": reference, "submitted_by": user},
        )
        if not created and notice.amount != amount:
            raise Conflict(
                f"payment {reference!r} was already notified with {notice.amount} CNY, not {amount}", field="reference"
            )
        if created:
            audit_record(
                actor=user,
                action="payment_notice.submitted",
                entity=notice,
                to_state=notice.status,
                data={"amount": str(amount), "reference": reference, "organisation": organisation.pk},
            )
    return notice, created


def _review(notice: PaymentNotice, target: str) -> PaymentNotice | None:
    """Lock the notice; None when it is already in ``target`` (a retry)."""
    locked = PaymentNotice.objects.select_for_update().get(pk=notice.pk)
    if locked.status == target:
        return None
    if target not in TRANSITIONS[locked.status]:
        raise IllegalTransition(entity=f"Payment notice {locked.pk}", current=locked.status, target=target)
    return locked


def payment_notice_confirm(*, notice: PaymentNotice, actor: User, reason: str = "") -> PaymentNotice:
    """The payment arrived: post the top-up (debt repaid first) and mark the
    notice confirmed. Confirming twice moves the money once."""
    with transaction.atomic():
        locked = _review(notice, PaymentNoticeStatus.CONFIRMED)
        if locked is None:
            return PaymentNotice.objects.get(pk=notice.pk)
        tx = wallet_top_up(
            organisation=locked.organisation, amount=locked.amount, reference=locked.reference, actor=actor
        )
        previous = locked.status
        locked.status = PaymentNoticeStatus.CONFIRMED
        locked.transaction = tx
        locked.reviewed_by = actor
        locked.reviewed_at = timezone.now()
        locked.reason = reason.strip()
        locked.save(update_fields=["status", "transaction", "reviewed_by", "reviewed_at", "reason"])
        audit_record(
            actor=actor,
            action="payment_notice.confirmed",
            entity=locked,
            from_state=previous,
            to_state=locked.status,
            reason=locked.reason,
            data={"transaction": tx.pk, "amount": str(locked.amount)},
        )
        notify(
            organisation_id=locked.organisation_id,
            kind="payment_confirmed",
            title=f"Payment {locked.reference} credited",
            message=f"{locked.amount} CNY is in your wallet.",
            subject=locked,
        )
    return locked


def payment_notice_reject(*, notice: PaymentNotice, actor: User, reason: str) -> PaymentNotice:
    """No such payment arrived: the notice is closed with the reason, nothing moves."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("say why the payment is rejected", field="reason")
    with transaction.atomic():
        locked = _review(notice, PaymentNoticeStatus.REJECTED)
        if locked is None:
            return PaymentNotice.objects.get(pk=notice.pk)
        previous = locked.status
        locked.status = PaymentNoticeStatus.REJECTED
        locked.reviewed_by = actor
        locked.reviewed_at = timezone.now()
        locked.reason = reason
        locked.save(update_fields=["status", "reviewed_by", "reviewed_at", "reason"])
        audit_record(
            actor=actor,
            action="payment_notice.rejected",
            entity=locked,
            from_state=previous,
            to_state=locked.status,
            reason=reason,
        )
        notify(
            organisation_id=locked.organisation_id,
            kind="payment_rejected",
            title=f"Payment {locked.reference} not credited",
            message=reason,
            subject=locked,
        )
    return locked
