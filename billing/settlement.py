"""Settlement (自动结算) and the operator's review of statements.

**Periods.** Settlement runs over periods of ``CX_SETTLEMENT_PERIOD_HOURS``
(24 by default) aligned on midnight China Standard Time, stored in UTC.
Closing a period turns every charge made in it into statements: one per
provider (pending review, line items per lease: samples, NCU-hours, gross,
commission, net) and one per buyer (final, informational). A charge is linked
to its two statements, so it is settled exactly once; a charge whose
transaction committed after its period had closed goes into the next period
that closes. Closing a period again returns it and changes nothing. All the
arithmetic is done by the database (``GROUP BY`` and set-based ``UPDATE``),
never in a Python loop over charges, and a statement's totals are the sums of
its lines.

**Review.** A provider statement moves through one transition table::

    pending_review → approved → paid
    pending_review → disputed → approved → paid

Approving releases any amount held back under dispute and pays out what the
statement makes payable (net + adjustments), provider payable → bank
clearing, with the idempotency key ``payout:statement:<id>``; a second
approval is refused and pays nothing. A dispute moves the disputed amount from
the provider's payable account to its disputed account until approval. An
adjustment is a signed ledger transaction with a reason: a credit (platform
adjustments → provider payable) or a debit (provider payable → platform
adjustments). Every step is audited with who, when, why, and the states.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import DecimalField, Exists, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.domain import ledger, pricing
from billing.domain.money import as_decimal, is_fen_exact, to_fen
from billing.models import (
    AccountKind,
    Charge,
    LedgerTransaction,
    PeriodStatus,
    SettlementPeriod,
    SettlementStatement,
    StatementLine,
    StatementRole,
    StatementStatus,
)
from billing.services import ADJUSTMENTS, BANK_CLEARING, account_code, post
from core.audit import audit_many, audit_record
from core.errors import Conflict, Forbidden, IllegalTransition, InvalidInput
from core.models import AuditEntry
from marketplace.models import Role, User

# Periods are counted from a Monday midnight in China Standard Time, so daily
# periods run from 00:00 to 24:00 CST and weekly ones from Monday.
PERIOD_EPOCH = datetime(1970, 1, 5, tzinfo=pricing.CST)
ZERO = Decimal("0.00")
BATCH = 5000

STATEMENT_TRANSITIONS: dict[str, set[str]] = {
    StatementStatus.PENDING_REVIEW: {StatementStatus.APPROVED, StatementStatus.DISPUTED},
    StatementStatus.DISPUTED: {StatementStatus.APPROVED},
    StatementStatus.APPROVED: {StatementStatus.PAID},
    StatementStatus.PAID: set(),
    StatementStatus.FINAL: set(),
}
ADJUSTABLE = frozenset({StatementStatus.PENDING_REVIEW, StatementStatus.DISPUTED})


# --- periods ---------------------------------------------------------------------------------------------------------


def period_hours() -> int:
    hours = int(getattr(settings, "CX_SETTLEMENT_PERIOD_HOURS", 24))
    if hours < 1:
        raise ImproperlyConfigured("CX_SETTLEMENT_PERIOD_HOURS must be a whole number of hours, at least 1")
    return hours


def period_containing(moment: datetime, *, hours: int | None = None) -> tuple[datetime, datetime]:
    """The settlement period [start, end) that contains ``moment``, in UTC."""
    length = timedelta(hours=hours or period_hours())
    start = PERIOD_EPOCH + ((_aware(moment, "moment") - PERIOD_EPOCH) // length) * length
    return start.astimezone(UTC), (start + length).astimezone(UTC)


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput(f"{name} must be a date and time with its time zone", field=name)
    return moment.astimezone(UTC)


def _uncovered(
    start: datetime, end: datetime, periods: Sequence[SettlementPeriod]
) -> Iterator[tuple[datetime, datetime]]:
    """The parts of [start, end) that none of ``periods`` (sorted by start) covers."""
    cursor = start
    for period in periods:
        if period.start > cursor:
            yield cursor, min(period.start, end)
        cursor = max(cursor, period.end)
    if cursor < end:
        yield cursor, end


def _unsettled(*, start: datetime, end: datetime) -> QuerySet[Charge]:
    """Charges for a period [start, end): made in it, or made earlier in a
    period already closed (their transaction committed after it closed), and
    not yet on a statement."""
    closed_earlier = SettlementPeriod.objects.filter(
        status=PeriodStatus.CLOSED, start__lte=OuterRef("created_at"), end__gt=OuterRef("created_at")
    )
    return (
        Charge.objects.filter(provider_statement__isnull=True, created_at__lt=end)
        .filter(Q(created_at__gte=start) | Exists(closed_earlier))
        .order_by()
    )


def settlement_close(*, start: datetime, end: datetime, actor: User | None = None) -> SettlementPeriod:
    """Close the settlement period [start, end): one provider statement per
    provider and one buyer statement per buyer, one line per lease, charges
    linked to both. Idempotent: closing a closed period returns it unchanged.
    Refuses a period that has not ended yet or overlaps another one."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        raise InvalidInput("a period ends after it starts", field="end")
    if end > timezone.now():
        raise InvalidInput(f"the period ends at {end:%Y-%m-%d %H:%M} UTC, which has not come yet", field="end")
    with transaction.atomic():
        overlapping = SettlementPeriod.objects.filter(start__lt=end, end__gt=start).exclude(start=start, end=end)
        other = overlapping.first()
        if other is not None:
            raise Conflict(f"the period overlaps settlement period {other.pk} ({other})", field="start")
        period, _ = SettlementPeriod.objects.get_or_create(start=start, end=end)
        period = SettlementPeriod.objects.select_for_update().get(pk=period.pk)
        if period.status == PeriodStatus.CLOSED:
            return period
        counts = _settle(period)
        SettlementPeriod.objects.filter(pk=period.pk).update(status=PeriodStatus.CLOSED, closed_at=timezone.now())
        audit_record(
            actor=actor,
            action="settlement.period_closed",
            entity=period,
            from_state=PeriodStatus.OPEN,
            to_state=PeriodStatus.CLOSED,
            data=counts,
        )
    period.refresh_from_db()
    return period


def _settle(period: SettlementPeriod) -> dict[str, int]:
    unsettled = _unsettled(start=period.start, end=period.end)
    pairs = list(unsettled.values_list("provider_id", "buyer_id").distinct())
    parties = [
        (StatementRole.PROVIDER, StatementStatus.PENDING_REVIEW, sorted({p for p, _ in pairs})),
        (StatementRole.BUYER, StatementStatus.FINAL, sorted({b for _, b in pairs})),
    ]
    SettlementStatement.objects.bulk_create(
        [
            SettlementStatement(period=period, organisation_id=org_id, role=role, status=status)
            for role, status, org_ids in parties
            for org_id in org_ids
        ],
        batch_size=BATCH,
    )
    statements = SettlementStatement.objects.filter(period=period)
    ids = {(role, org): pk for pk, role, org in statements.values_list("pk", "role", "organisation_id")}
    linked = 0
    for offset in range(0, len(pairs), BATCH):
        linked += _link_charges(
            period,
            [
                (provider, buyer, ids[StatementRole.PROVIDER, provider], ids[StatementRole.BUYER, buyer])
                for provider, buyer in pairs[offset : offset + BATCH]
            ],
        )
    lines = _insert_lines(period, "provider_statement") + _insert_lines(period, "buyer_statement")
    _total_from_lines(statements)
    statements.filter(samples=0).delete()  # a party whose charges a concurrent close took
    audit_many(
        [
            {"action": "statement.created", "entity": statement, "to_state": statement.status}
            for statement in statements.only("pk", "status")
        ]
    )
    return {
        "provider_statements": statements.filter(role=StatementRole.PROVIDER).count(),
        "buyer_statements": statements.filter(role=StatementRole.BUYER).count(),
        "charges": linked,
        "lines": lines,
    }


def _link_charges(period: SettlementPeriod, statements: list[tuple[int, int, int, int]]) -> int:
    """Link the unsettled charges of each (provider, buyer, provider
    statement, buyer statement) to the two statements: one UPDATE joined to
    that mapping (a hash join over one scan of the charges; the ORM cannot
    write UPDATE … FROM, and per-row subqueries are several times slower). Its
    WHERE clause is :func:`_unsettled`. A charge committed meanwhile by a pair
    not in the mapping waits for the next period."""
    qn = connection.ops.quote_name
    charge = qn(Charge._meta.db_table)
    periods = qn(SettlementPeriod._meta.db_table)
    # Whole numbers read from the database, formatted as integers: nothing to inject.
    mapping = ", ".join(f"({int(p)}, {int(b)}, {int(ps)}, {int(bs)})" for p, b, ps, bs in statements)
    sql = f"""
        WITH m (provider_id, buyer_id, provider_statement_id, buyer_statement_id) AS (VALUES {mapping})
        UPDATE {charge}
        SET provider_statement_id = m.provider_statement_id, buyer_statement_id = m.buyer_statement_id
        FROM m
        WHERE {charge}.provider_id = m.provider_id
          AND {charge}.buyer_id = m.buyer_id
          AND {charge}.provider_statement_id IS NULL
          AND {charge}.created_at < %s
          AND ({charge}.created_at >= %s OR EXISTS (
                SELECT 1 FROM {periods} p
                WHERE p.status = %s AND p.{qn("start")} <= {charge}.created_at AND p.{qn("end")} > {charge}.created_at))
    """  # noqa: S608
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [adapt(period.end), adapt(period.start), PeriodStatus.CLOSED.value])
        return cursor.rowcount


def _insert_lines(period: SettlementPeriod, link: str) -> int:
    """One line per (statement, lease) of the period's charges linked through
    ``link``: INSERT … SELECT … GROUP BY, so no charge row leaves the
    database. Sums of fen-exact amounts are exact; ROUND only keeps SQLite's
    floating-point sums on the fen."""
    qn = connection.ops.quote_name
    line = qn(StatementLine._meta.db_table)
    charge = qn(Charge._meta.db_table)
    statement = qn(SettlementStatement._meta.db_table)
    fk = qn(Charge._meta.get_field(link).column)
    sql = f"""
        INSERT INTO {line} (statement_id, lease_id, samples, ncu_hours, gross, commission, net)
        SELECT c.{fk}, c.lease_id, COUNT(*), ROUND(SUM(c.ncu_hours), 4), ROUND(SUM(c.gross), 2),
               ROUND(SUM(c.commission), 2), ROUND(SUM(c.provider_share), 2)
        FROM {charge} c JOIN {statement} s ON s.id = c.{fk}
        WHERE s.period_id = %s
        GROUP BY c.{fk}, c.lease_id
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [period.pk])
        return cursor.rowcount


def _total_from_lines(statements: QuerySet[SettlementStatement]) -> None:
    """Set each statement's totals to the sums of its lines, and what vouchers
    funded to the sum over its charges: one UPDATE per role."""
    per_statement = StatementLine.objects.filter(statement=OuterRef("pk")).order_by().values("statement")
    money = DecimalField(max_digits=18, decimal_places=2)

    def total(rows: QuerySet, column: str, output: Any) -> Coalesce:
        summed = rows.annotate(total=Sum(column)).values("total")
        return Coalesce(Subquery(summed, output_field=output), Value(0), output_field=output)

    for role, link in ((StatementRole.PROVIDER, "provider_statement"), (StatementRole.BUYER, "buyer_statement")):
        charges = Charge.objects.filter(**{link: OuterRef("pk")}).order_by().values(link)
        statements.filter(role=role).update(
            gross=total(per_statement, "gross", money),
            commission=total(per_statement, "commission", money),
            net=total(per_statement, "net", money),
            samples=total(per_statement, "samples", IntegerField()),
            voucher_funded=total(charges, "voucher_funded", money),
        )


def settlement_close_due(*, now: datetime | None = None, actor: User | None = None) -> list[SettlementPeriod]:
    """Close every elapsed period not closed yet, oldest first: from the
    period of the oldest charge not on a statement (or the previous period if
    there is none) up to the period running at ``now``. Parts of a period that
    another closed period already covers (a period closed by hand, or a
    different period length configured earlier) are left out."""
    now = _aware(now or timezone.now(), "now")
    hours = period_hours()
    due_end, _ = period_containing(now, hours=hours)
    oldest = (
        Charge.objects.filter(provider_statement__isnull=True, created_at__lt=due_end)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    cursor = period_containing(oldest, hours=hours)[0] if oldest else due_end - timedelta(hours=hours)
    closed: list[SettlementPeriod] = []
    while cursor < due_end:
        window_end = min(period_containing(cursor, hours=hours)[1], due_end)
        existing = SettlementPeriod.objects.filter(
            status=PeriodStatus.CLOSED, start__lt=window_end, end__gt=cursor
        ).order_by("start")
        for start, end in _uncovered(cursor, window_end, list(existing)):
            closed.append(settlement_close(start=start, end=end, actor=actor))
        cursor = window_end
    return closed


# --- review ----------------------------------------------------------------------------------------------------------


def _require_operator(actor: User | None) -> None:
    if actor is None or not (getattr(actor, "role", "") == Role.OPERATOR or getattr(actor, "is_superuser", False)):
        raise Forbidden("Only platform operators review settlement statements.")


def _check_transition(statement: SettlementStatement, to: str) -> None:
    if to not in STATEMENT_TRANSITIONS[statement.status]:
        raise IllegalTransition(entity=f"Statement {statement.pk}", current=statement.status, target=to)


def _reason(reason: str, *, required: bool) -> str:
    reason = (reason or "").strip()
    if required and not reason:
        raise InvalidInput("say why", field="reason")
    return reason


def _amount(amount: Decimal) -> Decimal:
    try:
        value = as_decimal(amount, "amount")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(str(exc), field="amount") from None
    if not is_fen_exact(value):
        raise InvalidInput(f"{value} is not a whole number of fen", field="amount")
    return value


def statement_transition(
    *, statement: SettlementStatement, to: str, actor: User | None, reason: str = "", data: dict[str, Any] | None = None
) -> SettlementStatement:
    """Move a statement to ``to`` if the transition table allows it from its
    current state: a conditional UPDATE (two callers cannot both win), audited."""
    with transaction.atomic():
        current = SettlementStatement.objects.filter(pk=statement.pk).values_list("status", flat=True).first()
        if current is None or to not in STATEMENT_TRANSITIONS[current]:
            raise IllegalTransition(entity=f"Statement {statement.pk}", current=current or "missing", target=to)
        if not SettlementStatement.objects.filter(pk=statement.pk, status=current).update(status=to):
            raise IllegalTransition(entity=f"Statement {statement.pk}", current=current, target=to)
        audit_record(
            actor=actor,
            action=f"statement.{to}",
            entity=statement,
            from_state=current,
            to_state=to,
            reason=reason,
            data=data,
        )
    statement.refresh_from_db()
    return statement


def statement_approve(*, statement: SettlementStatement, actor: User, reason: str = "") -> SettlementStatement:
    """Approve a provider statement and pay it out: any amount held back
    under dispute goes back to the provider's payable account, then what the
    statement makes payable goes to bank clearing (key
    ``payout:statement:<id>``) and the statement is paid. A zero payable pays
    nothing but still ends paid. Approving a paid statement is refused."""
    _require_operator(actor)
    reason = _reason(reason, required=False)
    with transaction.atomic():
        locked = SettlementStatement.objects.select_for_update().get(pk=statement.pk)
        org = locked.organisation_id
        payable_code = account_code(org, AccountKind.PROVIDER_PAYABLE)
        if locked.status != StatementStatus.APPROVED:
            locked = statement_transition(statement=locked, to=StatementStatus.APPROVED, actor=actor, reason=reason)
        released = locked.disputed_amount
        if released > 0:
            tx, _ = post(
                ledger.transfer(
                    kind=ledger.TransactionKind.DISPUTE_RESOLVED,
                    source=account_code(org, AccountKind.PROVIDER_DISPUTED),
                    destination=payable_code,
                    amount=released,
                    reference=f"statement:{locked.pk}",
                    memo=f"Dispute on statement {statement_number(locked)} resolved: {released} CNY released.",
                ),
                actor=actor,
                data={"statement": locked.pk},
            )
            SettlementStatement.objects.filter(pk=locked.pk).update(disputed_amount=F("disputed_amount") - released)
            audit_record(
                actor=actor,
                action="statement.dispute_resolved",
                entity=locked,
                reason=reason,
                data={"amount": str(released), "transaction": tx.key},
            )
            locked.refresh_from_db()
        amount = locked.payable
        if amount < 0:
            raise Conflict(f"statement {locked.pk} makes {amount} CNY payable; it cannot be paid out", field="amount")
        data: dict[str, Any] = {"amount": str(amount), "transaction": None}
        if amount > 0:
            tx, _ = post(
                ledger.payout(
                    provider_payable=payable_code,
                    clearing=BANK_CLEARING,
                    amount=amount,
                    reference=f"statement:{locked.pk}",
                ),
                actor=actor,
                data={"statement": locked.pk},
            )
            data["transaction"] = tx.key
        locked = statement_transition(statement=locked, to=StatementStatus.PAID, actor=actor, reason=reason, data=data)
    return locked


def statement_dispute(
    *, statement: SettlementStatement, actor: User, reason: str, amount: Decimal
) -> SettlementStatement:
    """Dispute part or all of what a pending statement makes payable, saying
    why: the amount moves from the provider's payable account to its disputed
    account and is held back until the statement is approved."""
    _require_operator(actor)
    reason = _reason(reason, required=True)
    amount = _amount(amount)
    with transaction.atomic():
        locked = SettlementStatement.objects.select_for_update().get(pk=statement.pk)
        _check_transition(locked, StatementStatus.DISPUTED)
        if amount <= 0 or amount > locked.payable:
            raise InvalidInput(
                f"a dispute is more than zero and at most the {locked.payable} CNY payable", field="amount"
            )
        org = locked.organisation_id
        tx, _ = post(
            ledger.transfer(
                kind=ledger.TransactionKind.DISPUTE,
                source=account_code(org, AccountKind.PROVIDER_PAYABLE),
                destination=account_code(org, AccountKind.PROVIDER_DISPUTED),
                amount=amount,
                reference=f"statement:{locked.pk}",
                memo=f"{amount} CNY of statement {statement_number(locked)} held back under dispute: {reason}",
            ),
            actor=actor,
            data={"statement": locked.pk, "reason": reason},
        )
        SettlementStatement.objects.filter(pk=locked.pk).update(disputed_amount=F("disputed_amount") + amount)
        locked = statement_transition(
            statement=locked,
            to=StatementStatus.DISPUTED,
            actor=actor,
            reason=reason,
            data={"amount": str(amount), "transaction": tx.key},
        )
    return locked


def statement_adjust(
    *, statement: SettlementStatement, actor: User, amount: Decimal, reason: str, reference: str = ""
) -> SettlementStatement:
    """Credit (positive ``amount``) or debit (negative) a statement under
    review, saying why: a ledger transaction between the platform's
    adjustments account and the provider's payable account, added to the
    statement's adjustments. A debit cannot exceed what the statement makes
    payable. ``reference`` (optional) makes a retry of the same adjustment a
    no-op; without it every call is a new adjustment."""
    _require_operator(actor)
    reason = _reason(reason, required=True)
    amount = _amount(amount)
    if amount == 0:
        raise InvalidInput("an adjustment is a credit (positive) or a debit (negative), not zero", field="amount")
    reference = (reference or "").strip()
    with transaction.atomic():
        locked = SettlementStatement.objects.select_for_update().get(pk=statement.pk)
        if locked.status not in ADJUSTABLE:
            raise IllegalTransition(entity=f"Statement {locked.pk}", current=locked.status, target="adjusted")
        if amount < 0 and -amount > locked.payable:
            raise InvalidInput(
                f"a debit of {-amount} CNY exceeds the {locked.payable} CNY the statement makes payable",
                field="amount",
            )
        prefix = f"statement:{locked.pk}:"
        if reference:
            event = f"{prefix}ref:{reference}"
        else:
            earlier = LedgerTransaction.objects.filter(
                kind=ledger.TransactionKind.ADJUSTMENT, key__startswith=f"{ledger.TransactionKind.ADJUSTMENT}:{prefix}"
            ).count()
            event = f"{prefix}{earlier + 1}"
        payable = account_code(locked.organisation_id, AccountKind.PROVIDER_PAYABLE)
        credit = amount > 0
        tx, created = post(
            ledger.transfer(
                kind=ledger.TransactionKind.ADJUSTMENT,
                source=ADJUSTMENTS if credit else payable,
                destination=payable if credit else ADJUSTMENTS,
                amount=abs(amount),
                reference=event,
                memo=f"{'Credit' if credit else 'Debit'} of {abs(amount)} CNY on statement "
                f"{statement_number(locked)}: {reason}",
            ),
            actor=actor,
            data={"statement": locked.pk, "amount": str(amount), "reason": reason},
        )
        if created:
            SettlementStatement.objects.filter(pk=locked.pk).update(adjustments=F("adjustments") + amount)
            audit_record(
                actor=actor,
                action="statement.adjusted",
                entity=locked,
                from_state=locked.status,
                to_state=locked.status,
                reason=reason,
                data={"amount": str(amount), "transaction": tx.key},
            )
        locked.refresh_from_db()
    return locked


# --- reads -----------------------------------------------------------------------------------------------------------


def statement_number(statement: SettlementStatement) -> str:
    """The number printed on a statement: ``CX-ST-<period start, CST date>-<id>``."""
    start = statement.period.start.astimezone(pricing.CST)
    return f"CX-ST-{start:%Y%m%d}-{statement.pk:06d}"


def statements_visible_to(user: User) -> QuerySet[SettlementStatement]:
    """Operators see every statement; providers and buyers their own organisation's."""
    qs = SettlementStatement.objects.select_related("period", "organisation")
    if getattr(user, "role", "") == Role.OPERATOR:
        return qs
    return qs.filter(organisation_id=getattr(user, "organisation_id", None) or -1)


def statement_lines(statement: SettlementStatement) -> QuerySet[StatementLine]:
    return statement.lines.select_related("lease__pool").order_by("lease_id")


def statement_history(statement: SettlementStatement) -> QuerySet[AuditEntry]:
    """The statement's audit trail, oldest first: creation, review, payout."""
    return AuditEntry.objects.filter(entity_type=SettlementStatement._meta.label_lower, entity_id=str(statement.pk))


@dataclass(frozen=True)
class Payout:
    key: str
    amount: Decimal
    at: datetime


def statement_payout(statement: SettlementStatement) -> Payout | None:
    """The payout transaction of a paid statement, if it paid anything."""
    key = f"{ledger.TransactionKind.PAYOUT}:statement:{statement.pk}"
    tx = LedgerTransaction.objects.filter(key=key).first()
    if tx is None:
        return None
    amount = tx.postings.filter(amount__gt=0).aggregate(total=Sum("amount"))["total"] or ZERO
    return Payout(key=tx.key, amount=to_fen(amount), at=tx.created_at)
