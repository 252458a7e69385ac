"""The ledger, holds, usage, charges and settlement in the operator console.

Ledger rows, holds, usage samples and charges are read-only: nothing here
can edit a posted transaction. Settlement statements are reviewed through
the same services as the API (billing.settlement): approve (pays out),
dispute (an amount held back, with a reason) and adjust (a credit or debit,
with a reason), each audited. A statement's page shows its lines, the leases
and usage samples behind them, their ratings, the review history and the
CSV/PDF exports."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse

from billing import payments, settlement
from billing.models import (
    Account,
    Charge,
    Hold,
    LedgerTransaction,
    PaymentNotice,
    Posting,
    SettlementPeriod,
    SettlementStatement,
    StatementStatus,
    UsageSample,
)
from console.admin_support import (
    AmountReasonForm,
    OperatorAdmin,
    ReadOnlyInline,
    amount_or_none,
    is_operator,
    readonly_fields_of,
    reasoned_action,
)
from core.errors import ApplicationError
from scheduler.models import Rating

SAMPLES_SHOWN = 300


@admin.register(Account)
class AccountAdmin(OperatorAdmin):
    list_display = ("code", "kind", "organisation", "balance", "currency")
    list_filter = ("kind",)
    search_fields = ("code", "organisation__name")
    list_select_related = ("organisation",)
    readonly_fields = readonly_fields_of(Account)


class PostingInline(ReadOnlyInline):
    model = Posting
    fields = ("account", "amount")
    readonly_fields = fields


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(OperatorAdmin):
    list_display = ("id", "created_at", "kind", "key", "memo", "actor")
    list_filter = ("kind",)
    search_fields = ("key", "memo")
    date_hierarchy = "created_at"
    readonly_fields = readonly_fields_of(LedgerTransaction)
    inlines = (PostingInline,)


@admin.register(Hold)
class HoldAdmin(OperatorAdmin):
    list_display = ("id", "lease", "buyer", "amount", "captured", "released", "status", "created_at")
    list_filter = ("status",)
    search_fields = ("=lease__id", "buyer__name")
    list_select_related = ("buyer", "lease")
    readonly_fields = readonly_fields_of(Hold)


@admin.register(UsageSample)
class UsageSampleAdmin(OperatorAdmin):
    list_display = ("id", "lease", "sequence", "start", "end", "ncu_hours", "energy_kwh", "charged")
    list_filter = ("charged",)
    search_fields = ("=lease__id",)
    list_select_related = ("lease",)
    readonly_fields = readonly_fields_of(UsageSample)


@admin.register(Charge)
class ChargeAdmin(OperatorAdmin):
    list_display = ("id", "created_at", "lease", "buyer", "provider", "gross", "commission", "voucher_funded", "owed")
    search_fields = ("=lease__id", "buyer__name", "provider__name")
    list_select_related = ("lease", "buyer", "provider")
    readonly_fields = readonly_fields_of(Charge)


def _confirm_payment(notice: PaymentNotice, actor: Any, reason: str, _cleaned: dict[str, Any]) -> None:
    payments.payment_notice_confirm(notice=notice, actor=actor, reason=reason)


def _reject_payment(notice: PaymentNotice, actor: Any, reason: str, _cleaned: dict[str, Any]) -> None:
    payments.payment_notice_reject(notice=notice, actor=actor, reason=reason)


@admin.register(PaymentNotice)
class PaymentNoticeAdmin(OperatorAdmin):
    """Buyers' notices of money paid in: confirm those found on the bank statement (the wallet is credited once),
    reject the others with a reason."""

    list_display = (
        "reference",
        "organisation",
        "amount",
        "status",
        "same_reference",
        "created_at",
        "reviewed_by",
        "transaction",
    )
    list_filter = ("status",)
    search_fields = ("reference", "reference_key", "organisation__name")
    list_select_related = ("organisation", "reviewed_by", "transaction")
    readonly_fields = readonly_fields_of(PaymentNotice)
    actions = (
        reasoned_action(
            name="confirm_selected",
            description="Confirm selected payments (found on the bank statement)",
            service=_confirm_payment,
            reason_required=False,
            verb="confirmed and credited",
            warning="Confirming credits each buyer's wallet with the amount of its notice.",
        ),
        reasoned_action(
            name="reject_selected",
            description="Reject selected payments (not on the bank statement)",
            service=_reject_payment,
            reason_required=True,
            verb="rejected",
        ),
    )

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(same_reference=payments.same_reference_elsewhere())

    @admin.display(description="same transfer cited elsewhere")
    def same_reference(self, obj: PaymentNotice) -> int:
        return obj.same_reference


@admin.register(SettlementPeriod)
class SettlementPeriodAdmin(OperatorAdmin):
    list_display = ("id", "start", "end", "status", "closed_at")
    list_filter = ("status",)
    readonly_fields = readonly_fields_of(SettlementPeriod)


# --- statements ------------------------------------------------------------------------------------------------------


def _approve(statement: SettlementStatement, actor: Any, reason: str, _cleaned: dict[str, Any]) -> None:
    settlement.statement_approve(statement=statement, actor=actor, reason=reason)


def _dispute(statement: SettlementStatement, actor: Any, reason: str, cleaned: dict[str, Any]) -> None:
    statement.refresh_from_db()
    amount = amount_or_none(cleaned)
    settlement.statement_dispute(
        statement=statement, actor=actor, reason=reason, amount=statement.payable if amount is None else amount
    )


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[("approve", "Approve and pay out"), ("dispute", "Dispute"), ("adjust", "Adjust")]
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), required=False)
    amount = forms.DecimalField(max_digits=18, decimal_places=2, required=False)


@admin.register(SettlementStatement)
class SettlementStatementAdmin(OperatorAdmin):
    """The queue of provider statements awaiting approval, and disputes: filter on status."""

    list_display = ("number", "organisation", "role", "status", "period", "gross", "net", "payable_now", "created_at")
    list_filter = ("status", "role")
    search_fields = ("organisation__name", "=id")
    list_select_related = ("organisation", "period")
    readonly_fields = readonly_fields_of(SettlementStatement)
    actions = (
        reasoned_action(
            name="approve_selected",
            description="Approve and pay out selected statements",
            service=_approve,
            reason_required=False,
            verb="approved and paid",
            warning="Approving pays out what each statement makes payable to the provider's bank account.",
        ),
        reasoned_action(
            name="dispute_selected",
            description="Dispute selected statements",
            service=_dispute,
            reason_required=True,
            verb="disputed",
            form_class=AmountReasonForm,
        ),
    )

    @admin.display(description="number")
    def number(self, obj: SettlementStatement) -> str:
        return settlement.statement_number(obj)

    @admin.display(description="payable")
    def payable_now(self, obj: SettlementStatement) -> Decimal:
        return obj.payable

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/review/", wrap(self.review_view), name="billing_settlementstatement_review"),
            path("<int:pk>/export.<str:fmt>", wrap(self.export_view), name="billing_settlementstatement_export"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        statement = get_object_or_404(self.get_queryset(request), pk=object_id)
        return TemplateResponse(
            request,
            "admin/console/statement.html",
            {
                **self.admin_site.each_context(request),
                **statement_page(statement),
                "opts": self.model._meta,
                "title": f"Statement {settlement.statement_number(statement)}",
                "form": ReviewForm(),
            },
        )

    def review_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not is_operator(request.user):
            raise PermissionDenied
        statement = get_object_or_404(SettlementStatement, pk=pk)
        back = reverse("admin:billing_settlementstatement_change", args=[pk])
        form = ReviewForm(request.POST)
        if not form.is_valid():
            self.message_user(request, "Choose a decision.", messages.ERROR)
            return HttpResponseRedirect(back)
        decision, reason = form.cleaned_data["decision"], form.cleaned_data["reason"].strip()
        amount = form.cleaned_data["amount"]
        try:
            if decision == "approve":
                settlement.statement_approve(statement=statement, actor=request.user, reason=reason)
            elif decision == "dispute":
                statement.refresh_from_db()
                settlement.statement_dispute(
                    statement=statement, actor=request.user, reason=reason, amount=amount or statement.payable
                )
            else:
                if amount is None:
                    self.message_user(request, "An adjustment needs an amount (negative for a debit).", messages.ERROR)
                    return HttpResponseRedirect(back)
                settlement.statement_adjust(statement=statement, actor=request.user, amount=amount, reason=reason)
        except ApplicationError as exc:
            self.message_user(request, f"Not done: {exc.detail}", messages.ERROR)
        else:
            statement.refresh_from_db()
            self.message_user(
                request,
                f"Statement {settlement.statement_number(statement)} is now {statement.get_status_display().lower()}.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(back)

    def export_view(self, request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
        if not is_operator(request.user) or fmt not in ("csv", "pdf"):
            raise Http404
        try:
            from billing import exports
        except ImportError:
            raise Http404("statement exports are not available") from None
        statement = get_object_or_404(SettlementStatement.objects.select_related("period", "organisation"), pk=pk)
        if fmt == "csv":
            response = HttpResponse(exports.statement_csv(statement), content_type="text/csv; charset=utf-8")
        else:
            response = HttpResponse(exports.statement_pdf(statement), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{exports.export_filename(statement, fmt)}"'
        return response


def statement_page(statement: SettlementStatement) -> dict[str, Any]:
    """What the statement page shows: a fixed number of queries."""
    lines = list(settlement.statement_lines(statement).select_related("lease__job__buyer", "lease__pool__site"))
    lease_ids = [line.lease_id for line in lines]
    link = Q(provider_statement=statement) | Q(buyer_statement=statement)
    charges = list(
        Charge.objects.filter(link).select_related("sample").order_by("lease_id", "sample__sequence")[:SAMPLES_SHOWN]
    )
    return {
        "statement": statement,
        "number": settlement.statement_number(statement),
        "lines": lines,
        "charges": charges,
        "charges_total": Charge.objects.filter(link).count(),
        "samples_shown": SAMPLES_SHOWN,
        "ratings": list(Rating.objects.filter(lease_id__in=lease_ids).select_related("buyer").order_by("lease_id")),
        "history": list(settlement.statement_history(statement)),
        "payout": settlement.statement_payout(statement),
        "reviewable": statement.status in (StatementStatus.PENDING_REVIEW, StatementStatus.DISPUTED),
        "adjustable": statement.status in settlement.ADJUSTABLE,
    }
