"""Redemption statements and payout (兑付).

**Periods.** Redemptions are gathered per programme over periods of
``CX_REDEMPTION_PERIOD_HOURS`` (24 by default) aligned on midnight China
Standard Time. After a period ends, :func:`redemption_close_due` (the Celery
task ``vouchers.tasks.close_redemption_statements``) puts every redemption
made before its end and not yet on a statement into one statement per
programme: usage of day T is on a statement in the first minutes of T+1.
The statement's evidence pack (:func:`vouchers.selectors.evidence`) is
assembled by the platform from its own records: lease, metered usage,
charge, the buyer's paid share from the ledger, the invoice number and the
delivery confirmation.

**Review.** A statement is pending review until an operator approves it
(optionally rejecting some lines) or rejects it whole; each decision is
audited. Approved redemptions are final.

**Payout.** The voucher-funded part of a charge is credited to the
provider's payable account when the charge is made, beside the buyer-funded
part, so it is on the provider's settlement statement and paid out in the
same settlement run as the provider's other earnings (billing.settlement):
the provider never waits for the programme. The provider's share does not
depend on the review's outcome either way:

**Clawback rule.** A rejected redemption is paid back into the programme's
budget, as one ledger transaction (key ``voucher_clawback:subsidy:<id>``),
audited, by whom the programme names (``clawback_rule``):

* ``rebill_buyer``: the buyer, from its wallet, and what the wallet cannot
  cover as debt (the buyer then owes it like unpaid usage);
* ``write_off``: the platform, from its adjustments account.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min, Sum
from django.utils import timezone

from billing.domain.money import to_fen
from billing.domain.pricing import CST
from billing.models import AccountKind, LedgerTransaction
from billing.services import ADJUSTMENTS, account_code, balance, post
from core.audit import audit_record
from core.errors import IllegalTransition, InvalidInput
from marketplace.models import User
from vouchers import selectors
from vouchers.domain import movements
from vouchers.models import (
    ChargeSubsidy,
    ClawbackRule,
    RedemptionStatement,
    RedemptionStatus,
    SubsidyOutcome,
    VoucherProgramme,
)
from vouchers.services import require_operator

ZERO = Decimal("0.00")
PERIOD_EPOCH = datetime(1970, 1, 5, tzinfo=CST)  # a Monday, midnight CST


def period_hours() -> int:
    hours = int(getattr(settings, "CX_REDEMPTION_PERIOD_HOURS", 24))
    if hours < 1:
        raise InvalidInput("CX_REDEMPTION_PERIOD_HOURS is at least 1", field="CX_REDEMPTION_PERIOD_HOURS")
    return hours


def period_containing(moment: datetime) -> tuple[datetime, datetime]:
    """The redemption period [start, end) holding ``moment``."""
    length = timedelta(hours=period_hours())
    index = (moment - PERIOD_EPOCH) // length
    start = PERIOD_EPOCH + index * length
    return start, start + length


# --- statements ------------------------------------------------------------------------------------------------------


def redemption_close(
    *, programme: VoucherProgramme, end: datetime, actor: User | None = None
) -> RedemptionStatement | None:
    """Put the programme's redemptions made before ``end`` and not yet on a
    statement onto one statement, from the period of the oldest to ``end``.
    None if there are none. Safe to run twice or in two workers at once."""
    with transaction.atomic():
        VoucherProgramme.objects.select_for_update().get(pk=programme.pk)
        waiting = ChargeSubsidy.objects.filter(programme=programme, statement__isnull=True, created_at__lt=end)
        oldest = waiting.aggregate(oldest=Min("created_at"))["oldest"]
        if oldest is None:
            return None
        start = min(period_containing(oldest)[0], end - timedelta(hours=period_hours()))
        statement, _ = RedemptionStatement.objects.get_or_create(
            programme=programme, period_start=start, period_end=end
        )
        if statement.status != RedemptionStatus.PENDING_REVIEW:
            return None  # reviewed already: late redemptions wait for the next period's statement
        waiting.update(statement=statement)
        totals = ChargeSubsidy.objects.filter(statement=statement).aggregate(amount=Sum("amount"), lines=Count("id"))
        amount = to_fen(totals["amount"] or ZERO)
        RedemptionStatement.objects.filter(pk=statement.pk).update(lines=totals["lines"], amount=amount)
        audit_record(
            actor=actor,
            action="redemption_statement.created",
            entity=statement,
            to_state=statement.status,
            data={"lines": totals["lines"], "amount": str(amount)},
        )
    statement.refresh_from_db()
    return statement


def redemption_close_due(*, now: datetime | None = None) -> list[RedemptionStatement]:
    """Close the redemptions of every elapsed period, per programme."""
    now = now or timezone.now()
    end = period_containing(now)[0]
    programme_ids = (
        ChargeSubsidy.objects.filter(statement__isnull=True, created_at__lt=end)
        .values_list("programme_id", flat=True)
        .distinct()
    )
    statements = []
    for programme in VoucherProgramme.objects.filter(pk__in=list(programme_ids)).order_by("id"):
        statement = redemption_close(programme=programme, end=end)
        if statement is not None:
            statements.append(statement)
    return statements


def _lock_pending(statement: RedemptionStatement, target: str) -> RedemptionStatement:
    locked = RedemptionStatement.objects.select_for_update().get(pk=statement.pk)
    if locked.status != RedemptionStatus.PENDING_REVIEW:
        raise IllegalTransition(entity=f"Redemption statement {locked.pk}", current=locked.status, target=target)
    return locked


def redemption_approve(
    *,
    statement: RedemptionStatement,
    actor: User,
    rejected: Mapping[int, str] | None = None,
    reason: str = "",
) -> RedemptionStatement:
    """Approve a statement (兑付). Lines named in ``rejected`` (subsidy id →
    reason) are rejected and clawed back by the programme's rule; the rest are
    redeemed. Audited."""
    require_operator(actor)
    rejected = dict(rejected or {})
    with transaction.atomic():
        locked = _lock_pending(statement, RedemptionStatus.APPROVED)
        programme = locked.programme
        lines = {s.pk: s for s in ChargeSubsidy.objects.select_for_update().filter(statement=locked).order_by("id")}
        unknown = set(rejected) - set(lines)
        if unknown:
            raise InvalidInput(f"lines {sorted(unknown)} are not on this statement", field="rejected")
        for subsidy_id, why in rejected.items():
            if not (why or "").strip():
                raise InvalidInput(f"say why line {subsidy_id} is rejected", field="rejected")
        clawed = ZERO
        for subsidy_id in sorted(rejected):
            clawed += _claw_back(lines[subsidy_id], programme=programme, actor=actor, reason=rejected[subsidy_id])
        approved_ids = [pk for pk in lines if pk not in rejected]
        ChargeSubsidy.objects.filter(pk__in=approved_ids).update(outcome=SubsidyOutcome.APPROVED)
        approved = sum((lines[pk].amount for pk in approved_ids), ZERO)
        _finish(locked, RedemptionStatus.APPROVED, actor, reason, approved=approved, clawed=clawed)
        audit_record(
            actor=actor,
            action="redemption_statement.approved",
            entity=locked,
            from_state=RedemptionStatus.PENDING_REVIEW,
            to_state=RedemptionStatus.APPROVED,
            reason=reason,
            data={"approved": str(approved), "rejected_lines": sorted(rejected), "clawed_back": str(clawed)},
        )
    locked.refresh_from_db()
    return locked


def redemption_reject(*, statement: RedemptionStatement, actor: User, reason: str) -> RedemptionStatement:
    """Reject a whole statement, saying why: every line is clawed back by the
    programme's rule. Audited."""
    require_operator(actor)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("say why the statement is rejected", field="reason")
    with transaction.atomic():
        locked = _lock_pending(statement, RedemptionStatus.REJECTED)
        clawed = ZERO
        for line in ChargeSubsidy.objects.select_for_update().filter(statement=locked).order_by("id"):
            clawed += _claw_back(line, programme=locked.programme, actor=actor, reason=reason)
        _finish(locked, RedemptionStatus.REJECTED, actor, reason, approved=ZERO, clawed=clawed)
        audit_record(
            actor=actor,
            action="redemption_statement.rejected",
            entity=locked,
            from_state=RedemptionStatus.PENDING_REVIEW,
            to_state=RedemptionStatus.REJECTED,
            reason=reason,
            data={"clawed_back": str(clawed)},
        )
    locked.refresh_from_db()
    return locked


def _finish(
    statement: RedemptionStatement, status: str, actor: User, reason: str, *, approved: Decimal, clawed: Decimal
) -> None:
    if not RedemptionStatement.objects.filter(pk=statement.pk, status=RedemptionStatus.PENDING_REVIEW).update(
        status=status,
        approved_amount=approved,
        clawed_back_amount=clawed,
        reviewed_by=actor,
        reviewed_at=timezone.now(),
        reason=reason,
    ):
        raise IllegalTransition(entity=f"Redemption statement {statement.pk}", current="reviewed", target=status)


def _claw_back(line: ChargeSubsidy, *, programme: VoucherProgramme, actor: User, reason: str) -> Decimal:
    """Pay a rejected redemption back into the programme's budget by the
    programme's clawback rule; returns the amount (what refunds have not
    already returned)."""
    amount = line.amount - line.refunded
    tx: LedgerTransaction | None = None
    if amount > 0:
        if programme.clawback_rule == ClawbackRule.WRITE_OFF:
            sources = [(ADJUSTMENTS, amount)]
        else:
            available = account_code(line.buyer_id, AccountKind.BUYER_AVAILABLE)
            from_wallet = min(max(balance(available), ZERO), amount)
            sources = [
                (available, from_wallet),
                (account_code(line.buyer_id, AccountKind.BUYER_DEBT), amount - from_wallet),
            ]
        tx, _ = post(
            movements.clawback(
                programme_id=programme.pk,
                sources=sources,
                reference=f"subsidy:{line.pk}",
                memo=f"Redemption {line.pk} of {programme.name} rejected ({reason}); {amount} CNY clawed back"[:500],
            ),
            actor=actor,
            data={"subsidy": line.pk, "charge": line.charge_id, "rule": programme.clawback_rule},
        )
    ChargeSubsidy.objects.filter(pk=line.pk).update(
        outcome=SubsidyOutcome.CLAWED_BACK, outcome_reason=reason, clawback_transaction=tx
    )
    audit_record(
        actor=actor,
        action="voucher_redemption.clawed_back",
        entity=line,
        from_state=SubsidyOutcome.PENDING,
        to_state=SubsidyOutcome.CLAWED_BACK,
        reason=reason,
        data={"amount": str(amount), "rule": programme.clawback_rule, "transaction": tx.key if tx else None},
    )
    return amount


# --- report ----------------------------------------------------------------------------------------------------------

REPORT_FIGURES = (
    "deposited",
    "budget_available",
    "committed",
    "vouchers_issued",
    "outstanding",
    "redeemed",
    "redeemed_approved",
    "redeemed_pending_review",
    "refunded",
    "returned",
    "forfeited",
    "clawed_back",
    "net_spent",
    "beneficiaries",
)


def programme_report_csv(report: dict[str, Any]) -> str:
    """The programme report as CSV: one row per figure, then the beneficiaries
    by category and by hub (section, key, organisations, amount)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "key", "organisations", "amount"])
    for name in REPORT_FIGURES:
        value = report[name]
        if name in {"vouchers_issued", "beneficiaries"}:
            writer.writerow(["figure", name, value, ""])
        else:
            writer.writerow(["figure", name, "", value])
    for section in ("beneficiaries_by_category", "beneficiaries_by_hub"):
        for row in report[section]:
            writer.writerow([section.removeprefix("beneficiaries_"), row["key"], row["organisations"], row["amount"]])
    return out.getvalue()


def statement_evidence(statement: RedemptionStatement) -> list[dict[str, Any]]:
    return selectors.evidence(selectors.statement_subsidies(statement))
