"""Marketplace endpoints: registration, identity, verification, inventory,
identifier resolution. Thin: validate input, call one service or selector."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import StrictLimitOffsetPagination, query_filters
from core.errors import InvalidInput
from core.permissions import IsMember, IsOperator, IsProvider
from marketplace import selectors, services
from marketplace.domain.geography import CITIES, HUBS
from marketplace.domain.identifiers import IdentifierError
from marketplace.domain.units import (
    ComputeClass,
    DeviceKind,
    SiteKind,
    node_ncu,
    quantise_units,
    unit_precision,
)
from marketplace.models import (
    CITY_CHOICES,
    HUB_CHOICES,
    STACK_CHOICES,
    Category,
    DeviceModel,
    Organisation,
    PoolStatus,
    ResourcePool,
    Site,
    User,
)


class OrganisationOutput(serializers.ModelSerializer):
    class Meta:
        model = Organisation
        fields = (
            "id",
            "name",
            "credit_code",
            "category",
            "is_sme",
            "city",
            "home_hub",
            "identifier",
            "verification_status",
            "verification_reason",
            "verified_at",
            "created_at",
        )


class UserOutput(serializers.ModelSerializer):
    organisation = OrganisationOutput()

    class Meta:
        model = User
        fields = ("id", "username", "email", "role", "organisation")


class RegisterView(APIView):
    """Register an organisation and its first user (anyone may call).

    Providers start `pending` until an operator verifies them; buyer
    organisations may trade at once. Returns the API token of the new user."""

    permission_classes = [AllowAny]
    throttle_scope = "register"

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        credit_code = serializers.CharField(max_length=40, help_text="Unified Social Credit Code, 18 characters")
        category = serializers.ChoiceField(choices=Category.choices)
        is_sme = serializers.BooleanField(default=False)
        city = serializers.ChoiceField(choices=CITY_CHOICES)
        home_hub = serializers.ChoiceField(choices=HUB_CHOICES, required=False, allow_blank=True, default="")
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(write_only=True, max_length=128)
        email = serializers.EmailField(required=False, allow_blank=True, default="")

    class OutputSerializer(serializers.Serializer):
        organisation = OrganisationOutput()
        user = UserOutput()
        token = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            organisation, user = services.organisation_register(**data.validated_data)
            token = Token.objects.create(user=user)
        body = {"organisation": organisation, "user": user, "token": token.key}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class TokenView(APIView):
    """Exchange a username and password for the user's API token."""

    permission_classes = [AllowAny]
    throttle_scope = "login"

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(write_only=True)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer("TokenOutput", {"token": serializers.CharField(), "role": serializers.CharField()})
        },
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = User.objects.filter(username=data.validated_data["username"]).first()
        if user is None or not user.is_active or not user.check_password(data.validated_data["password"]):
            raise InvalidInput("unknown username or wrong password", field="password")
        token, _ = Token.objects.get_or_create(user=user)
        user_logged_in.send(sender=user.__class__, request=request, user=user)  # audited, as console sign-ins are
        return Response({"token": token.key, "role": user.role})


class MeView(APIView):
    """The signed-in user, their role and organisation."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=UserOutput)
    def get(self, request: Request) -> Response:
        return Response(UserOutput(request.user).data)


class OrganisationListView(ListAPIView):
    """Organisations: operators see all (filter by category or verification
    status); everyone else sees only their own."""

    permission_classes = [IsMember]
    serializer_class = OrganisationOutput
    pagination_class = StrictLimitOffsetPagination
    filterset_fields = ("category", "verification_status")

    def get_queryset(self):
        return selectors.organisations_visible_to(self.request.user)


class OrganisationDetailView(RetrieveAPIView):
    """One organisation: your own, or any for operators."""

    permission_classes = [IsMember]
    serializer_class = OrganisationOutput

    def get_queryset(self):
        return selectors.organisations_visible_to(self.request.user)


class ReasonInput(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class ProviderVerifyView(APIView):
    """Operator: verify a pending provider; its pools become visible to the market."""

    permission_classes = [IsOperator]

    @extend_schema(request=ReasonInput, responses=OrganisationOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        organisation = get_object_or_404(Organisation, pk=pk)
        organisation = services.provider_verify(
            organisation=organisation, actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(OrganisationOutput(organisation).data)


class ProviderRejectView(APIView):
    """Operator: reject a provider, saying why (the reason is shown to the provider)."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    @extend_schema(request=InputSerializer, responses=OrganisationOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organisation = get_object_or_404(Organisation, pk=pk)
        organisation = services.provider_reject(
            organisation=organisation, actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(OrganisationOutput(organisation).data)


class DeviceOutput(serializers.ModelSerializer):
    class Meta:
        model = DeviceModel
        fields = (
            "code",
            "name",
            "vendor",
            "kind",
            "architecture",
            "domestic",
            "software_stack",
            "fp64_tflops",
            "fp32_tflops",
            "fp16_tflops",
            "int8_tops",
            "memory_gb",
            "power_w",
            "cores",
            "source",
        )


class DeviceListView(ListAPIView):
    """The device catalogue (anyone may read): published peak dense throughput per precision."""

    permission_classes = [AllowAny]
    serializer_class = DeviceOutput
    pagination_class = None
    filter_backends: list = []

    class Filters(serializers.Serializer):
        kind = serializers.ChoiceField(choices=[k.value for k in DeviceKind], required=False, allow_blank=True)
        vendor = serializers.CharField(required=False, allow_blank=True, max_length=64)
        domestic = serializers.BooleanField(required=False, allow_null=True, default=None)
        software_stack = serializers.ChoiceField(choices=STACK_CHOICES, required=False, allow_blank=True)

    def get_queryset(self):
        return DeviceModel.objects.filter(**query_filters(self.request, self.Filters))

    @extend_schema(parameters=[Filters])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class SiteOutput(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True)
    provider_identifier = serializers.CharField(source="provider.identifier", read_only=True)
    cue = serializers.DecimalField(max_digits=8, decimal_places=4, read_only=True)

    class Meta:
        model = Site
        fields = (
            "id",
            "identifier",
            "name",
            "provider",
            "provider_identifier",
            "hub",
            "city",
            "kind",
            "pue",
            "wue",
            "green_share",
            "grid_factor",
            "cue",
            "created_at",
        )


# The largest values a site's columns hold (DecimalField(5, 2) and (6, 4)): more was a 500.
MAX_WUE = Decimal("999.99")
MAX_GRID_FACTOR = Decimal("99.9999")


def _decimal_field(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=8, decimal_places=4, **kwargs)


class SiteListView(APIView):
    """GET: sites you may see (the market's, plus your own as a provider).
    POST (provider): add a site; it gets its identifier at once."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        hub = serializers.ChoiceField(choices=HUB_CHOICES)
        city = serializers.ChoiceField(choices=CITY_CHOICES)
        kind = serializers.ChoiceField(choices=[k.value for k in SiteKind])
        pue = _decimal_field(min_value=Decimal("1.0"), max_value=Decimal("3.0"))
        green_share = _decimal_field(min_value=Decimal(0), max_value=Decimal(1))
        wue = _decimal_field(min_value=Decimal(0), max_value=MAX_WUE, required=False, default=Decimal(0))
        grid_factor = _decimal_field(
            min_value=Decimal(0), max_value=MAX_GRID_FACTOR, required=False, allow_null=True, default=None
        )

    def get_permissions(self):
        return [IsProvider()] if self.request.method == "POST" else [IsMember()]

    class Filters(serializers.Serializer):
        hub = serializers.ChoiceField(choices=HUB_CHOICES, required=False, allow_blank=True)

    @extend_schema(parameters=[Filters], responses=SiteOutput(many=True))
    def get(self, request: Request) -> Response:
        sites = selectors.sites_visible_to(request.user).filter(**query_filters(request, self.Filters))
        return Response(SiteOutput(sites, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: SiteOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        site = services.site_create(provider=request.user.organisation, actor=request.user, **data.validated_data)
        return Response(SiteOutput(site).data, status=status.HTTP_201_CREATED)


class SiteDetailView(APIView):
    """GET a site; PATCH (its provider): name, PUE, WUE, green share, grid factor."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False)
        pue = _decimal_field(min_value=Decimal("1.0"), max_value=Decimal("3.0"), required=False)
        green_share = _decimal_field(min_value=Decimal(0), max_value=Decimal(1), required=False)
        wue = _decimal_field(min_value=Decimal(0), max_value=MAX_WUE, required=False)
        grid_factor = _decimal_field(min_value=Decimal(0), max_value=MAX_GRID_FACTOR, required=False)

    def get_permissions(self):
        return [IsProvider()] if self.request.method == "PATCH" else [IsMember()]

    @extend_schema(responses=SiteOutput)
    def get(self, request: Request, pk: int) -> Response:
        return Response(SiteOutput(get_object_or_404(selectors.sites_visible_to(request.user), pk=pk)).data)

    @extend_schema(request=InputSerializer, responses=SiteOutput)
    def patch(self, request: Request, pk: int) -> Response:
        site = get_object_or_404(Site, pk=pk, provider_id=request.user.organisation_id)
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        site = services.site_update(site=site, actor=request.user, **data.validated_data)
        return Response(SiteOutput(site).data)


class PoolOutput(serializers.ModelSerializer):
    site_identifier = serializers.CharField(source="site.identifier", read_only=True)
    hub = serializers.CharField(source="site.hub", read_only=True)
    city = serializers.CharField(source="site.city", read_only=True)
    provider = serializers.CharField(source="site.provider.name", read_only=True)
    cpu_model = serializers.SlugRelatedField(slug_field="code", read_only=True)
    accelerator_model = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    unit_precision = serializers.SerializerMethodField()
    ncu_per_node = serializers.SerializerMethodField()
    benchmark_verified = serializers.SerializerMethodField()

    class Meta:
        model = ResourcePool
        fields = (
            "id",
            "identifier",
            "name",
            "status",
            "site_identifier",
            "hub",
            "city",
            "provider",
            "compute_class",
            "node_count",
            "cpu_model",
            "cpu_architecture",
            "cpu_cores_per_node",
            "memory_gb_per_node",
            "storage_gb_per_node",
            "network_gbps",
            "accelerator_model",
            "accelerators_per_node",
            "sharing_allowed",
            "software_stack",
            "benchmark_factor",
            "benchmark_verified",
            "unit_precision",
            "ncu_per_node",
            "created_at",
            "updated_at",
        )

    def get_unit_precision(self, pool: ResourcePool) -> str:
        return unit_precision(pool.shape()).value

    def get_ncu_per_node(self, pool: ResourcePool) -> str:
        return str(quantise_units(node_ncu(pool.shape())))

    def get_benchmark_verified(self, pool: ResourcePool) -> bool:
        return pool.benchmark_verified_at is not None


def _device(code: str | None, field: str) -> DeviceModel | None:
    if code in (None, ""):
        return None
    device = DeviceModel.objects.filter(code=code).first()
    if device is None:
        raise InvalidInput(f"unknown device model {code!r}; see GET /api/v1/devices", field=field)
    return device


class PoolInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    node_count = serializers.IntegerField(min_value=1, max_value=100_000)
    cpu_model = serializers.CharField(help_text="Device catalogue code of the CPU")
    cpu_cores_per_node = serializers.IntegerField(min_value=1, max_value=1024)
    memory_gb_per_node = serializers.IntegerField(min_value=1, max_value=65_536)
    storage_gb_per_node = serializers.IntegerField(min_value=0, max_value=10_000_000, default=0)
    network_gbps = serializers.IntegerField(min_value=0, max_value=10_000, default=0)
    accelerator_model = serializers.CharField(required=False, allow_blank=True, allow_null=True, default=None)
    accelerators_per_node = serializers.IntegerField(min_value=0, max_value=16, default=0)
    sharing_allowed = serializers.BooleanField(default=False)


class PoolListView(APIView):
    """GET: pools you may see, filterable by hub, compute class, stack, model.
    POST (provider): add a pool to one of your sites."""

    class InputSerializer(PoolInput):
        site = serializers.CharField(help_text="The site's identifier or id")

    def get_permissions(self):
        return [IsProvider()] if self.request.method == "POST" else [IsMember()]

    class Filters(serializers.Serializer):
        hub = serializers.ChoiceField(choices=HUB_CHOICES, required=False, allow_blank=True)
        compute_class = serializers.ChoiceField(
            choices=[c.value for c in ComputeClass], required=False, allow_blank=True
        )
        software_stack = serializers.ChoiceField(choices=STACK_CHOICES, required=False, allow_blank=True)
        accelerator_model = serializers.CharField(required=False, allow_blank=True, help_text="A device code")
        site = serializers.CharField(required=False, allow_blank=True, help_text="A site's identifier")

    @extend_schema(parameters=[Filters], responses=PoolOutput(many=True))
    def get(self, request: Request) -> Response:
        lookups = {
            "hub": "site__hub",
            "compute_class": "compute_class",
            "software_stack": "software_stack",
            "accelerator_model": "accelerator_model__code",
            "site": "site__identifier",
        }
        filters = {lookups[name]: value for name, value in query_filters(request, self.Filters).items()}
        pools = selectors.pools_visible_to(request.user).filter(**filters)
        return Response(PoolOutput(pools, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: PoolOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        site_ref = str(values.pop("site"))
        own_sites = Site.objects.filter(provider_id=request.user.organisation_id)
        site = own_sites.filter(identifier=site_ref.strip().upper()).first()
        if site is None and site_ref.isdigit():
            site = own_sites.filter(pk=int(site_ref)).first()
        if site is None:
            raise InvalidInput("no site of yours has this identifier or id", field="site")
        values["cpu_model"] = _device(values["cpu_model"], "cpu_model")
        values["accelerator_model"] = _device(values["accelerator_model"], "accelerator_model")
        pool = services.pool_create(site=site, actor=request.user, **values)
        return Response(PoolOutput(pool).data, status=status.HTTP_201_CREATED)


class PoolDetailView(APIView):
    """GET a pool; PATCH (its provider) any attribute but the site: the identifier stays."""

    class InputSerializer(PoolInput):
        status = serializers.ChoiceField(choices=PoolStatus.choices, required=False)

    def get_permissions(self):
        return [IsProvider()] if self.request.method == "PATCH" else [IsMember()]

    @extend_schema(responses=PoolOutput)
    def get(self, request: Request, pk: int) -> Response:
        return Response(PoolOutput(get_object_or_404(selectors.pools_visible_to(request.user), pk=pk)).data)

    @extend_schema(request=InputSerializer, responses=PoolOutput)
    def patch(self, request: Request, pk: int) -> Response:
        pool = get_object_or_404(ResourcePool, pk=pk, site__provider_id=request.user.organisation_id)
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        if "cpu_model" in values:
            values["cpu_model"] = _device(values["cpu_model"], "cpu_model")
        if "accelerator_model" in values:
            values["accelerator_model"] = _device(values["accelerator_model"], "accelerator_model")
        pool = services.pool_update(pool=pool, actor=request.user, **values)
        return Response(PoolOutput(pool).data)


class PoolBenchmarkView(APIView):
    """Operator: record a pool's measured benchmark factor (delivered ÷ peak)."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        factor = serializers.DecimalField(max_digits=4, decimal_places=3)
        reason = serializers.CharField(required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses=PoolOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pool = get_object_or_404(ResourcePool, pk=pk)
        pool = services.pool_set_benchmark(pool=pool, actor=request.user, **data.validated_data)
        return Response(PoolOutput(pool).data)


class ResolveView(APIView):
    """Resolve a unified compute identifier (算力标识) to what it names.

    Anyone may resolve identifiers of the public market. A malformed or
    mistyped identifier is refused with 400 saying what is wrong (the check
    character catches typos), not a 404."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: inline_serializer("Resolved", {"entity": serializers.CharField()})})
    def get(self, request: Request, identifier: str) -> Response:
        try:
            found = selectors.resolve_identifier(text=identifier, user=request.user)
        except IdentifierError as exc:
            raise InvalidInput(str(exc), field="identifier") from None
        if isinstance(found, Organisation):
            body = {
                "entity": "provider",
                "identifier": found.identifier,
                "name": found.name,
                "home_hub": found.home_hub,
                "city": found.city,
                "verification_status": found.verification_status,
                "sites": list(
                    selectors.sites_visible_to(request.user).filter(provider=found).values_list("identifier", flat=True)
                ),
            }
        elif isinstance(found, Site):
            body = {
                "entity": "site",
                **SiteOutput(found).data,
                "pools": list(
                    selectors.pools_visible_to(request.user).filter(site=found).values_list("identifier", flat=True)
                ),
            }
        else:
            body = {"entity": "pool", **PoolOutput(found).data, "provider_identifier": found.site.provider.identifier}
        return Response(body)


class InventoryView(APIView):
    """Regional compute inventory (区域算力资源清单): listed capacity of verified
    providers by hub and compute class, in TFLOPS per precision and NCU, with
    the plan's CP = CP_general + CP_intelligent + CP_super. Anyone may read."""

    permission_classes = [AllowAny]

    class Filters(serializers.Serializer):
        hub = serializers.ChoiceField(choices=HUB_CHOICES, required=False, allow_blank=True)

    @extend_schema(
        parameters=[Filters], responses={200: inline_serializer("Inventory", {"rows": serializers.ListField()})}
    )
    def get(self, request: Request) -> Response:
        hub = query_filters(request, self.Filters).get("hub")
        return Response(selectors.regional_inventory(hub=hub))


class HubListView(APIView):
    """The eight national hubs and the cities the market knows (anyone may read)."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: inline_serializer("Hubs", {"hubs": serializers.ListField()})})
    def get(self, request: Request) -> Response:
        return Response(
            {
                "hubs": [
                    {"code": h.code, "name_zh": h.name_zh, "name_en": h.name_en, "side": h.side.value}
                    for h in HUBS.values()
                ],
                "cities": [
                    {"code": c.code, "name_zh": c.name_zh, "name_en": c.name_en, "hub": c.hub, "region": c.region}
                    for c in CITIES.values()
                ],
            }
        )
