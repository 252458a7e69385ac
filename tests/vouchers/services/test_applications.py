"""Applying (申领), the automatic checks, review (审核) and issuance (发放)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from core.errors import Conflict, Forbidden, IllegalTransition, InvalidInput
from core.models import AuditEntry
from tests import factories
from tests.vouchers import helpers
from vouchers import selectors, services
from vouchers.models import Voucher

pytestmark = pytest.mark.django_db
D = Decimal


def apply(user, programme, amount="10000.00", **kwargs):
    return services.application_submit(
        user=user, programme=programme, requested_amount=D(amount), intended_use="protein folding", **kwargs
    )


def failed(application) -> set[str]:
    return {c["name"] for c in application.checks if not c["passed"]}


def test_an_eligible_application_waits_for_review_with_its_checks_shown(operator):
    programme = helpers.programme(operator, registration_cities=["beijing"], per_org_yearly_cap="50000.00")
    application = apply(factories.buyer(city="beijing"), programme)
    assert application.status == "pending_review"
    assert [c["name"] for c in application.checks] == [
        "window",
        "category",
        "region",
        "credit_code",
        "not_provider",
        "no_duplicate",
        "yearly_cap",
        "budget",
    ]
    assert failed(application) == set()
    assert AuditEntry.objects.filter(action="voucher_application.submitted", entity_id=str(application.pk)).exists()


def test_hard_failures_reject_at_once_saying_why(operator):
    programme = helpers.programme(
        operator, registration_cities=["hangzhou"], eligible_categories=["enterprise"], sme_only=True
    )
    application = apply(factories.buyer(category="university", city="beijing"), programme)
    assert application.status == "rejected" and application.automatic
    assert failed(application) == {"category", "region"}
    assert "not universities" in application.reason and "registered in hangzhou" in application.reason


def test_a_provider_is_rejected_as_a_provider(operator):
    application = apply(factories.provider(), helpers.programme(operator))
    assert application.status == "rejected"
    assert {"category", "not_provider"} <= failed(application)


def test_operators_do_not_apply(operator):
    with pytest.raises(Forbidden):
        apply(operator, helpers.programme(operator))


def test_a_second_open_application_is_rejected_as_a_duplicate(operator):
    programme = helpers.programme(operator)
    buyer = factories.buyer()
    apply(buyer, programme)
    second = apply(buyer, programme)
    assert second.status == "rejected" and failed(second) == {"no_duplicate"}


def test_a_closed_window_is_a_hard_failure(operator):
    now = timezone.now()
    programme = helpers.programme(
        operator, application_opens=now - timedelta(days=10), application_closes=now - timedelta(days=1)
    )
    assert failed(apply(factories.buyer(), programme)) == {"window"}


def test_more_than_the_cap_or_the_budget_goes_to_the_reviewer_who_may_grant_less(operator):
    programme = helpers.programme(operator, budget="8000.00", per_org_yearly_cap="5000.00")
    buyer = factories.buyer()
    application = apply(buyer, programme, amount="9000.00")
    assert application.status == "pending_review"
    assert failed(application) == {"yearly_cap", "budget"}
    with pytest.raises(InvalidInput) as error:
        services.application_approve(application=application, actor=operator)
    assert "at most 5000.00" in error.value.detail
    voucher = services.application_approve(application=application, actor=operator, amount=D("5000.00"))
    assert voucher.amount == D("5000.00")
    application.refresh_from_db()
    assert (application.status, application.granted_amount) == ("approved", D("5000.00"))


def test_approval_issues_a_voucher_committed_from_the_budget(operator):
    programme = helpers.programme(operator, budget="100000.00", validity_days=30)
    buyer = factories.buyer()
    application = apply(buyer, programme, amount="40000.00")
    voucher = services.application_approve(application=application, actor=operator, reason="looks fine")
    assert helpers.voucher_balance(voucher) == D("40000.00")
    assert selectors.budget_available(programme.pk) == D("60000.00")
    assert voucher.holder_id == buyer.organisation_id
    assert voucher.expires_at - voucher.valid_from == timedelta(days=30)
    assert voucher.account.code == f"voucher:{voucher.pk}"
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"voucher_application.transition", "voucher.issued", "voucher_programme.funded"} <= actions


def test_the_budget_can_never_be_over_committed(operator):
    programme = helpers.programme(operator, budget="10000.00")
    first = apply(factories.buyer(), programme, amount="7000.00")
    second = apply(factories.buyer(), programme, amount="7000.00")
    services.application_approve(application=first, actor=operator)
    with pytest.raises(InvalidInput):
        services.application_approve(application=second, actor=operator)
    services.application_approve(application=second, actor=operator, amount=D("3000.00"))
    third = apply(factories.buyer(), programme, amount="1.00")
    assert failed(third) == {"budget"} and third.status == "rejected"
    assert selectors.budget_available(programme.pk) == 0
    assert billing.balance(f"programme:{programme.pk}:budget") == 0


def test_a_reviewer_grants_no_more_than_requested_and_only_claimed_kinds(operator):
    application = apply(factories.buyer(), helpers.programme(operator), amount="100.00")
    with pytest.raises(InvalidInput):
        services.application_approve(application=application, actor=operator, amount=D("100.01"))
    with pytest.raises(InvalidInput):
        services.application_approve(application=application, actor=operator, flags=["startup"])


def test_a_startup_claim_confirmed_by_the_reviewer_earns_the_higher_ratio(operator):
    programme = helpers.programme(operator, flag="startup", ratio_rules=[{"ratio": "0.50", "flagged_ratio": "0.60"}])
    application = apply(factories.buyer(), programme, flags=["startup"])
    voucher = services.application_approve(application=application, actor=operator, flags=["startup"])
    assert voucher.flags == ["startup"]


def test_rejection_needs_a_reason_and_a_decided_application_cannot_be_decided_again(operator):
    application = apply(factories.buyer(), helpers.programme(operator))
    with pytest.raises(InvalidInput):
        services.application_reject(application=application, actor=operator, reason=" ")
    rejected = services.application_reject(application=application, actor=operator, reason="no business plan")
    assert (rejected.status, rejected.reason, rejected.reviewed_by) == ("rejected", "no business plan", operator)
    with pytest.raises(IllegalTransition):
        services.application_approve(application=application, actor=operator)
    assert not Voucher.objects.exists()


def test_only_operators_review(operator):
    buyer = factories.buyer()
    application = apply(buyer, helpers.programme(operator))
    with pytest.raises(Forbidden):
        services.application_approve(application=application, actor=buyer)


def test_the_yearly_cap_counts_every_voucher_granted_this_year(operator):
    programme = helpers.programme(operator, per_org_yearly_cap="1000.00")
    buyer = factories.buyer()
    helpers.voucher(buyer, programme, operator, amount="800.00")
    again = apply(buyer, programme, amount="500.00")
    cap = next(c for c in again.checks if c["name"] == "yearly_cap")
    assert not cap["passed"] and "¥200" in cap["detail"]
    full = apply(factories.buyer(), programme, amount="1000.00")
    services.application_approve(application=full, actor=operator)
    services.application_reject(application=again, actor=operator, reason="cap")
    assert failed(apply(buyer, programme, amount="300.00")) == {"yearly_cap"}


def test_supporting_files_are_kept_with_their_digest(operator):
    buyer = factories.buyer()
    application = apply(buyer, helpers.programme(operator))
    document = services.application_document_add(
        application=application, user=buyer, name="plan.pdf", content_type="application/pdf", content=b"%PDF-1.7 plan"
    )
    assert document.size == 13 and len(document.sha256) == 64
    with pytest.raises(InvalidInput):
        services.application_document_add(
            application=application, user=buyer, name="x", content_type="text/plain", content=b""
        )
    services.application_withdraw(application=application, user=buyer)
    with pytest.raises(Conflict):
        services.application_document_add(
            application=application, user=buyer, name="late.pdf", content_type="application/pdf", content=b"x"
        )


def test_the_eligibility_summary_counts_programmes_and_says_why_not(operator):
    buyer = factories.buyer(city="hangzhou")
    open_to_all = helpers.programme(operator, budget="500000.00", per_org_yearly_cap="80000.00")
    helpers.programme(operator, registration_cities=["beijing"])
    helpers.programme(operator, budget="900.00")
    summary = {e.programme.pk: e for e in selectors.eligibility_summary(buyer.organisation)}
    qualifying = [e for e in summary.values() if e.qualifies]
    assert len(qualifying) == 2
    assert summary[open_to_all.pk].up_to == D("80000.00")
    assert sum(e.up_to for e in qualifying) == D("80900.00")
    (refused,) = [e for e in summary.values() if not e.qualifies]
    assert "registered in beijing" in refused.reasons[0]


def test_programme_rules_are_checked_before_anything_is_written(operator):
    with pytest.raises(InvalidInput):
        helpers.programme(operator, ratio_rules=[{"ratio": "1.20"}])
    with pytest.raises(InvalidInput):
        helpers.programme(operator, providers=[factories.buyer().organisation])
    with pytest.raises(InvalidInput):
        helpers.programme(operator, validity_days=0)
