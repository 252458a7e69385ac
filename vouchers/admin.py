"""Voucher programmes, applications, vouchers and redemption statements in
the operator console. Applications are reviewed (审核) and redemption
statements approved (兑付) through the same services as the API, with a
reason where one is needed, audited; everything else is read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin

from console.admin_support import OperatorAdmin, ReadOnlyInline, ReasonForm, readonly_fields_of, reasoned_action
from vouchers import services, statements
from vouchers.models import (
    ChargeSubsidy,
    OrganisationRelation,
    RedemptionStatement,
    Voucher,
    VoucherApplication,
    VoucherProgramme,
)


@admin.register(VoucherProgramme)
class VoucherProgrammeAdmin(OperatorAdmin):
    list_display = ("name", "authority", "status", "budget", "application_opens", "application_closes")
    list_filter = ("status",)
    search_fields = ("name", "authority")
    readonly_fields = readonly_fields_of(VoucherProgramme)


class ApprovalForm(ReasonForm):
    grant_flags = forms.BooleanField(
        required=False,
        label="Grant the applicant kinds claimed",
        help_text="E.g. start-up, which earns a higher subsidy ratio: tick only if the documents show it.",
    )


def _approve_application(application: VoucherApplication, actor: Any, reason: str, cleaned: dict[str, Any]) -> None:
    flags = application.flags if cleaned.get("grant_flags") else ()
    services.application_approve(application=application, actor=actor, reason=reason, flags=flags)


def _reject_application(application: VoucherApplication, actor: Any, reason: str, _cleaned: dict[str, Any]) -> None:
    services.application_reject(application=application, actor=actor, reason=reason)


@admin.register(VoucherApplication)
class VoucherApplicationAdmin(OperatorAdmin):
    """The queue of applications awaiting review: filter on pending review."""

    list_display = (
        "id",
        "applicant",
        "programme",
        "requested_amount",
        "flags",
        "status",
        "checks_passed",
        "created_at",
    )
    list_filter = ("status", "programme", "automatic")
    search_fields = ("applicant__name", "programme__name", "intended_use")
    list_select_related = ("applicant", "programme")
    readonly_fields = readonly_fields_of(VoucherApplication)
    actions = (
        reasoned_action(
            name="approve_selected",
            description="Approve selected applications and issue their vouchers",
            service=_approve_application,
            reason_required=False,
            verb="approved",
            warning="Each approval issues a voucher for the amount requested, committed from the programme's budget.",
            form_class=ApprovalForm,
        ),
        reasoned_action(
            name="reject_selected",
            description="Reject selected applications",
            service=_reject_application,
            reason_required=True,
            verb="rejected",
        ),
    )

    @admin.display(description="automatic checks")
    def checks_passed(self, obj: VoucherApplication) -> str:
        checks = obj.checks or []
        failed = [c.get("name", "?") for c in checks if not c.get("passed")]
        return f"{len(checks) - len(failed)}/{len(checks)} passed" + (
            f" (failed: {', '.join(failed)})" if failed else ""
        )


@admin.register(Voucher)
class VoucherAdmin(OperatorAdmin):
    list_display = ("id", "holder", "programme", "amount", "status", "valid_from", "expires_at")
    list_filter = ("status", "programme")
    search_fields = ("holder__name",)
    list_select_related = ("holder", "programme")
    readonly_fields = readonly_fields_of(Voucher)


class ChargeSubsidyInline(ReadOnlyInline):
    model = ChargeSubsidy
    fields = (
        "charge",
        "voucher",
        "buyer",
        "provider",
        "hub",
        "compute_class",
        "ratio",
        "amount",
        "refunded",
        "outcome",
    )
    readonly_fields = fields


def _approve_redemption(statement: RedemptionStatement, actor: Any, reason: str, _cleaned: dict[str, Any]) -> None:
    statements.redemption_approve(statement=statement, actor=actor, reason=reason)


def _reject_redemption(statement: RedemptionStatement, actor: Any, reason: str, _cleaned: dict[str, Any]) -> None:
    statements.redemption_reject(statement=statement, actor=actor, reason=reason)


@admin.register(RedemptionStatement)
class RedemptionStatementAdmin(OperatorAdmin):
    list_display = ("id", "programme", "period_start", "period_end", "lines", "amount", "status", "created_at")
    list_filter = ("status", "programme")
    list_select_related = ("programme",)
    readonly_fields = readonly_fields_of(RedemptionStatement)
    inlines = (ChargeSubsidyInline,)
    actions = (
        reasoned_action(
            name="approve_selected",
            description="Approve selected redemption statements",
            service=_approve_redemption,
            reason_required=False,
            verb="approved",
        ),
        reasoned_action(
            name="reject_selected",
            description="Reject selected redemption statements (claw back every line)",
            service=_reject_redemption,
            reason_required=True,
            verb="rejected",
        ),
    )


@admin.register(ChargeSubsidy)
class ChargeSubsidyAdmin(OperatorAdmin):
    list_display = ("id", "charge", "programme", "buyer", "provider", "hub", "amount", "refunded", "outcome")
    list_filter = ("outcome", "programme", "hub")
    list_select_related = ("programme", "buyer", "provider", "charge")
    readonly_fields = readonly_fields_of(ChargeSubsidy)


@admin.register(OrganisationRelation)
class OrganisationRelationAdmin(OperatorAdmin):
    list_display = ("organisation_a", "organisation_b", "kind", "created_at")
    list_filter = ("kind",)
    list_select_related = ("organisation_a", "organisation_b")
    readonly_fields = readonly_fields_of(OrganisationRelation)
