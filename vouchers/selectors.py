"""Read-side queries for voucher programmes, applications, vouchers and
redemption statements, scoped to the caller; and the inputs of the pure
subsidy decision (:mod:`vouchers.domain.subsidy`) built from the database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.utils import timezone

from billing.domain.money import to_fen
from billing.domain.pricing import CST
from billing.models import Account, Posting
from marketplace.domain.credit_code import CreditCodeError, validate_credit_code
from marketplace.domain.geography import CITIES
from marketplace.models import Organisation, ResourcePool, Role, User
from vouchers.domain import movements, subsidy
from vouchers.models import (
    ApplicationStatus,
    ChargeSubsidy,
    OrganisationRelation,
    ProgrammeStatus,
    RedemptionStatement,
    RedemptionStatus,
    SubsidyOutcome,
    Voucher,
    VoucherApplication,
    VoucherProgramme,
    VoucherStatus,
)

ZERO = Decimal("0.00")


def _is_operator(user: object) -> bool:
    return getattr(user, "role", "") == Role.OPERATOR


# --- programmes ------------------------------------------------------------------------------------------------------

RULE_FIELDS = (
    "name",
    "ratio_rules",
    "flag",
    "per_org_yearly_cap",
    "per_charge_cap",
    "eligible_categories",
    "sme_only",
    "registration_cities",
    "registration_regions",
    "eligible_hubs",
    "eligible_classes",
    "application_opens",
    "application_closes",
    "stacking_group",
    "combined_max_ratio",
)


def programmes_with_partners() -> QuerySet[VoucherProgramme]:
    return VoucherProgramme.objects.prefetch_related("eligible_providers", "eligible_sites")


def programme_rules(programme: VoucherProgramme) -> subsidy.ProgrammeRules:
    """The programme's rules for the pure core (prefetch its partners and sites)."""
    data = {name: getattr(programme, name) for name in RULE_FIELDS}
    return subsidy.rules_from_data(
        programme.pk,
        data,
        providers=[p.pk for p in programme.eligible_providers.all()],
        sites=[s.pk for s in programme.eligible_sites.all()],
    )


def programmes_visible_to(user: object, *, now: datetime | None = None) -> QuerySet[VoucherProgramme]:
    """Operators see every programme; everyone else (signed in or not) the
    active programmes whose application window is open."""
    qs = programmes_with_partners().order_by("application_closes", "id")
    if _is_operator(user):
        return qs
    return programmes_open(now=now)


def programmes_open(*, now: datetime | None = None) -> QuerySet[VoucherProgramme]:
    now = now or timezone.now()
    return programmes_with_partners().filter(
        status=ProgrammeStatus.ACTIVE, application_opens__lte=now, application_closes__gt=now
    )


def budget_available(programme_id: int) -> Decimal:
    account = Account.objects.filter(code=movements.budget_account(programme_id)).first()
    return account.balance if account else ZERO


def budgets_available(programme_ids: Iterable[int]) -> dict[int, Decimal]:
    codes = {movements.budget_account(pid): pid for pid in programme_ids}
    found = dict(Account.objects.filter(code__in=codes).values_list("code", "balance"))
    return {pid: found.get(code, ZERO) for code, pid in codes.items()}


# --- years -----------------------------------------------------------------------------------------------------------


def year_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The calendar year (China Standard Time) holding ``at``: caps are yearly."""
    local = at.astimezone(CST)
    start = local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, start.replace(year=start.year + 1)


def granted_this_year(*, organisation_id: int, programme_id: int, at: datetime) -> Decimal:
    start, end = year_bounds(at)
    total = Voucher.objects.filter(
        holder_id=organisation_id, programme_id=programme_id, issued_at__gte=start, issued_at__lt=end
    ).aggregate(total=Sum("amount"))["total"]
    return to_fen(total or ZERO)


def granted_this_year_by_programme(*, organisation_id: int, at: datetime) -> dict[int, Decimal]:
    start, end = year_bounds(at)
    rows = (
        Voucher.objects.filter(holder_id=organisation_id, issued_at__gte=start, issued_at__lt=end)
        .values("programme_id")
        .annotate(total=Sum("amount"))
    )
    return {row["programme_id"]: to_fen(row["total"]) for row in rows}


def redeemed_this_year(*, buyer_id: int, programme_ids: Iterable[int], at: datetime) -> dict[int, Decimal]:
    """Per programme, what its vouchers paid for the buyer this year, net of
    refunds; redemptions rejected and clawed back do not count."""
    start, end = year_bounds(at)
    rows = (
        ChargeSubsidy.objects.filter(
            buyer_id=buyer_id, programme_id__in=list(programme_ids), created_at__gte=start, created_at__lt=end
        )
        .exclude(outcome=SubsidyOutcome.CLAWED_BACK)
        .values("programme_id")
        .annotate(total=Sum(F("amount") - F("refunded")))
    )
    return {row["programme_id"]: to_fen(row["total"] or ZERO) for row in rows}


# --- applicants and related parties ----------------------------------------------------------------------------------


def applicant_facts(organisation: Organisation, *, flags: Iterable[str] = ()) -> subsidy.Applicant:
    try:
        validate_credit_code(organisation.credit_code)
        valid = True
    except CreditCodeError:
        valid = False
    city = CITIES.get(organisation.city)
    return subsidy.Applicant(
        organisation_id=organisation.pk,
        category=organisation.category,
        is_sme=organisation.is_sme,
        city=organisation.city,
        region=city.region if city else "",
        credit_code_valid=valid,
        flags=frozenset(flags),
    )


def related_organisations(organisation_id: int) -> set[int]:
    """Organisations with a declared relation to this one, directly or through
    a common related organisation (two subsidiaries of one parent).

    A relation through a common organisation counts only where each of its two
    relations was declared by an operator or by the organisation at that end
    (the subsidiaries each naming their parent): an organisation declaring
    itself related to two others does not make those two related."""
    direct: set[int] = set()
    middles: set[int] = set()
    for (_self, other), by_operator, by_organisation in _relations_of({organisation_id}):
        direct.add(other)
        if by_operator or by_organisation in (None, organisation_id):
            middles.add(other)
    through = {
        far
        for (_middle, far), by_operator, by_organisation in _relations_of(middles)
        if by_operator or by_organisation in (None, far)
    }
    return (direct | through) - {organisation_id}


def _relations_of(ids: set[int]) -> list[tuple[tuple[int, int], bool, int | None]]:
    """Relations touching ``ids``: ((the organisation in ``ids``, the other one),
    declared by an operator, the declaring user's organisation (None if loaded by the platform))."""
    if not ids:
        return []
    pairs = OrganisationRelation.objects.filter(Q(organisation_a_id__in=ids) | Q(organisation_b_id__in=ids))
    found = []
    for a, b, role, by in pairs.values_list(
        "organisation_a_id", "organisation_b_id", "declared_by__role", "declared_by__organisation_id"
    ):
        declared = (role == Role.OPERATOR, by if role is not None else None)
        if a in ids:
            found.append(((a, b), *declared))
        if b in ids:
            found.append(((b, a), *declared))
    return found


def parties_related(buyer_id: int, provider_id: int) -> bool:
    """Buyer and provider are the same organisation, share a credit code, or are related (declared)."""
    if buyer_id == provider_id:
        return True
    codes = dict(Organisation.objects.filter(pk__in=(buyer_id, provider_id)).values_list("pk", "credit_code"))
    if codes.get(buyer_id) and codes.get(buyer_id) == codes.get(provider_id):
        return True
    return provider_id in related_organisations(buyer_id)


def relations_visible_to(user: User) -> QuerySet[OrganisationRelation]:
    qs = OrganisationRelation.objects.select_related("organisation_a", "organisation_b")
    if _is_operator(user):
        return qs
    org = getattr(user, "organisation_id", None)
    return qs.filter(Q(organisation_a_id=org) | Q(organisation_b_id=org))


# --- charges ---------------------------------------------------------------------------------------------------------


def pool_facts(pool: ResourcePool) -> dict[str, Any]:
    """What a voucher decision needs about the compute: class, domestic device, provider, site, hub."""
    device = pool.accelerator_model if pool.accelerator_model_id else pool.cpu_model
    return {
        "compute_class": pool.compute_class,
        "domestic": bool(device.domestic),
        "provider_id": pool.site.provider_id,
        "site_id": pool.site_id,
        "hub": pool.site.hub,
    }


def voucher_states(vouchers: Iterable[Voucher], balances: dict[int, Decimal]) -> list[subsidy.VoucherState]:
    return [
        subsidy.VoucherState(
            voucher_id=v.pk,
            programme_id=v.programme_id,
            balance=balances.get(v.pk, ZERO),
            valid_from=v.valid_from,
            expires_at=v.expires_at,
            flags=frozenset(v.flags),
        )
        for v in vouchers
    ]


def voucher_balances(voucher_ids: Iterable[int]) -> dict[int, Decimal]:
    codes = {movements.voucher_account(vid): vid for vid in voucher_ids}
    found = dict(Account.objects.filter(code__in=codes).values_list("code", "balance"))
    return {vid: found.get(code, ZERO) for code, vid in codes.items()}


def usable_vouchers(*, buyer_id: int, at: datetime) -> QuerySet[Voucher]:
    return Voucher.objects.filter(
        holder_id=buyer_id, status=VoucherStatus.ACTIVE, valid_from__lte=at, expires_at__gt=at
    ).order_by("id")


def decision_for(
    *, buyer_id: int, pool: ResourcePool, gross: Decimal, at: datetime, vouchers: list[Voucher] | None = None
) -> subsidy.SubsidyDecision:
    """The subsidy decision for ``gross`` of the buyer's spend on ``pool`` at
    ``at`` (the buyer's usable vouchers unless given, e.g. already locked)."""
    if vouchers is None:
        vouchers = list(usable_vouchers(buyer_id=buyer_id, at=at))
    if not vouchers or gross <= 0:
        return subsidy.SubsidyDecision(gross=gross)
    programme_ids = {v.programme_id for v in vouchers}
    programmes = {p.pk: programme_rules(p) for p in programmes_with_partners().filter(pk__in=programme_ids)}
    facts = pool_facts(pool)
    charge = subsidy.ChargeFacts(
        gross=gross,
        at=at,
        related_parties=parties_related(buyer_id, facts["provider_id"]),
        yearly_used=redeemed_this_year(buyer_id=buyer_id, programme_ids=programme_ids, at=at),
        **facts,
    )
    states = voucher_states(vouchers, voucher_balances(v.pk for v in vouchers))
    return subsidy.decide(charge, states, programmes)


# --- applications and vouchers ---------------------------------------------------------------------------------------


def applications_visible_to(user: User) -> QuerySet[VoucherApplication]:
    """Operators see every application; an organisation its own."""
    qs = VoucherApplication.objects.select_related("programme", "applicant").prefetch_related("documents")
    if _is_operator(user):
        return qs
    return qs.filter(applicant_id=getattr(user, "organisation_id", None))


def vouchers_visible_to(user: User) -> QuerySet[Voucher]:
    """Operators see every voucher; an organisation its own."""
    qs = Voucher.objects.select_related("programme", "holder", "account")
    if _is_operator(user):
        return qs
    return qs.filter(holder_id=getattr(user, "organisation_id", None))


# --- eligibility summary ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgrammeEligibility:
    programme: VoucherProgramme
    qualifies: bool
    up_to: Decimal
    reasons: tuple[str, ...]


def eligibility_summary(organisation: Organisation, *, now: datetime | None = None) -> list[ProgrammeEligibility]:
    """For each open programme: whether the organisation qualifies, up to how
    much it could still be granted this year, or why it does not qualify."""
    now = now or timezone.now()
    programmes = list(programmes_open(now=now))
    applicant = applicant_facts(organisation)
    granted = granted_this_year_by_programme(organisation_id=organisation.pk, at=now)
    budgets = budgets_available(p.pk for p in programmes)
    open_applications = set(
        VoucherApplication.objects.filter(
            applicant=organisation, status=ApplicationStatus.PENDING_REVIEW, programme__in=programmes
        ).values_list("programme_id", flat=True)
    )
    result = []
    for programme in programmes:
        rules = programme_rules(programme)
        reasons = list(subsidy.eligible(rules, applicant, at=now))
        budget = budgets.get(programme.pk, ZERO)
        up_to = subsidy.grantable(
            rules,
            requested=budget,
            granted_this_year=granted.get(programme.pk, ZERO),
            budget_available=budget,
        )
        if not reasons and up_to <= 0:
            reasons.append(
                "Your organisation has used this year's cap." if budget > 0 else "The budget is fully committed."
            )
        if programme.pk in open_applications:
            reasons.append("Your application to this programme is under review.")
        result.append(
            ProgrammeEligibility(
                programme=programme, qualifies=not reasons, up_to=up_to if not reasons else ZERO, reasons=tuple(reasons)
            )
        )
    return result


# --- redemption statements -------------------------------------------------------------------------------------------


def statements_for_operators() -> QuerySet[RedemptionStatement]:
    return RedemptionStatement.objects.select_related("programme").order_by("-period_start", "id")


def statement_subsidies(statement: RedemptionStatement) -> QuerySet[ChargeSubsidy]:
    return (
        ChargeSubsidy.objects.filter(statement=statement)
        .select_related(
            "buyer",
            "provider",
            "charge__sample",
            "charge__lease__pool",
            "charge__transaction",
            "charge__buyer_statement__period",
            "charge__provider_statement__period",
        )
        .order_by("id")
    )


def _statement_number(statement: Any) -> str:
    from billing.settlement import statement_number

    return statement_number(statement)


def evidence(subsidies: Iterable[ChargeSubsidy]) -> list[dict[str, Any]]:
    """The evidence pack of each redemption: the lease, its metered usage, the
    charge, the buyer's paid share as the ledger records it, the invoice
    (the buyer's settlement statement) and the delivery confirmation (the
    lease completed), and whether the provider has been paid."""
    subsidies = list(subsidies)
    transactions = {s.charge.transaction_id for s in subsidies}
    buyer_paid: dict[int, Decimal] = {}
    for tx, code, amount in Posting.objects.filter(transaction_id__in=transactions).values_list(
        "transaction_id", "account__code", "amount"
    ):
        if code.startswith("org:") and code.split(":")[2] in {"held", "available", "debt"}:
            buyer_paid[tx] = buyer_paid.get(tx, ZERO) - amount
    lines = []
    for s in subsidies:
        charge, lease, sample = s.charge, s.charge.lease, s.charge.sample
        invoice = charge.buyer_statement
        provider_statement = charge.provider_statement
        lines.append(
            {
                "subsidy": s.pk,
                "voucher": s.voucher_id,
                "outcome": s.outcome,
                "amount": s.amount,
                "refunded": s.refunded,
                "ratio": s.ratio,
                "buyer": {"id": s.buyer_id, "name": s.buyer.name, "credit_code": s.buyer.credit_code},
                "provider": {"id": s.provider_id, "name": s.provider.name, "identifier": s.provider.identifier},
                "lease": {
                    "id": lease.pk,
                    "pool": lease.pool.identifier,
                    "hub": s.hub,
                    "compute_class": s.compute_class,
                    "status": lease.status,
                    "start": lease.start,
                    "end": lease.end,
                },
                "usage": {
                    "sample": sample.pk,
                    "sequence": sample.sequence,
                    "start": sample.start,
                    "end": sample.end,
                    "ncu_hours": sample.ncu_hours,
                    "signed": bool(sample.signature),
                },
                "charge": {
                    "id": charge.pk,
                    "gross": charge.gross,
                    "commission": charge.commission,
                    "provider_share": charge.provider_share,
                    "voucher_funded": charge.voucher_funded,
                    "transaction": charge.transaction.key,
                },
                "buyer_paid": buyer_paid.get(charge.transaction_id, ZERO),
                "invoice_number": _statement_number(invoice) if invoice else "",
                "delivery_confirmed": lease.status == "completed",
                "provider_statement": _statement_number(provider_statement) if provider_statement else "",
                "provider_paid": bool(provider_statement and provider_statement.status == "paid"),
            }
        )
    return lines


def dashboard(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per programme: statements and applications waiting for an operator,
    and the age in hours of the oldest of each (the 兑付 clock)."""
    now = now or timezone.now()
    statements = {
        row["programme_id"]: row
        for row in RedemptionStatement.objects.filter(status=RedemptionStatus.PENDING_REVIEW)
        .values("programme_id")
        .annotate(n=Count("id"), oldest=Min("period_end"), amount=Sum("amount"))
    }
    applications = {
        row["programme_id"]: row
        for row in VoucherApplication.objects.filter(status=ApplicationStatus.PENDING_REVIEW)
        .values("programme_id")
        .annotate(n=Count("id"), oldest=Min("created_at"))
    }

    def hours(moment: datetime | None) -> Decimal | None:
        return None if moment is None else Decimal((now - moment).total_seconds() / 3600).quantize(Decimal("0.1"))

    rows = []
    for programme in VoucherProgramme.objects.order_by("id"):
        s = statements.get(programme.pk, {})
        a = applications.get(programme.pk, {})
        rows.append(
            {
                "programme": programme.pk,
                "name": programme.name,
                "statements_pending": s.get("n", 0),
                "statements_pending_amount": to_fen(s.get("amount") or ZERO),
                "oldest_statement_age_hours": hours(s.get("oldest")),
                "applications_pending": a.get("n", 0),
                "oldest_application_age_hours": hours(a.get("oldest")),
            }
        )
    return rows


# --- programme report ------------------------------------------------------------------------------------------------


def _ledger_into(kind: str, accounts: Iterable[str]) -> Decimal:
    """What transactions of ``kind`` put into ``accounts``."""
    total = Posting.objects.filter(transaction__kind=kind, account__code__in=list(accounts), amount__gt=0).aggregate(
        total=Sum("amount")
    )["total"]
    return total or ZERO


def programme_report(programme: VoucherProgramme) -> dict[str, Any]:
    """Budget, committed, redeemed, refunded, returned, forfeited, clawed back
    and outstanding, from the ledger and the redemptions; beneficiaries by
    buyer category and by the hub where the compute ran.

    The figures reconcile: deposited + clawed back = available + outstanding
    + redeemed − refunded + forfeited. ``net_spent`` is what the programme
    finally paid: redeemed − refunded − clawed back."""
    pid = programme.pk
    budget_code, lapsed_code = movements.budget_account(pid), movements.lapsed_account(pid)
    voucher_codes = [
        movements.voucher_account(v) for v in Voucher.objects.filter(programme=programme).values_list("pk", flat=True)
    ]
    subsidies = ChargeSubsidy.objects.filter(programme=programme)
    sums = subsidies.aggregate(
        redeemed=Sum("amount"),
        approved=Sum("amount", filter=Q(outcome=SubsidyOutcome.APPROVED)),
        pending=Sum("amount", filter=Q(outcome=SubsidyOutcome.PENDING)),
    )
    vouchers = Voucher.objects.filter(programme=programme)
    balances = dict(Account.objects.filter(code__in=[budget_code, lapsed_code]).values_list("code", "balance"))
    outstanding = Account.objects.filter(code__in=voucher_codes).aggregate(total=Sum("balance"))["total"] or ZERO
    redeemed = sums["redeemed"] or ZERO
    refunded = _ledger_into(movements.VoucherMovement.REFUND, [*voucher_codes, budget_code, lapsed_code])
    clawed_back = _ledger_into(movements.VoucherMovement.CLAWBACK, [budget_code])

    def breakdown(column: str) -> list[dict[str, Any]]:
        rows = (
            subsidies.values(column)
            .annotate(orgs=Count("buyer", distinct=True), total=Sum(F("amount") - F("refunded")))
            .order_by(column)
        )
        return [{"key": row[column], "organisations": row["orgs"], "amount": to_fen(row["total"])} for row in rows]

    report = {
        "programme": pid,
        "name": programme.name,
        "authority": programme.authority,
        "deposited": _ledger_into(movements.VoucherMovement.FUND, [budget_code]),
        "budget_available": balances.get(budget_code, ZERO),
        "committed": vouchers.aggregate(total=Sum("amount"))["total"] or ZERO,
        "vouchers_issued": vouchers.count(),
        "outstanding": outstanding,
        "redeemed": redeemed,
        "redeemed_approved": sums["approved"] or ZERO,
        "redeemed_pending_review": sums["pending"] or ZERO,
        "refunded": refunded,
        "returned": _ledger_into(movements.VoucherMovement.EXPIRE, [budget_code]),
        "forfeited": balances.get(lapsed_code, ZERO),
        "clawed_back": clawed_back,
        "net_spent": redeemed - refunded - clawed_back,
        "beneficiaries": subsidies.values("buyer").distinct().count(),
        "beneficiaries_by_category": breakdown("buyer__category"),
        "beneficiaries_by_hub": breakdown("hub"),
    }
    return {key: to_fen(value) if isinstance(value, Decimal) else value for key, value in report.items()}


def buyer_organisation(user: User) -> Organisation:
    return Organisation.objects.get(pk=user.organisation_id)
