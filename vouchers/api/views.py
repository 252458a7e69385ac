"""Voucher endpoints (算力券): programmes, eligibility, applications, vouchers,
a job's voucher choice, quotes with the subsidy, redemption statements,
the operators' dashboard and programme reports, related parties and
refunds. Thin: validate input, call one service or selector. Every view
says who may call it; every list is scoped to the caller."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import Charge
from core.api import Page, paginate, query_filters
from core.errors import InvalidInput
from core.permissions import IsBuyer, IsMember, IsOperator
from marketplace.domain.geography import CITIES
from marketplace.domain.units import ComputeClass
from marketplace.models import CITY_CHOICES, HUB_CHOICES, Category, Organisation, ResourcePool, Site
from scheduler.api.views import JobInput
from scheduler.models import Job
from vouchers import redemption, selectors, services, statements
from vouchers.domain import subsidy
from vouchers.models import (
    ApplicantFlag,
    ApplicationDocument,
    ApplicationStatus,
    ClawbackRule,
    JobVoucherChoice,
    OrganisationRelation,
    ProgrammeStatus,
    RedemptionStatement,
    RedemptionStatus,
    RelationKind,
    Voucher,
    VoucherApplication,
    VoucherProgramme,
    VoucherStatus,
)

PROGRAMME_FILTER = serializers.IntegerField(
    required=False, allow_null=True, min_value=1, max_value=2**31 - 1, help_text="A voucher programme's id"
)

MONEY = {"max_digits": 18, "decimal_places": 2}
CLASS_CHOICES = ResourcePool._meta.get_field("compute_class").choices
CLASS_VALUES = frozenset(c.value for c in ComputeClass)
REGION_CHOICES = sorted({(city.region, city.region) for city in CITIES.values()})


def _is_operator(request: Request) -> bool:
    return getattr(request.user, "role", "") == "operator"


# --- programmes ------------------------------------------------------------------------------------------------------


class RatioRuleSerializer(serializers.Serializer):
    ratio = serializers.DecimalField(max_digits=5, decimal_places=4, min_value=Decimal(0), max_value=Decimal(1))
    compute_class = serializers.ChoiceField(choices=CLASS_CHOICES, required=False, allow_null=True, default=None)
    domestic = serializers.BooleanField(required=False, allow_null=True, default=None)
    flagged_ratio = serializers.DecimalField(
        max_digits=5,
        decimal_places=4,
        min_value=Decimal(0),
        max_value=Decimal(1),
        required=False,
        allow_null=True,
        default=None,
    )


class PartnerOutput(serializers.ModelSerializer):
    class Meta:
        model = Organisation
        fields = ("id", "name", "identifier", "home_hub")


class NamedSiteOutput(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ("id", "name", "identifier", "hub", "city")


class ProgrammeOutput(serializers.ModelSerializer):
    eligibility = serializers.SerializerMethodField(help_text="The terms and who may apply, in plain language")
    budget_available = serializers.SerializerMethodField()
    eligible_providers = PartnerOutput(many=True, read_only=True)
    eligible_sites = NamedSiteOutput(many=True, read_only=True)
    ratio_rules = RatioRuleSerializer(many=True, read_only=True)

    class Meta:
        model = VoucherProgramme
        fields = (
            "id",
            "name",
            "authority",
            "description",
            "status",
            "eligibility",
            "ratio_rules",
            "flag",
            "per_org_yearly_cap",
            "per_charge_cap",
            "eligible_categories",
            "sme_only",
            "registration_cities",
            "registration_regions",
            "eligible_providers",
            "eligible_sites",
            "eligible_hubs",
            "eligible_classes",
            "application_opens",
            "application_closes",
            "validity_days",
            "stacking_group",
            "combined_max_ratio",
            "return_on_expiry",
            "clawback_rule",
            "budget_available",
            "created_at",
        )

    def get_eligibility(self, programme: VoucherProgramme) -> list[str]:
        return list(subsidy.describe(selectors.programme_rules(programme)))

    @extend_schema_field(serializers.DecimalField(**MONEY))
    def get_budget_available(self, programme: VoucherProgramme) -> str:
        budgets = self.context.get("budgets")
        if budgets is not None and programme.pk in budgets:
            return f"{budgets[programme.pk]:.2f}"
        return f"{selectors.budget_available(programme.pk):.2f}"


class ProgrammeListView(APIView):
    """GET (anyone, signed in or not): the programmes open for applications,
    with their eligibility in plain language; operators see every programme
    (filter by ``status``). POST (operators): create a programme from its
    rules and deposit its first budget (bank clearing → the programme's budget)."""

    pagination_class = Page  # documents paginate()'s pages

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        authority = serializers.CharField(max_length=200)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        ratio_rules = RatioRuleSerializer(many=True, allow_empty=False)
        flag = serializers.ChoiceField(choices=ApplicantFlag.choices, required=False, allow_blank=True, default="")
        per_org_yearly_cap = serializers.DecimalField(
            **MONEY, min_value=Decimal("0.01"), required=False, allow_null=True, default=None
        )
        per_charge_cap = serializers.DecimalField(
            **MONEY, min_value=Decimal("0.01"), required=False, allow_null=True, default=None
        )
        eligible_categories = serializers.ListField(
            child=serializers.ChoiceField(choices=[c for c in Category.choices if c[0] != Category.PROVIDER]),
            required=False,
            default=list,
        )
        sme_only = serializers.BooleanField(required=False, default=False)
        registration_cities = serializers.ListField(
            child=serializers.ChoiceField(choices=CITY_CHOICES), required=False, default=list
        )
        registration_regions = serializers.ListField(
            child=serializers.ChoiceField(choices=REGION_CHOICES), required=False, default=list
        )
        eligible_providers = serializers.ListField(
            child=serializers.IntegerField(), required=False, default=list, help_text="Partner providers' ids"
        )
        eligible_sites = serializers.ListField(
            child=serializers.IntegerField(), required=False, default=list, help_text="Named centres' ids"
        )
        eligible_hubs = serializers.ListField(
            child=serializers.ChoiceField(choices=HUB_CHOICES), required=False, default=list
        )
        eligible_classes = serializers.ListField(
            child=serializers.CharField(max_length=16),
            required=False,
            default=list,
            help_text="Compute classes: general, intelligent, super, edge",
        )
        application_opens = serializers.DateTimeField()
        application_closes = serializers.DateTimeField()
        validity_days = serializers.IntegerField(min_value=1, max_value=3660)
        stacking_group = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
        combined_max_ratio = serializers.DecimalField(
            max_digits=5, decimal_places=4, min_value=Decimal(0), max_value=Decimal(1), default=Decimal(1)
        )
        return_on_expiry = serializers.BooleanField(required=False, default=True)
        clawback_rule = serializers.ChoiceField(choices=ClawbackRule.choices, default=ClawbackRule.REBILL_BUYER)
        budget = serializers.DecimalField(**MONEY, min_value=Decimal("0.01"))
        funding_reference = serializers.CharField(max_length=100, help_text="The issuing authority's deposit")

        def validate_eligible_classes(self, value: list[str]) -> list[str]:
            unknown = sorted(set(value) - CLASS_VALUES)
            if unknown:
                raise serializers.ValidationError(f"unknown compute classes {unknown}")
            return value

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if attrs["application_closes"] <= attrs["application_opens"]:
                raise serializers.ValidationError({"application_closes": "the window closes after it opens"})
            return attrs

    def get_permissions(self):
        return [IsOperator()] if self.request.method == "POST" else [AllowAny()]

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(
            choices=ProgrammeStatus.choices, required=False, allow_blank=True, help_text="Operators only"
        )

    @extend_schema(parameters=[Filters], responses=ProgrammeOutput(many=True))
    def get(self, request: Request) -> Response:
        programmes = selectors.programmes_visible_to(request.user)
        filters = query_filters(request, self.Filters)
        if _is_operator(request):
            programmes = programmes.filter(**filters)
        budgets = selectors.budgets_available(programmes.values_list("pk", flat=True))
        return paginate(request, programmes, ProgrammeOutput, context={"budgets": budgets})

    @extend_schema(request=InputSerializer, responses={201: ProgrammeOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        budget, reference = values.pop("budget"), values.pop("funding_reference")
        provider_ids, site_ids = values.pop("eligible_providers"), values.pop("eligible_sites")
        providers = list(Organisation.objects.filter(pk__in=provider_ids))
        sites = list(Site.objects.filter(pk__in=site_ids))
        if len(providers) != len(set(provider_ids)):
            raise InvalidInput("an eligible provider does not exist", field="eligible_providers")
        if len(sites) != len(set(site_ids)):
            raise InvalidInput("a named site does not exist", field="eligible_sites")
        values["ratio_rules"] = [
            {k: (str(v) if isinstance(v, Decimal) else v) for k, v in rule.items()} for rule in values["ratio_rules"]
        ]
        programme = services.programme_create(
            actor=request.user,
            values=values,
            providers=providers,
            sites=sites,
            budget=budget,
            funding_reference=reference,
        )
        programme = selectors.programmes_with_partners().get(pk=programme.pk)
        return Response(ProgrammeOutput(programme).data, status=status.HTTP_201_CREATED)


class ProgrammeDetailView(APIView):
    """One programme: an open one for anyone, any for operators."""

    permission_classes = [AllowAny]

    @extend_schema(responses=ProgrammeOutput)
    def get(self, request: Request, pk: int) -> Response:
        programme = get_object_or_404(selectors.programmes_visible_to(request.user), pk=pk)
        return Response(ProgrammeOutput(programme).data)


class ProgrammeFundView(APIView):
    """Operators: deposit more budget (a new year's, a top-up) into a
    programme; idempotent per reference."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        amount = serializers.DecimalField(**MONEY, min_value=Decimal("0.01"))
        reference = serializers.CharField(max_length=100)

    @extend_schema(request=InputSerializer, responses=ProgrammeOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        programme = get_object_or_404(VoucherProgramme, pk=pk)
        services.programme_fund(programme=programme, actor=request.user, **data.validated_data)
        return Response(ProgrammeOutput(selectors.programmes_with_partners().get(pk=pk)).data)


class ProgrammeCloseView(APIView):
    """Operators: stop a programme taking applications; issued vouchers stay valid."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(request=InputSerializer, responses=ProgrammeOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        programme = get_object_or_404(VoucherProgramme, pk=pk)
        services.programme_close(programme=programme, actor=request.user, reason=data.validated_data["reason"])
        return Response(ProgrammeOutput(selectors.programmes_with_partners().get(pk=pk)).data)


class BreakdownOutput(serializers.Serializer):
    key = serializers.CharField()
    organisations = serializers.IntegerField()
    amount = serializers.DecimalField(**MONEY)


class ReportOutput(serializers.Serializer):
    programme = serializers.IntegerField()
    name = serializers.CharField()
    authority = serializers.CharField()
    deposited = serializers.DecimalField(**MONEY)
    budget_available = serializers.DecimalField(**MONEY)
    committed = serializers.DecimalField(**MONEY)
    vouchers_issued = serializers.IntegerField()
    outstanding = serializers.DecimalField(**MONEY)
    redeemed = serializers.DecimalField(**MONEY)
    redeemed_approved = serializers.DecimalField(**MONEY)
    redeemed_pending_review = serializers.DecimalField(**MONEY)
    refunded = serializers.DecimalField(**MONEY)
    returned = serializers.DecimalField(**MONEY)
    forfeited = serializers.DecimalField(**MONEY)
    clawed_back = serializers.DecimalField(**MONEY)
    net_spent = serializers.DecimalField(**MONEY)
    beneficiaries = serializers.IntegerField()
    beneficiaries_by_category = BreakdownOutput(many=True)
    beneficiaries_by_hub = BreakdownOutput(many=True)


class ProgrammeReportView(APIView):
    """Operators: the programme's budget, committed, redeemed, refunded,
    returned, forfeited and clawed-back amounts, and its beneficiaries by
    category and by hub."""

    permission_classes = [IsOperator]

    @extend_schema(responses=ReportOutput)
    def get(self, request: Request, pk: int) -> Response:
        programme = get_object_or_404(VoucherProgramme, pk=pk)
        return Response(ReportOutput(selectors.programme_report(programme)).data)


class ProgrammeReportCsvView(APIView):
    """Operators: the programme report as CSV (section, key, organisations, amount)."""

    permission_classes = [IsOperator]

    @extend_schema(responses={(200, "text/csv"): OpenApiResponse(response=OpenApiTypes.STR)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        programme = get_object_or_404(VoucherProgramme, pk=pk)
        body = statements.programme_report_csv(selectors.programme_report(programme))
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="programme-{programme.pk}-report.csv"'
        return response


# --- eligibility -----------------------------------------------------------------------------------------------------


class EligibilityLine(serializers.Serializer):
    programme = serializers.IntegerField(source="programme.pk")
    name = serializers.CharField(source="programme.name")
    qualifies = serializers.BooleanField()
    up_to = serializers.DecimalField(**MONEY, help_text="Most you could still be granted this year")
    reasons = serializers.ListField(child=serializers.CharField(), help_text="Why you do not qualify")


class EligibilityView(APIView):
    """Buyers: "you qualify for N programmes, up to ¥X", with the reason for
    each open programme you do not qualify for."""

    permission_classes = [IsBuyer]

    class OutputSerializer(serializers.Serializer):
        summary = serializers.CharField()
        qualifying = serializers.IntegerField()
        up_to = serializers.DecimalField(**MONEY)
        programmes = EligibilityLine(many=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        lines = selectors.eligibility_summary(selectors.buyer_organisation(request.user))
        qualifying = [line for line in lines if line.qualifies]
        up_to = sum((line.up_to for line in qualifying), Decimal("0.00"))
        plural = "programme" if len(qualifying) == 1 else "programmes"
        body = {
            "summary": f"You qualify for {len(qualifying)} {plural}, up to {subsidy.yuan(up_to)}.",
            "qualifying": len(qualifying),
            "up_to": up_to,
            "programmes": lines,
        }
        return Response(self.OutputSerializer(body).data)


# --- applications ----------------------------------------------------------------------------------------------------


class CheckOutput(serializers.Serializer):
    name = serializers.CharField()
    passed = serializers.BooleanField()
    hard = serializers.BooleanField(help_text="A failed hard check rejects the application at once")
    detail = serializers.CharField()


class DocumentOutput(serializers.ModelSerializer):
    class Meta:
        model = ApplicationDocument
        fields = ("id", "name", "content_type", "size", "sha256", "uploaded_at")


class ApplicationOutput(serializers.ModelSerializer):
    programme_name = serializers.CharField(source="programme.name", read_only=True)
    applicant_name = serializers.CharField(source="applicant.name", read_only=True)
    checks = CheckOutput(many=True, read_only=True)
    documents = DocumentOutput(many=True, read_only=True)
    voucher = serializers.SerializerMethodField()

    class Meta:
        model = VoucherApplication
        fields = (
            "id",
            "programme",
            "programme_name",
            "applicant",
            "applicant_name",
            "requested_amount",
            "intended_use",
            "flags",
            "status",
            "checks",
            "automatic",
            "granted_amount",
            "granted_flags",
            "reason",
            "reviewed_at",
            "documents",
            "voucher",
            "created_at",
        )

    def get_voucher(self, application: VoucherApplication) -> int | None:
        voucher = getattr(application, "voucher", None)
        return voucher.pk if voucher else None


class ApplicationListView(APIView):
    """GET (members): your organisation's applications; operators see all
    (filter by ``status``, ``programme``). POST (buyer organisations): apply
    (申领). The automatic checks run at once and come back with the
    application: a hard failure rejects it with the reasons, otherwise it
    waits for an operator's review."""

    pagination_class = Page  # documents paginate()'s pages

    permission_classes = [IsMember]

    class InputSerializer(serializers.Serializer):
        programme = serializers.IntegerField()
        requested_amount = serializers.DecimalField(**MONEY, min_value=Decimal("0.01"))
        intended_use = serializers.CharField(max_length=5000)
        flags = serializers.ListField(
            child=serializers.CharField(max_length=16),
            required=False,
            default=list,
            help_text="Applicant kinds you claim, e.g. start-up; the reviewer confirms them",
        )

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(choices=ApplicationStatus.choices, required=False, allow_blank=True)
        programme = PROGRAMME_FILTER

    @extend_schema(parameters=[Filters], responses=ApplicationOutput(many=True))
    def get(self, request: Request) -> Response:
        applications = selectors.applications_visible_to(request.user).select_related("voucher").order_by("-id")
        return paginate(request, applications.filter(**query_filters(request, self.Filters)), ApplicationOutput)

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsBuyer()]  # providers could not spend a voucher
        return super().get_permissions()

    @extend_schema(request=InputSerializer, responses={201: ApplicationOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        # Any programme: one that is closed is refused by the checks, with the reason.
        programme = VoucherProgramme.objects.filter(pk=values.pop("programme")).first()
        if programme is None:
            raise InvalidInput("no such voucher programme", field="programme")
        application = services.application_submit(user=request.user, programme=programme, **values)
        return Response(ApplicationOutput(application).data, status=status.HTTP_201_CREATED)


def _application(request: Request, pk: int) -> VoucherApplication:
    return get_object_or_404(selectors.applications_visible_to(request.user), pk=pk)


class ApplicationDetailView(APIView):
    """One application with its checks: your organisation's, or any for operators."""

    permission_classes = [IsMember]

    @extend_schema(responses=ApplicationOutput)
    def get(self, request: Request, pk: int) -> Response:
        return Response(ApplicationOutput(_application(request, pk)).data)


class VoucherOutput(serializers.ModelSerializer):
    programme_name = serializers.CharField(source="programme.name", read_only=True)
    holder_name = serializers.CharField(source="holder.name", read_only=True)
    balance = serializers.DecimalField(**MONEY, read_only=True)
    account = serializers.CharField(source="account.code", read_only=True, allow_null=True)

    class Meta:
        model = Voucher
        fields = (
            "id",
            "programme",
            "programme_name",
            "holder",
            "holder_name",
            "amount",
            "balance",
            "flags",
            "status",
            "valid_from",
            "expires_at",
            "issued_at",
            "expired_at",
            "account",
        )


class ApplicationApproveView(APIView):
    """Operators: approve (审核) an application under review, possibly for
    less than requested, confirming the applicant kinds claimed (start-up);
    the voucher is issued (发放) from the programme's budget at once."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        amount = serializers.DecimalField(
            **MONEY, min_value=Decimal("0.01"), required=False, allow_null=True, default=None
        )
        flags = serializers.ListField(
            child=serializers.CharField(max_length=16), default=list, help_text="Applicant kinds confirmed: startup"
        )
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(request=InputSerializer, responses={201: VoucherOutput})
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        application = get_object_or_404(VoucherApplication, pk=pk)
        voucher = services.application_approve(application=application, actor=request.user, **data.validated_data)
        voucher = selectors.vouchers_visible_to(request.user).get(pk=voucher.pk)
        return Response(VoucherOutput(voucher).data, status=status.HTTP_201_CREATED)


class ApplicationRejectView(APIView):
    """Operators: reject an application under review, saying why (the applicant sees it)."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    @extend_schema(request=InputSerializer, responses=ApplicationOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        application = get_object_or_404(VoucherApplication, pk=pk)
        application = services.application_reject(
            application=application, actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(ApplicationOutput(application).data)


class ApplicationWithdrawView(APIView):
    """The applicant: withdraw an application still under review."""

    permission_classes = [IsMember]

    @extend_schema(request=None, responses=ApplicationOutput)
    def post(self, request: Request, pk: int) -> Response:
        application = services.application_withdraw(application=_application(request, pk), user=request.user)
        return Response(ApplicationOutput(application).data)


class ApplicationDocumentsView(APIView):
    """GET (the applicant, operators): an application's supporting files.
    POST (the applicant, while under review): upload one (multipart field
    ``file``, at most 5 MB)."""

    permission_classes = [IsMember]
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()

    @extend_schema(responses=DocumentOutput(many=True))
    def get(self, request: Request, pk: int) -> Response:
        return Response(DocumentOutput(_application(request, pk).documents.all(), many=True).data)

    @extend_schema(request={"multipart/form-data": InputSerializer}, responses={201: DocumentOutput})
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > services.MAX_DOCUMENT_BYTES:
            raise InvalidInput("a supporting file is at most 5 MB", field="file")
        document = services.application_document_add(
            application=_application(request, pk),
            user=request.user,
            name=upload.name,
            content_type=getattr(upload, "content_type", "") or "",
            content=upload.read(),
        )
        return Response(DocumentOutput(document).data, status=status.HTTP_201_CREATED)


class DocumentDownloadView(APIView):
    """The applicant and operators: download a supporting file."""

    permission_classes = [IsMember]

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(response=OpenApiTypes.BINARY)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        visible = selectors.applications_visible_to(request.user)
        document = get_object_or_404(ApplicationDocument.objects.filter(application__in=visible), pk=pk)
        response = HttpResponse(bytes(document.content), content_type=document.content_type)
        response["Content-Disposition"] = f'attachment; filename="{document.name.replace(chr(34), "")}"'
        return response


# --- vouchers --------------------------------------------------------------------------------------------------------


class VoucherListView(APIView):
    """Members: your organisation's vouchers with balances and expiry
    (``?status=active``); operators see all (``?programme=``)."""

    pagination_class = Page  # documents paginate()'s pages

    permission_classes = [IsMember]

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(choices=VoucherStatus.choices, required=False, allow_blank=True)
        programme = PROGRAMME_FILTER

    @extend_schema(parameters=[Filters], responses=VoucherOutput(many=True))
    def get(self, request: Request) -> Response:
        vouchers = selectors.vouchers_visible_to(request.user).order_by("expires_at", "id")
        return paginate(request, vouchers.filter(**query_filters(request, self.Filters)), VoucherOutput)


class VoucherDetailView(APIView):
    """One voucher: your organisation's, or any for operators."""

    permission_classes = [IsMember]

    @extend_schema(responses=VoucherOutput)
    def get(self, request: Request, pk: int) -> Response:
        return Response(VoucherOutput(get_object_or_404(selectors.vouchers_visible_to(request.user), pk=pk)).data)


class JobVouchersView(APIView):
    """The job's buyer: whether the job pays with vouchers (GET), or choose it
    (PUT); applicable vouchers pay their share of each charge made from then on."""

    permission_classes = [IsBuyer]

    class InputSerializer(serializers.Serializer):
        use_vouchers = serializers.BooleanField()

    class OutputSerializer(serializers.Serializer):
        job = serializers.IntegerField()
        use_vouchers = serializers.BooleanField()

    def _job(self, request: Request, pk: int) -> Job:
        return get_object_or_404(Job, pk=pk, buyer_id=request.user.organisation_id)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, pk: int) -> Response:
        job = self._job(request, pk)
        choice = JobVoucherChoice.objects.filter(job=job).first()
        return Response({"job": job.pk, "use_vouchers": bool(choice and choice.enabled)})

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def put(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        choice = services.job_voucher_choose(
            job=self._job(request, pk), enabled=data.validated_data["use_vouchers"], actor=request.user
        )
        return Response({"job": choice.job_id, "use_vouchers": choice.enabled})


class QuoteSubsidyLine(serializers.Serializer):
    voucher = serializers.IntegerField()
    programme = serializers.IntegerField()
    amount = serializers.DecimalField(**MONEY)
    ratio = serializers.DecimalField(max_digits=5, decimal_places=4)


class QuoteSkippedLine(serializers.Serializer):
    voucher = serializers.IntegerField()
    reason = serializers.CharField()


class QuoteOptionOutput(serializers.Serializer):
    offer = serializers.IntegerField()
    pool_identifier = serializers.CharField()
    hub = serializers.CharField()
    compute_class = serializers.CharField()
    expected_start = serializers.DateTimeField()
    expected_end = serializers.DateTimeField()
    ncu_hours = serializers.DecimalField(max_digits=18, decimal_places=4)
    subtotal = serializers.DecimalField(**MONEY)
    voucher_subsidy = serializers.DecimalField(**MONEY)
    buyer_pays = serializers.DecimalField(**MONEY)
    vouchers = QuoteSubsidyLine(many=True)
    not_applied = QuoteSkippedLine(many=True)


class VoucherQuoteView(APIView):
    """Buyers: the best few placements for a job spec, as ``POST quotes``,
    with what your vouchers would pay of each (their balances and caps now;
    nothing is reserved) and what you would pay."""

    permission_classes = [IsBuyer]
    throttle_scope = "quote"

    class OutputSerializer(serializers.Serializer):
        options = QuoteOptionOutput(many=True)
        explanation = serializers.DictField()

    @extend_schema(request=JobInput, responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        from scheduler import services as scheduler_services

        data = JobInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = scheduler_services.quote_for(user=request.user, values=dict(data.validated_data))
        now = timezone.now()
        options = []
        for option in result["options"]:
            assignment, offer = option["assignment"], option["offer"]
            quote, decision = redemption.quote_subsidy(
                buyer_id=request.user.organisation_id, pool=offer.pool, quote=option["breakdown"], at=now
            )
            options.append(
                {
                    "offer": offer.pk,
                    "pool_identifier": assignment.pool_identifier,
                    "hub": assignment.hub,
                    "compute_class": str(assignment.compute_class),
                    "expected_start": assignment.start,
                    "expected_end": assignment.end,
                    "ncu_hours": assignment.ncu_hours,
                    "subtotal": quote.subtotal.amount,
                    "voucher_subsidy": quote.voucher_subsidy.amount,
                    "buyer_pays": quote.buyer_pays.amount,
                    "vouchers": [
                        {"voucher": s.voucher_id, "programme": s.programme_id, "amount": s.amount, "ratio": s.ratio}
                        for s in decision.subsidies
                    ],
                    "not_applied": [{"voucher": s.voucher_id, "reason": s.reason} for s in decision.skipped],
                }
            )
        body = {
            "options": options,
            "explanation": result["explanation"].as_dict(),
        }
        return Response(self.OutputSerializer(body).data)


# --- redemption statements -------------------------------------------------------------------------------------------


class StatementOutput(serializers.ModelSerializer):
    programme_name = serializers.CharField(source="programme.name", read_only=True)
    age_hours = serializers.SerializerMethodField(help_text="Hours since the period ended (the 兑付 clock)")

    class Meta:
        model = RedemptionStatement
        fields = (
            "id",
            "programme",
            "programme_name",
            "period_start",
            "period_end",
            "status",
            "lines",
            "amount",
            "approved_amount",
            "clawed_back_amount",
            "reason",
            "reviewed_at",
            "created_at",
            "age_hours",
        )

    def get_age_hours(self, statement: RedemptionStatement) -> float:
        end = statement.reviewed_at or timezone.now()
        return round((end - statement.period_end).total_seconds() / 3600, 1)


class StatementListView(APIView):
    """Operators: redemption statements (兑付), newest period first; filter
    by ``programme`` and ``status`` (``pending_review`` for the review queue)."""

    pagination_class = Page  # documents paginate()'s pages

    permission_classes = [IsOperator]

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(choices=RedemptionStatus.choices, required=False, allow_blank=True)
        programme = PROGRAMME_FILTER

    @extend_schema(parameters=[Filters], responses=StatementOutput(many=True))
    def get(self, request: Request) -> Response:
        found = selectors.statements_for_operators().filter(**query_filters(request, self.Filters))
        return paginate(request, found, StatementOutput)


class EvidenceParty(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    credit_code = serializers.CharField(required=False)
    identifier = serializers.CharField(required=False, allow_null=True)


class EvidenceLease(serializers.Serializer):
    id = serializers.IntegerField()
    pool = serializers.CharField()
    hub = serializers.CharField()
    compute_class = serializers.CharField()
    status = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class EvidenceUsage(serializers.Serializer):
    sample = serializers.IntegerField()
    sequence = serializers.IntegerField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    ncu_hours = serializers.DecimalField(max_digits=18, decimal_places=4)
    signed = serializers.BooleanField(help_text="Signed by the provider's agent")


class EvidenceCharge(serializers.Serializer):
    id = serializers.IntegerField()
    gross = serializers.DecimalField(**MONEY)
    commission = serializers.DecimalField(**MONEY)
    provider_share = serializers.DecimalField(**MONEY)
    voucher_funded = serializers.DecimalField(**MONEY)
    transaction = serializers.CharField(help_text="The capture's ledger transaction")


class EvidenceLine(serializers.Serializer):
    subsidy = serializers.IntegerField(help_text="Name it to reject this line")
    voucher = serializers.IntegerField()
    outcome = serializers.CharField()
    amount = serializers.DecimalField(**MONEY)
    refunded = serializers.DecimalField(**MONEY)
    ratio = serializers.DecimalField(max_digits=5, decimal_places=4)
    buyer = EvidenceParty()
    provider = EvidenceParty()
    lease = EvidenceLease()
    usage = EvidenceUsage()
    charge = EvidenceCharge()
    buyer_paid = serializers.DecimalField(**MONEY, help_text="The buyer's share of the charge, from the ledger")
    invoice_number = serializers.CharField(help_text="The buyer's settlement statement; empty until settled")
    delivery_confirmed = serializers.BooleanField(help_text="The lease completed")
    provider_statement = serializers.CharField()
    provider_paid = serializers.BooleanField()


class StatementDetailView(APIView):
    """Operators: a redemption statement with its evidence pack, one line per
    redemption (lease, metered usage, charge, the buyer's paid share from the
    ledger, invoice number, delivery confirmation, the provider's payout)."""

    permission_classes = [IsOperator]

    class OutputSerializer(serializers.Serializer):
        statement = StatementOutput()
        evidence = EvidenceLine(many=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, pk: int) -> Response:
        statement = get_object_or_404(selectors.statements_for_operators(), pk=pk)
        body = {"statement": statement, "evidence": statements.statement_evidence(statement)}
        return Response(self.OutputSerializer(body).data)


class RejectedLine(serializers.Serializer):
    subsidy = serializers.IntegerField(help_text="The evidence line's subsidy id")
    reason = serializers.CharField(max_length=2000)


class StatementApproveView(APIView):
    """Operators: approve a redemption statement (兑付). Lines listed in
    ``rejected`` are rejected with their reasons and clawed back by the
    programme's rule (re-billed to the buyer or written off)."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        rejected = RejectedLine(many=True, required=False, default=list)
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(request=InputSerializer, responses=StatementOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = get_object_or_404(RedemptionStatement, pk=pk)
        statement = statements.redemption_approve(
            statement=statement,
            actor=request.user,
            rejected={line["subsidy"]: line["reason"] for line in data.validated_data["rejected"]},
            reason=data.validated_data["reason"],
        )
        return Response(StatementOutput(statement).data)


class StatementRejectView(APIView):
    """Operators: reject a whole redemption statement, saying why; every line
    is clawed back by the programme's rule."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    @extend_schema(request=InputSerializer, responses=StatementOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = get_object_or_404(RedemptionStatement, pk=pk)
        statement = statements.redemption_reject(
            statement=statement, actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(StatementOutput(statement).data)


class DashboardView(APIView):
    """Operators: per programme, redemption statements and applications
    waiting for review, and the age of the oldest of each in hours."""

    permission_classes = [IsOperator]

    class OutputSerializer(serializers.Serializer):
        programme = serializers.IntegerField()
        name = serializers.CharField()
        statements_pending = serializers.IntegerField()
        statements_pending_amount = serializers.DecimalField(**MONEY)
        oldest_statement_age_hours = serializers.DecimalField(max_digits=10, decimal_places=1, allow_null=True)
        applications_pending = serializers.IntegerField()
        oldest_application_age_hours = serializers.DecimalField(max_digits=10, decimal_places=1, allow_null=True)

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.dashboard(), many=True).data)


# --- related parties and refunds -------------------------------------------------------------------------------------


class RelationOutput(serializers.ModelSerializer):
    relation_kind = serializers.CharField(source="kind", read_only=True, help_text="One of the relation kinds")
    organisation_a_name = serializers.CharField(source="organisation_a.name", read_only=True)
    organisation_b_name = serializers.CharField(source="organisation_b.name", read_only=True)

    class Meta:
        model = OrganisationRelation
        fields = (
            "id",
            "organisation_a",
            "organisation_a_name",
            "organisation_b",
            "organisation_b_name",
            "relation_kind",
            "note",
            "created_at",
        )


class RelationListView(APIView):
    """Related parties (关联方): vouchers never pay for compute one buys from
    the other (nor between two organisations related to a common third).
    GET (members): relations of your organisation; operators see all. POST
    (members): declare a relation of your own organisation; operators any."""

    pagination_class = Page  # documents paginate()'s pages

    permission_classes = [IsMember]

    class InputSerializer(serializers.Serializer):
        organisation = serializers.IntegerField()
        other = serializers.IntegerField()
        relation_kind = serializers.ChoiceField(choices=RelationKind.choices)
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(responses=RelationOutput(many=True))
    def get(self, request: Request) -> Response:
        return paginate(request, selectors.relations_visible_to(request.user).order_by("id"), RelationOutput)

    @extend_schema(request=InputSerializer, responses={201: RelationOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        organisation = Organisation.objects.filter(pk=values["organisation"]).first()
        other = Organisation.objects.filter(pk=values["other"]).first()
        if organisation is None or other is None:
            raise InvalidInput("no such organisation", field="organisation" if organisation is None else "other")
        relation = services.relation_declare(
            actor=request.user,
            organisation=organisation,
            other=other,
            kind=values["relation_kind"],
            note=values["note"],
        )
        return Response(RelationOutput(relation).data, status=status.HTTP_201_CREATED)


class RelationRemoveView(APIView):
    """Operators: remove a declared relation, saying why."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    @extend_schema(request=InputSerializer, responses={204: None})
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        relation = get_object_or_404(OrganisationRelation, pk=pk)
        services.relation_remove(actor=request.user, relation=relation, reason=data.validated_data["reason"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class RefundOutput(serializers.Serializer):
    id = serializers.IntegerField()
    charge = serializers.IntegerField(source="charge_id")
    reference = serializers.CharField()
    amount = serializers.DecimalField(**MONEY)
    provider_share = serializers.DecimalField(**MONEY)
    commission = serializers.DecimalField(**MONEY)
    to_vouchers = serializers.DecimalField(**MONEY)
    to_buyer = serializers.DecimalField(**MONEY)
    reason = serializers.CharField()
    transaction = serializers.CharField(source="transaction.key")
    created_at = serializers.DateTimeField()


class ChargeRefundView(APIView):
    """Operators: refund or correct part of a charge. The provider and the
    platform give back their shares; what vouchers paid returns to the
    vouchers (or their programme), only the buyer's own share to the buyer.
    Idempotent per ``reference``."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        charge = serializers.IntegerField()
        amount = serializers.DecimalField(**MONEY, min_value=Decimal("0.01"))
        reason = serializers.CharField(max_length=2000)
        reference = serializers.CharField(max_length=100)

    @extend_schema(request=InputSerializer, responses={201: RefundOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        charge = Charge.objects.filter(pk=values.pop("charge")).first()
        if charge is None:
            raise InvalidInput("no such charge", field="charge")
        refund = redemption.charge_refund(charge=charge, actor=request.user, **values)
        return Response(RefundOutput(refund).data, status=status.HTTP_201_CREATED)
