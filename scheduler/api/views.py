"""Scheduler endpoints: offers, jobs (orders), leases and quotes."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import FieldsBuiltOnce, Page, paginate, query_filters
from core.errors import InvalidInput
from core.permissions import IsBuyer, IsMember, IsProvider
from core.schema import error_response
from marketplace.models import CITY_CHOICES, HUB_CHOICES, STACK_CHOICES, ResourcePool
from scheduler import selectors, services
from scheduler.models import Job, JobStatus, Lease, LeaseStatus, Objective, Offer, Precision, PricingType

# --- offers ----------------------------------------------------------------------------------------------------------


class OfferOutput(serializers.ModelSerializer):
    pool_identifier = serializers.CharField(source="pool.identifier", read_only=True)
    hub = serializers.CharField(source="pool.site.hub", read_only=True)
    provider = serializers.CharField(source="pool.site.provider.name", read_only=True)
    accelerator_model = serializers.SerializerMethodField()
    software_stack = serializers.CharField(source="pool.software_stack", read_only=True)
    compute_class = serializers.CharField(source="pool.compute_class", read_only=True)

    class Meta:
        model = Offer
        fields = (
            "id",
            "pool_identifier",
            "hub",
            "provider",
            "accelerator_model",
            "software_stack",
            "compute_class",
            "status",
            "nodes_offered",
            "window_start",
            "window_end",
            "pricing_type",
            "list_price",
            "price_rules",
            "min_lease_hours",
            "max_lease_hours",
            "created_at",
        )

    def get_accelerator_model(self, offer: Offer) -> str | None:
        return offer.pool.accelerator_model.code if offer.pool.accelerator_model_id else None


class OfferListView(APIView):
    """GET: the market's offers (verified providers, active), plus your own as a
    provider; filter by hub, stack, pricing_type. POST (provider): list nodes of
    one of your pools at a price per NCU-hour."""

    pagination_class = Page  # documents paginate()'s pages

    class InputSerializer(serializers.Serializer):
        pool = serializers.CharField(help_text="The pool's identifier or id")
        nodes_offered = serializers.IntegerField(min_value=1)
        list_price = serializers.DecimalField(
            max_digits=20, decimal_places=10, min_value=Decimal("0.0000000001"), help_text="CNY per NCU-hour"
        )
        pricing_type = serializers.ChoiceField(choices=PricingType.choices, default=PricingType.ON_DEMAND)
        window_start = serializers.DateTimeField(required=False, allow_null=True, default=None)
        window_end = serializers.DateTimeField(required=False, allow_null=True, default=None)
        price_rules = serializers.DictField(required=False, default=dict)
        min_lease_hours = serializers.DecimalField(
            max_digits=8, decimal_places=2, min_value=Decimal(0), default=Decimal(0)
        )
        max_lease_hours = serializers.DecimalField(
            max_digits=8, decimal_places=2, min_value=Decimal("0.01"), required=False, allow_null=True, default=None
        )

    def get_permissions(self):
        return [IsProvider()] if self.request.method == "POST" else [IsMember()]

    class Filters(serializers.Serializer):
        hub = serializers.ChoiceField(choices=HUB_CHOICES, required=False, allow_blank=True)
        software_stack = serializers.ChoiceField(choices=STACK_CHOICES, required=False, allow_blank=True)
        pricing_type = serializers.ChoiceField(choices=PricingType.choices, required=False, allow_blank=True)
        pool = serializers.CharField(required=False, allow_blank=True, help_text="A pool's identifier")

    @extend_schema(parameters=[Filters], responses=OfferOutput(many=True))
    def get(self, request: Request) -> Response:
        lookups = {
            "hub": "pool__site__hub",
            "software_stack": "pool__software_stack",
            "pricing_type": "pricing_type",
            "pool": "pool__identifier",
        }
        filters = {lookups[name]: value for name, value in query_filters(request, self.Filters).items()}
        return paginate(request, selectors.offers_visible_to(request.user).filter(**filters), OfferOutput)

    @extend_schema(request=InputSerializer, responses={201: OfferOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values: dict[str, Any] = dict(data.validated_data)
        ref = str(values.pop("pool")).strip()
        own = ResourcePool.objects.select_related("site").filter(site__provider_id=request.user.organisation_id)
        pool = own.filter(identifier=ref.upper()).first() or (
            own.filter(pk=int(ref)).first() if ref.isdigit() else None
        )
        if pool is None:
            raise InvalidInput("no pool of yours has this identifier or id", field="pool")
        offer = services.offer_create(pool=pool, actor=request.user, **values)
        return Response(OfferOutput(selectors.offers_visible_to(request.user).get(pk=offer.pk)).data, status=201)


class OfferWithdrawView(APIView):
    """Provider: withdraw one of your offers (leases already made run on)."""

    permission_classes = [IsProvider]

    @extend_schema(request=None, responses=OfferOutput)
    def post(self, request: Request, pk: int) -> Response:
        offer = get_object_or_404(Offer, pk=pk, pool__site__provider_id=request.user.organisation_id)
        offer = services.offer_withdraw(offer=offer, actor=request.user)
        return Response(OfferOutput(selectors.offers_visible_to(request.user).get(pk=offer.pk)).data)


# --- jobs ------------------------------------------------------------------------------------------------------------


SCHEDULING_HORIZON = timedelta(days=2 * 366)


def _within_horizon(moment: datetime | None) -> datetime | None:
    """Jobs are planned at most about two years ahead: later dates are refused, not computed with."""
    if moment is not None and moment > timezone.now() + SCHEDULING_HORIZON:
        raise serializers.ValidationError(f"is more than {SCHEDULING_HORIZON.days} days ahead; plan closer to the date")
    return moment


class JobInput(FieldsBuiltOnce, serializers.Serializer):
    """A job to quote or submit: what it runs, what each node needs, how long, where it may run and what the
    buyer optimises for."""

    name = serializers.CharField(max_length=200)
    image = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    command = serializers.ListField(child=serializers.CharField(max_length=4000), max_length=256, default=list)
    software_stack = serializers.ChoiceField(choices=STACK_CHOICES)
    cpu_architecture = serializers.ChoiceField(
        choices=[("x86_64", "x86_64"), ("aarch64", "aarch64")], required=False, allow_blank=True, default=""
    )
    device_models = serializers.ListField(child=serializers.CharField(max_length=64), max_length=32, default=list)
    capacity_tflops = serializers.DecimalField(
        max_digits=14, decimal_places=3, min_value=Decimal("0.001"), required=False, allow_null=True, default=None
    )
    capacity_precision = serializers.ChoiceField(
        choices=Precision.choices, required=False, allow_blank=True, default=""
    )
    capacity_accelerator_memory_gib = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal(0), default=Decimal(0)
    )
    accelerators_per_node = serializers.IntegerField(min_value=0, max_value=16, default=0)
    accelerator_milli = serializers.IntegerField(min_value=0, max_value=999, default=0)
    nodes = serializers.IntegerField(min_value=1, max_value=4096, default=1)
    cpu_milli_per_node = serializers.IntegerField(min_value=0, max_value=1_024_000, default=0)
    memory_mib_per_node = serializers.IntegerField(min_value=0, max_value=64 * 1024 * 1024, default=0)
    storage_gib_per_node = serializers.IntegerField(min_value=0, max_value=10_000_000, default=0)
    accelerator_memory_gib = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal(0), default=Decimal(0)
    )
    duration_seconds = serializers.IntegerField(min_value=60, max_value=366 * 24 * 3600)
    earliest_start = serializers.DateTimeField(required=False, allow_null=True, default=None)
    deadline = serializers.DateTimeField(required=False, allow_null=True, default=None)
    max_price_per_ncu_hour = serializers.DecimalField(
        max_digits=20,
        decimal_places=10,
        min_value=Decimal("0.0000000001"),
        required=False,
        allow_null=True,
        default=None,
    )
    max_total_price = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal("0.01"), required=False, allow_null=True, default=None
    )
    allowed_hubs = serializers.ListField(child=serializers.ChoiceField(choices=HUB_CHOICES), max_length=8, default=list)
    buyer_city = serializers.ChoiceField(choices=CITY_CHOICES, required=False, allow_blank=True, default="")
    max_latency_ms = serializers.FloatField(
        min_value=0.1, max_value=1000, required=False, allow_null=True, default=None
    )
    domestic_only = serializers.BooleanField(default=False)
    interruptible = serializers.BooleanField(default=False)
    objective = serializers.ChoiceField(choices=Objective.choices, default=Objective.CHEAPEST)
    retry_on_loss = serializers.BooleanField(default=True)
    use_vouchers = serializers.BooleanField(
        default=False, help_text="Let the organisation's compute vouchers pay their share of this job's charges"
    )

    def validate_earliest_start(self, value: datetime | None) -> datetime | None:
        return _within_horizon(value)

    def validate_deadline(self, value: datetime | None) -> datetime | None:
        return _within_horizon(value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("capacity_tflops") and not attrs.get("capacity_precision"):
            raise serializers.ValidationError({"capacity_precision": "say at which precision the TFLOPS are meant"})
        start, deadline = attrs.get("earliest_start"), attrs.get("deadline")
        if start and deadline and deadline <= start:
            raise serializers.ValidationError({"deadline": "the deadline is after the earliest start"})
        return attrs


class LeaseOutput(serializers.ModelSerializer):
    pool_identifier = serializers.CharField(source="pool.identifier", read_only=True)

    class Meta:
        model = Lease
        fields = (
            "id",
            "job",
            "offer",
            "pool_identifier",
            "status",
            "start",
            "end",
            "allocations",
            "pricing_type",
            "unit_price",
            "ncu",
            "ncu_hours",
            "estimated_cost",
            "energy_kwh",
            "carbon_kg",
            "interruptible",
            "ended_at",
            "created_at",
        )


class JobOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    """A job as submitted, with its state, why it waits if it does, and its current lease."""

    lease = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = (
            "id",
            "name",
            "status",
            "pending_reason",
            "pending_detail",
            "image",
            "command",
            "software_stack",
            "cpu_architecture",
            "device_models",
            "capacity_tflops",
            "capacity_precision",
            "capacity_accelerator_memory_gib",
            "accelerators_per_node",
            "accelerator_milli",
            "nodes",
            "cpu_milli_per_node",
            "memory_mib_per_node",
            "storage_gib_per_node",
            "accelerator_memory_gib",
            "duration_seconds",
            "earliest_start",
            "deadline",
            "max_price_per_ncu_hour",
            "max_total_price",
            "allowed_hubs",
            "buyer_city",
            "max_latency_ms",
            "domestic_only",
            "interruptible",
            "objective",
            "retry_on_loss",
            "lease",
            "status_changed_at",
            "queued_at",
            "created_at",
        )

    def get_lease(self, job: Job) -> dict[str, Any] | None:
        if self.context.get("just_submitted"):  # the job was written in this request: no lease yet
            return None
        lease = next(iter(sorted(job.leases.all(), key=lambda lease: -lease.pk)), None)
        return LeaseOutput(lease).data if lease is not None else None


class JobListView(APIView):
    """GET: your organisation's jobs (operators: all), filter by status.
    POST (buyer): submit a job; refused at once (422) with the reason if no
    pool of the market could ever run it."""

    pagination_class = Page  # documents paginate()'s pages

    def get_permissions(self):
        return [IsBuyer()] if self.request.method == "POST" else [IsMember()]

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(choices=JobStatus.choices, required=False, allow_blank=True)

    @extend_schema(parameters=[Filters], responses=JobOutput(many=True))
    def get(self, request: Request) -> Response:
        jobs = selectors.jobs_visible_to(request.user).prefetch_related("leases__pool").order_by("-id")
        return paginate(request, jobs.filter(**query_filters(request, self.Filters)), JobOutput)

    @extend_schema(request=JobInput, responses={201: JobOutput, 422: error_response(422)})
    def post(self, request: Request) -> Response:
        data = JobInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        use_vouchers = values.pop("use_vouchers")
        job = services.job_submit(user=request.user, values=values, use_vouchers=use_vouchers)
        return Response(JobOutput(job, context={"just_submitted": True}).data, status=status.HTTP_201_CREATED)

    throttle_scopes = {"POST": "submit"}  # submissions are rate-limited per buyer; reading is not


class JobDetailView(APIView):
    """One of your organisation's jobs, with its state, pending reason and lease."""

    permission_classes = [IsMember]

    @extend_schema(responses=JobOutput)
    def get(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(selectors.jobs_visible_to(request.user).prefetch_related("leases__pool"), pk=pk)
        return Response(JobOutput(job).data)


class JobCancelView(APIView):
    """Buyer: cancel a job in any non-final state (its lease ends with it)."""

    permission_classes = [IsBuyer]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(request=InputSerializer, responses=JobOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = get_object_or_404(Job, pk=pk, buyer_id=request.user.organisation_id)
        job = services.job_cancel(job=job, actor=request.user, reason=data.validated_data["reason"])
        return Response(JobOutput(job).data)


class LeaseListView(APIView):
    """Leases: a buyer's jobs', a provider's pools', or all for operators."""

    pagination_class = Page  # documents paginate()'s pages

    permission_classes = [IsMember]

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(choices=LeaseStatus.choices, required=False, allow_blank=True)

    @extend_schema(parameters=[Filters], responses=LeaseOutput(many=True))
    def get(self, request: Request) -> Response:
        leases = selectors.leases_visible_to(request.user).order_by("-id")
        return paginate(request, leases.filter(**query_filters(request, self.Filters)), LeaseOutput)


class QuoteView(APIView):
    """Buyer: the best few placements for a job spec without submitting it:
    pool identifier, hub, price breakdown (base, discounts, commission,
    buyer pays), expected start, estimated energy and carbon."""

    permission_classes = [IsBuyer]
    throttle_scope = "quote"

    @extend_schema(request=JobInput, responses={200: dict})
    def post(self, request: Request) -> Response:
        data = JobInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.quote_for(user=request.user, values=dict(data.validated_data))
        options = []
        for option in result["options"]:
            a, offer, q = option["assignment"], option["offer"], option["breakdown"]
            options.append(
                {
                    "pool_identifier": a.pool_identifier,
                    "offer": offer.pk,
                    "hub": a.hub,
                    "city": a.city,
                    "compute_class": str(a.compute_class),
                    "pricing_type": str(a.pricing_type),
                    "expected_start": a.start,
                    "expected_end": a.end,
                    "nodes": a.nodes,
                    "ncu": a.ncu,
                    "ncu_hours": a.ncu_hours,
                    "unit_price": a.unit_price,
                    "price": {
                        "list_price": q.list_price,
                        "base": q.base.amount,
                        "adjustments": [
                            {"kind": str(line.kind), "amount": line.amount.amount} for line in q.adjustments
                        ],
                        "subtotal": q.subtotal.amount,
                        "voucher_subsidy": q.voucher_subsidy.amount,
                        "buyer_pays": q.buyer_pays.amount,
                        "commission": q.commission.amount,
                        "provider_share": q.provider_share.amount,
                    },
                    "estimated_cost": q.subtotal.amount,
                    "energy_kwh": a.energy_kwh,
                    "carbon_kg": a.carbon_kg,
                }
            )
        return Response({"options": options, "explanation": result["explanation"].as_dict()})
