"""Settlement endpoints: statements (read, review, export) and closing a
period. Thin: validate input, call one service or selector."""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import exports, settlement
from billing.models import SettlementPeriod, SettlementStatement, StatementLine, StatementRole, StatementStatus
from core.api import Page, paginate, query_filters
from core.models import AuditEntry
from core.permissions import IsMember, IsOperator

MONEY = {"max_digits": 18, "decimal_places": 2}


class StatementLineOutput(serializers.ModelSerializer):
    pool_identifier = serializers.CharField(source="lease.pool.identifier", read_only=True)
    job = serializers.IntegerField(source="lease.job_id", read_only=True)

    class Meta:
        model = StatementLine
        fields = ("lease", "pool_identifier", "job", "samples", "ncu_hours", "gross", "commission", "net")


class StatementEventOutput(serializers.ModelSerializer):
    amount = serializers.SerializerMethodField()

    class Meta:
        model = AuditEntry
        fields = ("at", "actor_label", "action", "from_state", "to_state", "reason", "amount")

    def get_amount(self, entry: AuditEntry) -> str | None:
        return entry.data.get("amount")


class StatementOutput(serializers.ModelSerializer):
    number = serializers.SerializerMethodField()
    period_start = serializers.DateTimeField(source="period.start", read_only=True)
    period_end = serializers.DateTimeField(source="period.end", read_only=True)
    organisation_name = serializers.CharField(source="organisation.name", read_only=True)
    credit_code = serializers.CharField(source="organisation.credit_code", read_only=True)
    payable = serializers.DecimalField(**MONEY, read_only=True, help_text="net + adjustments − disputed amount")

    class Meta:
        model = SettlementStatement
        fields = (
            "id",
            "number",
            "period",
            "period_start",
            "period_end",
            "organisation",
            "organisation_name",
            "credit_code",
            "role",
            "status",
            "samples",
            "gross",
            "commission",
            "net",
            "voucher_funded",
            "adjustments",
            "disputed_amount",
            "payable",
            "created_at",
        )

    def get_number(self, statement: SettlementStatement) -> str:
        return settlement.statement_number(statement)


class StatementDetailOutput(StatementOutput):
    lines = serializers.SerializerMethodField()
    history = serializers.SerializerMethodField()

    class Meta(StatementOutput.Meta):
        fields = (*StatementOutput.Meta.fields, "lines", "history")

    @extend_schema_field(StatementLineOutput(many=True))
    def get_lines(self, statement: SettlementStatement) -> list:
        return StatementLineOutput(settlement.statement_lines(statement), many=True).data

    @extend_schema_field(StatementEventOutput(many=True))
    def get_history(self, statement: SettlementStatement) -> list:
        return StatementEventOutput(settlement.statement_history(statement), many=True).data


def _statement(request: Request, pk: int) -> SettlementStatement:
    """A statement the caller may see, else 404 (never 403: whether another
    organisation's statement exists is not the caller's business)."""
    return get_object_or_404(settlement.statements_visible_to(request.user), pk=pk)


class StatementListView(APIView):
    """Settlement statements: providers and buyers see their own
    organisation's, operators all. Filter by status, role or period."""

    pagination_class = Page  # documents paginate()'s pages

    permission_classes = [IsMember]

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(choices=StatementStatus.choices, required=False, allow_blank=True)
        role = serializers.ChoiceField(choices=StatementRole.choices, required=False, allow_blank=True)
        period = serializers.IntegerField(
            required=False, allow_null=True, min_value=1, max_value=2**31 - 1, help_text="a settlement period's id"
        )

    @extend_schema(parameters=[Filters], responses=StatementOutput(many=True))
    def get(self, request: Request) -> Response:
        filters = query_filters(request, self.Filters)
        if "period" in filters:
            filters["period_id"] = filters.pop("period")
        statements = settlement.statements_visible_to(request.user).order_by("-period__start", "id")
        return paginate(request, statements.filter(**filters), StatementOutput)


class StatementDetailView(APIView):
    """One statement with its lines (one per lease) and its review record."""

    permission_classes = [IsMember]

    @extend_schema(responses=StatementDetailOutput)
    def get(self, request: Request, pk: int) -> Response:
        return Response(StatementDetailOutput(_statement(request, pk)).data)


class StatementApproveView(APIView):
    """Operator: approve a provider statement. Any amount held back under
    dispute is released and what is payable is paid out at once; the
    statement ends paid. Approving a paid statement answers 409."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(request=InputSerializer, responses=StatementDetailOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = settlement.statement_approve(
            statement=_statement(request, pk), actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(StatementDetailOutput(statement).data)


class StatementDisputeView(APIView):
    """Operator: dispute part or all of what a pending statement makes
    payable, saying why. The amount is held back until approval."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        amount = serializers.DecimalField(**MONEY, min_value=Decimal("0.01"), help_text="CNY held back")

    @extend_schema(request=InputSerializer, responses=StatementDetailOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = settlement.statement_dispute(
            statement=_statement(request, pk), actor=request.user, **data.validated_data
        )
        return Response(StatementDetailOutput(statement).data)


class StatementAdjustView(APIView):
    """Operator: credit (positive amount) or debit (negative) a statement under
    review or dispute, saying why. Each adjustment is a ledger transaction; give
    a reference to make a retried request a no-op."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        amount = serializers.DecimalField(**MONEY, help_text="CNY: positive credits the provider, negative debits")
        reason = serializers.CharField(max_length=2000)
        reference = serializers.CharField(
            required=False, allow_blank=True, default="", max_length=100, help_text="e.g. a support ticket number"
        )

    @extend_schema(request=InputSerializer, responses=StatementDetailOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = settlement.statement_adjust(
            statement=_statement(request, pk), actor=request.user, **data.validated_data
        )
        return Response(StatementDetailOutput(statement).data)


class _AnyAccept(BaseContentNegotiation):
    """Exports answer with their own media type whatever the Accept header
    asks; errors are JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _download(body: bytes, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class StatementCsvView(APIView):
    """The statement as CSV (UTF-8 with a byte-order mark, so spreadsheets
    read Chinese names): a block of field,value rows, then one row per lease."""

    permission_classes = [IsMember]
    content_negotiation_class = _AnyAccept

    @extend_schema(operation_id="v1_statements_export_csv", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, pk: int) -> HttpResponse:
        statement = _statement(request, pk)
        body = exports.statement_csv(statement).encode("utf-8-sig")
        return _download(body, "text/csv; charset=utf-8", exports.export_filename(statement, "csv"))


class StatementPdfView(APIView):
    """The statement as an A4 PDF to file: parties, lines, totals, status and
    the approval and payout record."""

    permission_classes = [IsMember]
    content_negotiation_class = _AnyAccept

    @extend_schema(operation_id="v1_statements_export_pdf", responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, pk: int) -> HttpResponse:
        statement = _statement(request, pk)
        return _download(exports.statement_pdf(statement), "application/pdf", exports.export_filename(statement, "pdf"))


class PeriodOutput(serializers.ModelSerializer):
    statements = serializers.SerializerMethodField()

    class Meta:
        model = SettlementPeriod
        fields = ("id", "start", "end", "status", "closed_at", "statements")

    @extend_schema_field(StatementOutput(many=True))
    def get_statements(self, period: SettlementPeriod) -> list:
        statements = period.statements.select_related("period", "organisation").order_by("role", "id")
        return StatementOutput(statements, many=True).data


class SettlementCloseView(APIView):
    """Operator: close the settlement period [start, end) now (the beat closes
    each elapsed period by itself). Produces one statement per provider and per
    buyer; closing the same period again changes nothing. A period may not
    overlap another one nor end in the future."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        start = serializers.DateTimeField()
        end = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses=PeriodOutput)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        period = settlement.settlement_close(actor=request.user, **data.validated_data)
        return Response(PeriodOutput(period).data)
