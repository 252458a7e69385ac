"""A job's full story, for ``GET /api/v1/trace/<job id>``: submission, every
scheduling decision with its reason, leases and their state changes, usage,
charges, voucher redemptions, settlement statements and payouts, in time
order. Read-only; a handful of queries whatever the job's size.

Who sees what:

* operators: everything;
* the buyer organisation that owns the job: everything about the job, its
  own statements (buyer role) and nothing of the providers' statements or
  payouts;
* a provider whose pool ran one of the job's leases: the job's submission,
  the decisions that placed the job on its pools, its own leases with their
  usage, charges and voucher redemptions, its own statements and payouts;
  not the buyer's escrow, not other providers' leases. Users of other
  organisations are named only by their role;
* anyone else: 404, as if the job did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q

from billing.models import Charge, Hold, SettlementStatement, StatementLine, StatementRole, UsageSample
from billing.settlement import statement_number, statement_payout
from core.audit import SYSTEM
from core.errors import NotFound
from core.models import AuditEntry
from core.permissions import role_of
from scheduler.models import Job, Lease, Rating
from vouchers.models import ChargeSubsidy

OPERATOR, BUYER, PROVIDER = "operator", "buyer", "provider"
ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str
    action: str
    summary: str
    actor: str = ""
    lease: int | None = None
    from_state: str = ""
    to_state: str = ""
    reason: str = ""
    amount: Decimal | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobTrace:
    job: Job
    scope: str
    leases: list[Lease]
    usage: dict[int, dict[str, Any]]
    holds: dict[int, Any]
    statements: list[dict[str, Any]]
    events: list[Event]
    totals: dict[str, Decimal]


def _scope(user: Any, job: Job) -> str | None:
    role = role_of(user)
    org = getattr(user, "organisation_id", None)
    if role == OPERATOR:
        return OPERATOR
    if role == BUYER and org == job.buyer_id:
        return BUYER
    if role == PROVIDER and job.leases.filter(pool__site__provider_id=org).exists():
        return PROVIDER
    return None


def _actor_label(entry: AuditEntry, scope: str, org: int | None) -> str:
    if scope != PROVIDER or entry.actor_id is None or entry.actor.organisation_id == org:
        return entry.actor_label
    return role_of(entry.actor) or "user"


def job_trace(*, user: Any, job_id: int) -> JobTrace:
    job = Job.objects.select_related("buyer").filter(pk=job_id).first()
    scope = _scope(user, job) if job is not None else None
    if job is None or scope is None:
        raise NotFound("no job of yours has this id", field="job")
    org = getattr(user, "organisation_id", None)

    leases_qs = job.leases.select_related("pool__site__provider").order_by("id")
    if scope == PROVIDER:
        leases_qs = leases_qs.filter(pool__site__provider_id=org)
    leases = list(leases_qs)
    lease_ids = [lease.pk for lease in leases]
    holds: dict[int, Hold] = {}
    if scope != PROVIDER:
        holds = {hold.lease_id: hold for hold in Hold.objects.filter(lease_id__in=lease_ids)}

    samples = list(UsageSample.objects.filter(lease_id__in=lease_ids).order_by("received_at", "id"))
    charges = list(Charge.objects.filter(lease_id__in=lease_ids).order_by("created_at", "id"))
    subsidies = list(
        ChargeSubsidy.objects.filter(charge__lease_id__in=lease_ids)
        .select_related("programme", "charge")
        .order_by("created_at", "id")
    )
    lines = StatementLine.objects.filter(lease_id__in=lease_ids).select_related(
        "statement__period", "statement__organisation"
    )
    if scope == BUYER:
        lines = lines.filter(statement__role=StatementRole.BUYER, statement__organisation_id=org)
    elif scope == PROVIDER:
        lines = lines.filter(statement__role=StatementRole.PROVIDER, statement__organisation_id=org)
    statements = _statements(list(lines.order_by("statement_id", "lease_id")))

    events: list[Event] = []
    events += _audit_events(job, scope, org, leases, holds, charges, subsidies, statements)
    events += [_usage_event(sample) for sample in samples]
    events += [_charge_event(charge, scope) for charge in charges]
    events += [_subsidy_event(subsidy) for subsidy in subsidies]
    for statement in statements:
        events.append(statement["event"])
        if statement["payout"] is not None:
            events.append(statement["payout_event"])
    events.sort(key=lambda event: event.at)  # stable: ties keep the order they were gathered in

    usage = {
        lease.pk: _usage_summary([sample for sample in samples if sample.lease_id == lease.pk]) for lease in leases
    }
    return JobTrace(
        job=job,
        scope=scope,
        leases=leases,
        usage=usage,
        holds=holds,
        statements=statements,
        events=events,
        totals=_totals(charges, scope),
    )


def _usage_summary(samples: list[UsageSample]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "ncu_hours": sum((s.ncu_hours for s in samples), Decimal("0.0000")),
        "device_seconds": sum((s.device_seconds for s in samples), Decimal("0.000")),
        "energy_kwh": sum((s.energy_kwh or Decimal(0) for s in samples), Decimal("0.000")),
        "first_start": min((s.start for s in samples), default=None),
        "last_end": max((s.end for s in samples), default=None),
        "charged": sum(1 for s in samples if s.charged),
    }


def _totals(charges: list[Charge], scope: str) -> dict[str, Decimal | None]:
    """Sums of the charges; how the buyer paid (hold, wallet, debt) is not the provider's to see."""

    def total(name: str) -> Decimal:
        return sum((getattr(charge, name) for charge in charges), ZERO)

    buyers_side = scope != PROVIDER
    return {
        "ncu_hours": sum((charge.ncu_hours for charge in charges), Decimal("0.0000")),
        "gross": total("gross"),
        "voucher_funded": total("voucher_funded"),
        "buyer_paid": total("from_hold") + total("from_available") if buyers_side else None,
        "owed": total("owed") if buyers_side else None,
        "commission": total("commission"),
        "provider_share": total("provider_share"),
    }


def _statements(lines: list[StatementLine]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        statement: SettlementStatement = line.statement
        payout = statement_payout(statement) if statement.role == StatementRole.PROVIDER else None
        number = statement_number(statement)
        item: dict[str, Any] = {
            "statement": statement,
            "number": number,
            "line": line,
            "payout": payout,
            "event": Event(
                at=statement.created_at,
                kind="statement",
                actor=SYSTEM,
                action="statement.listed",
                summary=(
                    f"{statement.role} statement {number} for {statement.period} lists lease {line.lease_id}: "
                    f"{line.samples} samples, {line.gross} CNY gross"
                ),
                lease=line.lease_id,
                amount=line.gross,
                data={
                    "statement": statement.pk,
                    "role": statement.role,
                    "status": statement.status,
                    "net": str(line.net),
                },
            ),
        }
        if payout is not None:
            item["payout_event"] = Event(
                at=payout.at,
                kind="payout",
                actor=SYSTEM,
                action="statement.paid_out",
                summary=f"statement {number} paid out: {payout.amount} CNY to {statement.organisation.name}",
                amount=payout.amount,
                data={"statement": statement.pk, "transaction": payout.key},
            )
        out.append(item)
    return out


def _audit_events(
    job: Job,
    scope: str,
    org: int | None,
    leases: list[Lease],
    holds: dict[int, Any],
    charges: list[Charge],
    subsidies: list[ChargeSubsidy],
    statements: list[dict[str, Any]],
) -> list[Event]:
    lease_ids = {lease.pk for lease in leases}
    rating_lease = {
        str(pk): lease_id
        for pk, lease_id in Rating.objects.filter(lease_id__in=lease_ids).values_list("pk", "lease_id")
    }
    hold_lease = {str(hold.pk): lease_id for lease_id, hold in holds.items()}
    charge_lease = {str(charge.pk): charge.lease_id for charge in charges}
    subsidy_lease = {str(subsidy.pk): subsidy.charge.lease_id for subsidy in subsidies}
    about: dict[type, Any] = {
        Job: [str(job.pk)],
        Lease: [str(pk) for pk in lease_ids],
        Hold: hold_lease,
        Rating: rating_lease,
        Charge: charge_lease,
        ChargeSubsidy: subsidy_lease,
        SettlementStatement: [str(item["statement"].pk) for item in statements],
    }
    query = Q()
    for model, ids in about.items():
        if ids:
            query |= Q(entity_type=model._meta.label_lower, entity_id__in=list(ids))
    entries = AuditEntry.objects.filter(query).select_related("actor").order_by("at", "id")
    by_entity = {
        Hold._meta.label_lower: hold_lease,
        Rating._meta.label_lower: rating_lease,
        Charge._meta.label_lower: charge_lease,
        ChargeSubsidy._meta.label_lower: subsidy_lease,
    }
    events = []
    for entry in entries:
        lease = _lease_of(entry, by_entity)
        about_job = entry.entity_type == Job._meta.label_lower and entry.action != "job.submitted"
        if scope == PROVIDER and about_job and lease not in lease_ids:
            continue  # decisions about other providers' leases (or the buyer's alone) are not this provider's
        amount = entry.data.get("amount") if isinstance(entry.data, dict) else None
        events.append(
            Event(
                at=entry.at,
                kind="audit",
                action=entry.action,
                summary=_audit_summary(entry),
                actor=_actor_label(entry, scope, org),
                lease=lease,
                from_state=entry.from_state,
                to_state=entry.to_state,
                reason=entry.reason,
                amount=Decimal(amount) if isinstance(amount, str) and _is_decimal(amount) else None,
                data=entry.data if isinstance(entry.data, dict) else {},
            )
        )
    return events


def _is_decimal(text: str) -> bool:
    """A money amount recorded in an entry's data (finite, within the ledger's 18 digits)."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        return False
    return value.is_finite() and abs(value) < Decimal(10) ** 16


def _lease_of(entry: AuditEntry, by_entity: dict[str, dict[str, int]]) -> int | None:
    """The lease an audit entry is about, if any."""
    if entry.entity_type == Lease._meta.label_lower:
        return int(entry.entity_id)
    if entry.entity_type == Job._meta.label_lower:
        lease = entry.data.get("lease") if isinstance(entry.data, dict) else None
        return lease if isinstance(lease, int) else None
    return by_entity.get(entry.entity_type, {}).get(entry.entity_id)


def _audit_summary(entry: AuditEntry) -> str:
    what = entry.action.replace("_", " ").replace(".", " ")
    if entry.to_state:
        what += f" ({entry.from_state} → {entry.to_state})" if entry.from_state else f" ({entry.to_state})"
    return f"{what}: {entry.reason}" if entry.reason else what


def _usage_event(sample: UsageSample) -> Event:
    return Event(
        at=sample.received_at,
        kind="usage",
        action="usage.reported",
        actor="agent",
        summary=(
            f"usage #{sample.sequence} of lease {sample.lease_id}: {sample.ncu_hours} NCU-hours "
            f"from {sample.start:%H:%M:%S} to {sample.end:%H:%M:%S} UTC"
        ),
        lease=sample.lease_id,
        data={
            "sample": sample.pk,
            "sequence": sample.sequence,
            "start": sample.start.isoformat(),
            "end": sample.end.isoformat(),
            "ncu_hours": str(sample.ncu_hours),
            "device_seconds": str(sample.device_seconds),
            "energy_kwh": None if sample.energy_kwh is None else str(sample.energy_kwh),
            "charged": sample.charged,
        },
    )


def _charge_event(charge: Charge, scope: str) -> Event:
    """A charge; the provider sees what it earned, not how the buyer paid (hold, wallet, debt)."""
    summary = (
        f"charged {charge.gross} CNY for {charge.ncu_hours} NCU-hours at {charge.unit_price.normalize()} "
        f"CNY per NCU-hour: {charge.voucher_funded} by vouchers"
    )
    data = {
        "charge": charge.pk,
        "sample": charge.sample_id,
        "commission": str(charge.commission),
        "provider_share": str(charge.provider_share),
        "voucher_funded": str(charge.voucher_funded),
    }
    if scope != PROVIDER:
        summary += f", {charge.from_hold} from the hold, {charge.from_available} from the wallet, {charge.owed} owed"
        data |= {
            "from_hold": str(charge.from_hold),
            "from_available": str(charge.from_available),
            "owed": str(charge.owed),
            "transaction": charge.transaction_id,
        }
    else:
        summary += f"; {charge.provider_share} to you after {charge.commission} commission"
    return Event(
        at=charge.created_at,
        kind="charge",
        actor=SYSTEM,
        action="charge.captured",
        summary=summary,
        lease=charge.lease_id,
        amount=charge.gross,
        data=data,
    )


def _subsidy_event(subsidy: ChargeSubsidy) -> Event:
    return Event(
        at=subsidy.created_at,
        kind="voucher_redemption",
        actor=SYSTEM,
        action="voucher.redeemed",
        summary=(
            f"voucher {subsidy.voucher_id} of {subsidy.programme.name} paid {subsidy.amount} CNY "
            f"({subsidy.ratio} of charge {subsidy.charge_id}); {subsidy.get_outcome_display().lower()}"
        ),
        lease=subsidy.charge.lease_id,
        to_state=subsidy.outcome,
        reason=subsidy.outcome_reason,
        amount=subsidy.amount,
        data={
            "subsidy": subsidy.pk,
            "voucher": subsidy.voucher_id,
            "programme": subsidy.programme_id,
            "charge": subsidy.charge_id,
            "refunded": str(subsidy.refunded),
            "statement": subsidy.statement_id,
        },
    )
