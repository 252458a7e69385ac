"""The verbs of voucher programmes: create and fund a programme, declare
related parties, apply (申领) with automatic checks, review (审核), issue
(发放), choose vouchers for a job, and expire vouchers. Each is one database
transaction, audited; money moves only through ``billing.services.post``.

Redemption at charge time (核销) and refunds are in
:mod:`vouchers.redemption`; redemption statements and payout (兑付) in
:mod:`vouchers.statements`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from billing.domain.money import is_fen_exact
from billing.services import BANK_CLEARING, balance, post
from core.audit import audit_record
from core.errors import Conflict, Forbidden, IllegalTransition, InvalidInput, NotFound
from marketplace.models import Organisation, Role, Site, User, VerificationStatus
from scheduler.models import Job
from vouchers import selectors
from vouchers.domain import movements, subsidy
from vouchers.models import (
    ApplicantFlag,
    ApplicationDocument,
    ApplicationStatus,
    JobVoucherChoice,
    OrganisationRelation,
    ProgrammeStatus,
    RelationKind,
    Voucher,
    VoucherApplication,
    VoucherProgramme,
    VoucherStatus,
)

APPLICATION_TRANSITIONS: dict[str, set[str]] = {
    ApplicationStatus.PENDING_REVIEW: {
        ApplicationStatus.APPROVED,
        ApplicationStatus.REJECTED,
        ApplicationStatus.WITHDRAWN,
    },
    ApplicationStatus.APPROVED: set(),
    ApplicationStatus.REJECTED: set(),
    ApplicationStatus.WITHDRAWN: set(),
}
MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
MAX_DOCUMENTS = 10


class VoucherExhausted(Conflict):
    code = "voucher_budget_exhausted"


def require_operator(actor: User | None) -> None:
    if getattr(actor, "role", "") != Role.OPERATOR:
        raise Forbidden("only platform operators may do this")


def _amount(value: Decimal, field: str) -> Decimal:
    if value is None or value <= 0 or not is_fen_exact(value):
        raise InvalidInput("give a positive amount in whole fen", field=field)
    return value


# --- programmes ------------------------------------------------------------------------------------------------------

PROGRAMME_FIELDS = (
    "name",
    "authority",
    "description",
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
    "validity_days",
    "stacking_group",
    "combined_max_ratio",
    "return_on_expiry",
    "clawback_rule",
)


def programme_create(
    *,
    actor: User | None,
    values: dict[str, Any],
    providers: Iterable[Organisation] = (),
    sites: Iterable[Site] = (),
    budget: Decimal,
    funding_reference: str,
) -> VoucherProgramme:
    """Create a programme from its rules (data) and deposit its first budget
    from the issuing authority (bank clearing → the programme's budget)."""
    if actor is not None:
        require_operator(actor)
    unknown = set(values) - set(PROGRAMME_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown programme fields {sorted(unknown)}", field=sorted(unknown)[0])
    providers, sites = list(providers), list(sites)
    for provider in providers:
        if not provider.is_provider or provider.verification_status != VerificationStatus.VERIFIED:
            raise InvalidInput(f"{provider.name} is not a verified provider", field="eligible_providers")
    subsidy.rules_from_data(0, values)  # the rules must make sense before anything is written
    if values.get("flag") and values["flag"] not in ApplicantFlag.values:
        raise InvalidInput(f"unknown applicant flag {values['flag']!r}", field="flag")
    if int(values.get("validity_days") or 0) < 1:
        raise InvalidInput("a voucher is valid for at least one day", field="validity_days")
    with transaction.atomic():
        if VoucherProgramme.objects.filter(name=values["name"]).exists():
            raise Conflict(f"a programme named {values['name']!r} exists", field="name")
        programme = VoucherProgramme.objects.create(created_by=actor if getattr(actor, "pk", None) else None, **values)
        programme.eligible_providers.set(providers)
        programme.eligible_sites.set(sites)
        audit_record(
            actor=actor,
            action="voucher_programme.created",
            entity=programme,
            to_state=programme.status,
            data={"rules": {k: str(v) for k, v in values.items()}},
        )
        programme_fund(programme=programme, amount=budget, reference=funding_reference, actor=actor)
    programme.refresh_from_db()
    return programme


def programme_fund(*, programme: VoucherProgramme, amount: Decimal, reference: str, actor: User | None) -> Decimal:
    """Deposit budget (a yearly budget, a top-up) into the programme's ledger
    account. Idempotent per reference. Returns the budget available."""
    if actor is not None:
        require_operator(actor)
    amount = _amount(amount, "budget")
    reference = (reference or "").strip()
    if not reference:
        raise InvalidInput("give the deposit's reference", field="reference")
    with transaction.atomic():
        locked = VoucherProgramme.objects.select_for_update().get(pk=programme.pk)
        row, created = post(
            movements.fund(programme_id=locked.pk, clearing=BANK_CLEARING, amount=amount, reference=reference),
            actor=actor,
            data={"programme": locked.pk, "reference": reference},
        )
        if created:
            VoucherProgramme.objects.filter(pk=locked.pk).update(budget=F("budget") + amount)
            audit_record(
                actor=actor,
                action="voucher_programme.funded",
                entity=locked,
                data={"amount": str(amount), "reference": reference, "transaction": row.key},
            )
    return selectors.budget_available(programme.pk)


def programme_close(*, programme: VoucherProgramme, actor: User, reason: str = "") -> VoucherProgramme:
    """Stop a programme taking applications (issued vouchers stay valid)."""
    require_operator(actor)
    with transaction.atomic():
        if not VoucherProgramme.objects.filter(pk=programme.pk, status=ProgrammeStatus.ACTIVE).update(
            status=ProgrammeStatus.CLOSED
        ):
            raise IllegalTransition(
                entity=f"Programme {programme.pk}", current=ProgrammeStatus.CLOSED, target=ProgrammeStatus.CLOSED
            )
        audit_record(
            actor=actor,
            action="voucher_programme.closed",
            entity=programme,
            from_state=ProgrammeStatus.ACTIVE,
            to_state=ProgrammeStatus.CLOSED,
            reason=reason,
        )
    programme.refresh_from_db()
    return programme


# --- related parties -------------------------------------------------------------------------------------------------


def relation_declare(
    *, actor: User, organisation: Organisation, other: Organisation, kind: str, note: str = ""
) -> OrganisationRelation:
    """Declare two organisations related parties (关联方): vouchers will not
    pay for compute one buys from the other. Operators may declare any pair;
    members only pairs that include their own organisation."""
    if getattr(actor, "role", "") != Role.OPERATOR and actor.organisation_id not in (organisation.pk, other.pk):
        raise Forbidden("declare relations of your own organisation only")
    if organisation.pk == other.pk:
        raise InvalidInput("an organisation is always related to itself", field="other")
    if kind not in RelationKind.values:
        raise InvalidInput(f"unknown relation kind {kind!r}", field="kind")
    a, b = sorted((organisation.pk, other.pk))
    with transaction.atomic():
        existing = OrganisationRelation.objects.filter(organisation_a_id=a, organisation_b_id=b).first()
        if existing is not None:
            return existing
        try:
            with transaction.atomic():
                relation = OrganisationRelation.objects.create(
                    organisation_a_id=a, organisation_b_id=b, kind=kind, note=note[:500], declared_by=actor
                )
        except IntegrityError:
            return OrganisationRelation.objects.get(organisation_a_id=a, organisation_b_id=b)
        audit_record(actor=actor, action="organisation_relation.declared", entity=relation, data={"kind": kind})
    return relation


def relation_remove(*, actor: User, relation: OrganisationRelation, reason: str) -> None:
    """Operators only: remove a declared relation, saying why."""
    require_operator(actor)
    if not reason.strip():
        raise InvalidInput("say why the relation is removed", field="reason")
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="organisation_relation.removed",
            entity=relation,
            reason=reason,
            data={"a": relation.organisation_a_id, "b": relation.organisation_b_id, "kind": relation.kind},
        )
        relation.delete()


# --- applications ----------------------------------------------------------------------------------------------------


def application_submit(
    *,
    user: User,
    programme: VoucherProgramme,
    requested_amount: Decimal,
    intended_use: str,
    flags: Iterable[str] = (),
    now: datetime | None = None,
) -> VoucherApplication:
    """Apply (申领). The automatic checks run at once and are stored with the
    application: a hard failure rejects it immediately with the reasons;
    otherwise it waits for an operator's review."""
    if getattr(user, "role", "") == Role.OPERATOR or not user.organisation_id:
        raise Forbidden("operators run programmes; organisations apply")
    requested = _amount(requested_amount, "requested_amount")
    intended_use = (intended_use or "").strip()
    if not intended_use:
        raise InvalidInput("say what the compute is for", field="intended_use")
    flags = sorted(set(flags))
    for flag in flags:
        if flag not in ApplicantFlag.values:
            raise InvalidInput(f"unknown applicant kind {flag!r}", field="flags")
    now = now or timezone.now()
    with transaction.atomic():
        organisation = Organisation.objects.select_for_update().get(pk=user.organisation_id)
        programme = selectors.programmes_with_partners().get(pk=programme.pk)
        rules = selectors.programme_rules(programme)
        has_open = VoucherApplication.objects.filter(
            programme=programme, applicant=organisation, status=ApplicationStatus.PENDING_REVIEW
        ).exists()
        checks = subsidy.application_checks(
            rules,
            selectors.applicant_facts(organisation, flags=flags),
            requested=requested,
            granted_this_year=selectors.granted_this_year(
                organisation_id=organisation.pk, programme_id=programme.pk, at=now
            ),
            has_open_application=has_open,
            budget_available=selectors.budget_available(programme.pk),
            at=now,
        )
        if programme.status != ProgrammeStatus.ACTIVE:
            closed = subsidy.Check("window", False, True, f"{programme.name} is closed.")
            checks = tuple(closed if c.name == "window" else c for c in checks)
        failures = subsidy.hard_failures(checks)
        status = ApplicationStatus.REJECTED if failures else ApplicationStatus.PENDING_REVIEW
        reason = " ".join(c.detail for c in failures)
        try:
            with transaction.atomic():
                application = VoucherApplication.objects.create(
                    programme=programme,
                    applicant=organisation,
                    submitted_by=user,
                    requested_amount=requested,
                    intended_use=intended_use[:5000],
                    flags=flags,
                    status=status,
                    checks=[c.as_dict() for c in checks],
                    automatic=bool(failures),
                    reason=reason,
                    reviewed_at=now if failures else None,
                )
        except IntegrityError:
            raise Conflict(
                "an application of your organisation to this programme is already under review", field="programme"
            ) from None
        audit_record(
            actor=user,
            action="voucher_application.submitted",
            entity=application,
            to_state=status,
            reason=reason,
            data={"requested": str(requested), "failed": [c.name for c in checks if not c.passed]},
        )
    return application


def application_transition(
    *, application: VoucherApplication, to: str, actor: User | None, reason: str = "", fields: dict | None = None
) -> VoucherApplication:
    """Move an application along :data:`APPLICATION_TRANSITIONS` with a
    conditional UPDATE (two reviewers cannot both win), audited."""
    with transaction.atomic():
        current = VoucherApplication.objects.filter(pk=application.pk).values_list("status", flat=True).first()
        if current is None or to not in APPLICATION_TRANSITIONS[current]:
            raise IllegalTransition(entity=f"Application {application.pk}", current=current or "missing", target=to)
        values = {"status": to, **(fields or {})}
        if not VoucherApplication.objects.filter(pk=application.pk, status=current).update(**values):
            raise IllegalTransition(entity=f"Application {application.pk}", current=current, target=to)
        audit_record(
            actor=actor,
            action="voucher_application.transition",
            entity=application,
            from_state=current,
            to_state=to,
            reason=reason,
            data={k: str(v) for k, v in (fields or {}).items() if k not in {"reviewed_by"}},
        )
    application.refresh_from_db()
    return application


def application_approve(
    *,
    application: VoucherApplication,
    actor: User,
    amount: Decimal | None = None,
    flags: Iterable[str] | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> Voucher:
    """Approve (审核) an application, possibly for less than requested, and
    issue (发放) the voucher: its amount is committed from the programme's
    budget at once (the budget account cannot go negative, so it can never be
    over-committed). ``flags`` confirms the applicant kinds (e.g. start-up)
    that earn a higher ratio; by default none are granted."""
    require_operator(actor)
    now = now or timezone.now()
    with transaction.atomic():
        programme = VoucherProgramme.objects.select_for_update().get(pk=application.programme_id)
        current = VoucherApplication.objects.select_for_update().get(pk=application.pk)
        if current.status != ApplicationStatus.PENDING_REVIEW:
            raise IllegalTransition(
                entity=f"Application {current.pk}", current=current.status, target=ApplicationStatus.APPROVED
            )
        granted = current.requested_amount if amount is None else _amount(amount, "amount")
        if granted > current.requested_amount:
            raise InvalidInput(
                f"grant at most the {current.requested_amount} CNY requested, not {granted}", field="amount"
            )
        granted_flags = sorted(set(flags or ()))
        if not set(granted_flags) <= set(current.flags):
            raise InvalidInput("grant only the applicant kinds the applicant claimed", field="flags")
        rules = selectors.programme_rules(selectors.programmes_with_partners().get(pk=programme.pk))
        most = subsidy.grantable(
            rules,
            requested=granted,
            granted_this_year=selectors.granted_this_year(
                organisation_id=current.applicant_id, programme_id=programme.pk, at=now
            ),
            budget_available=selectors.budget_available(programme.pk),
        )
        if most < granted:
            if most <= 0:
                raise VoucherExhausted(
                    "the programme's budget or the organisation's yearly cap is used up", field="amount"
                )
            raise InvalidInput(f"at most {most} CNY can be granted within the caps and the budget", field="amount")
        voucher = Voucher.objects.create(
            programme=programme,
            holder_id=current.applicant_id,
            application=current,
            amount=granted,
            flags=granted_flags,
            valid_from=now,
            expires_at=now + timedelta(days=programme.validity_days),
        )
        tx, _ = post(
            movements.issue(programme_id=programme.pk, voucher_id=voucher.pk, amount=granted),
            actor=actor,
            data={"voucher": voucher.pk, "application": current.pk},
        )
        account = tx.postings.get(account__code=movements.voucher_account(voucher.pk)).account
        Voucher.objects.filter(pk=voucher.pk).update(account=account)
        application_transition(
            application=current,
            to=ApplicationStatus.APPROVED,
            actor=actor,
            reason=reason,
            fields={
                "granted_amount": granted,
                "granted_flags": granted_flags,
                "reviewed_by": actor,
                "reviewed_at": now,
                "reason": reason,
            },
        )
        audit_record(
            actor=actor,
            action="voucher.issued",
            entity=voucher,
            to_state=VoucherStatus.ACTIVE,
            data={"amount": str(granted), "expires_at": voucher.expires_at.isoformat(), "transaction": tx.key},
        )
    voucher.refresh_from_db()
    return voucher


def application_reject(*, application: VoucherApplication, actor: User, reason: str) -> VoucherApplication:
    """Reject an application under review, saying why (shown to the applicant)."""
    require_operator(actor)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("say why the application is rejected", field="reason")
    return application_transition(
        application=application,
        to=ApplicationStatus.REJECTED,
        actor=actor,
        reason=reason,
        fields={"reviewed_by": actor, "reviewed_at": timezone.now(), "reason": reason},
    )


def application_withdraw(*, application: VoucherApplication, user: User) -> VoucherApplication:
    """The applicant withdraws an application still under review."""
    if application.applicant_id != user.organisation_id:
        raise NotFound("no such application")
    return application_transition(application=application, to=ApplicationStatus.WITHDRAWN, actor=user)


def application_document_add(
    *, application: VoucherApplication, user: User, name: str, content_type: str, content: bytes
) -> ApplicationDocument:
    """Attach a supporting file (at most 5 MB, ten per application) while the
    application is under review."""
    if application.applicant_id != user.organisation_id:
        raise NotFound("no such application")
    if application.status != ApplicationStatus.PENDING_REVIEW:
        raise Conflict("documents can be added only while the application is under review", field="file")
    if not content:
        raise InvalidInput("the file is empty", field="file")
    if len(content) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(f"a supporting file is at most {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB", field="file")
    with transaction.atomic():
        VoucherApplication.objects.select_for_update().get(pk=application.pk)
        if application.documents.count() >= MAX_DOCUMENTS:
            raise InvalidInput(f"an application has at most {MAX_DOCUMENTS} supporting files", field="file")
        document = ApplicationDocument.objects.create(
            application=application,
            name=(name or "document")[:200],
            content_type=(content_type or "application/octet-stream")[:100],
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content=content,
            uploaded_by=user,
        )
        audit_record(
            actor=user,
            action="voucher_application.document_added",
            entity=application,
            data={"document": document.pk, "sha256": document.sha256, "size": document.size},
        )
    return document


# --- jobs ------------------------------------------------------------------------------------------------------------


def job_voucher_choose(*, job: Job, enabled: bool, actor: User) -> JobVoucherChoice:
    """The job's buyer chooses whether its charges are paid with vouchers
    (applicable vouchers pay their share; the buyer the rest). Takes effect
    for charges made from now on."""
    if job.buyer_id != getattr(actor, "organisation_id", None):
        raise NotFound("no such job")
    with transaction.atomic():
        choice, _ = JobVoucherChoice.objects.update_or_create(
            job=job, defaults={"enabled": enabled, "chosen_by": actor}
        )
        audit_record(actor=actor, action="job.vouchers_chosen", entity=job, data={"enabled": enabled})
    return choice


# --- expiry ----------------------------------------------------------------------------------------------------------


def voucher_expire(*, voucher_id: int, now: datetime | None = None, actor: User | None = None) -> Voucher | None:
    """Expire one voucher whose validity has ended: its balance returns to the
    programme's budget or is forfeited, per the programme; audited. Returns
    None if it is not due (or already expired)."""
    now = now or timezone.now()
    with transaction.atomic():
        voucher = (
            Voucher.objects.select_for_update()
            .select_related("programme")
            .filter(pk=voucher_id, status=VoucherStatus.ACTIVE, expires_at__lte=now)
            .first()
        )
        if voucher is None:
            return None
        left = balance(movements.voucher_account(voucher.pk))
        returned = voucher.programme.return_on_expiry
        key = None
        if left > 0:
            tx, _ = post(
                movements.expire(
                    programme_id=voucher.programme_id, voucher_id=voucher.pk, amount=left, returned=returned
                ),
                actor=actor,
                data={"voucher": voucher.pk},
            )
            key = tx.key
        Voucher.objects.filter(pk=voucher.pk).update(status=VoucherStatus.EXPIRED, expired_at=now)
        audit_record(
            actor=actor,
            action="voucher.expired",
            entity=voucher,
            from_state=VoucherStatus.ACTIVE,
            to_state=VoucherStatus.EXPIRED,
            data={"balance": str(left), "returned_to_budget": returned, "transaction": key},
        )
    voucher.refresh_from_db()
    return voucher


def vouchers_expire_due(*, now: datetime | None = None, limit: int = 1000) -> list[int]:
    """Expire every voucher past its validity, each in its own transaction.
    Safe to run in several workers at once (the row lock decides). Returns the
    ids expired."""
    now = now or timezone.now()
    due = list(
        Voucher.objects.filter(status=VoucherStatus.ACTIVE, expires_at__lte=now)
        .order_by("expires_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    return [vid for vid in due if voucher_expire(voucher_id=vid, now=now) is not None]
