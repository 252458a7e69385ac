"""Organisations, users and the inventory they list: sites, resource pools
and the device catalogue. State changes go through marketplace.services."""

from decimal import Decimal

from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from marketplace.domain.geography import CITIES, HUBS
from marketplace.domain.units import (
    ComputeClass,
    CpuArchitecture,
    DeviceKind,
    DeviceSpec,
    PoolShape,
    SiteKind,
    SoftwareStack,
)

HUB_CHOICES = [(code, f"{hub.name_zh} {hub.name_en}") for code, hub in HUBS.items()]
CITY_CHOICES = [(code, f"{city.name_zh} {city.name_en}") for code, city in CITIES.items()]
STACK_CHOICES = [(s.value, s.value) for s in SoftwareStack]
ARCHITECTURE_CHOICES = [(a.value, a.value) for a in CpuArchitecture]
# China's 2022 national grid average emission factor (MEE, 0.5703 tCO2/MWh).
NATIONAL_GRID_FACTOR = Decimal("0.5703")


class Category(models.TextChoices):
    ENTERPRISE = "enterprise", "Enterprise"
    UNIVERSITY = "university", "University"
    RESEARCH = "research_institute", "Research institute"
    MEDICAL = "medical_institution", "Medical institution"
    GOVERNMENT = "government", "Government"
    PROVIDER = "provider", "Provider"


class VerificationStatus(models.TextChoices):
    PENDING = "pending", "Pending verification"
    VERIFIED = "verified", "Verified"
    REJECTED = "rejected", "Rejected"


class Role(models.TextChoices):
    BUYER = "buyer", "Buyer"
    PROVIDER = "provider", "Provider"
    OPERATOR = "operator", "Operator"


class Organisation(models.Model):
    name = models.CharField(max_length=200)
    credit_code = models.CharField(
        max_length=18, unique=True, help_text="Unified Social Credit Code (GB 32100-2015), check character verified"
    )
    category = models.CharField(max_length=32, choices=Category.choices)
    is_sme = models.BooleanField(default=False, help_text="Small or medium-sized enterprise")
    is_operator = models.BooleanField(default=False, help_text="The platform operator or a city data bureau")
    city = models.CharField(max_length=32, choices=CITY_CHOICES, help_text="City of registration")
    home_hub = models.CharField(
        max_length=8, choices=HUB_CHOICES, blank=True, help_text="Providers: the hub their identifier names"
    )
    identifier = models.CharField(max_length=40, unique=True, null=True, blank=True)
    verification_status = models.CharField(
        max_length=16, choices=VerificationStatus.choices, default=VerificationStatus.PENDING
    )
    verification_reason = models.TextField(blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    sites_allocated = models.PositiveIntegerField(default=0, help_text="Site serials handed out so far")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=~Q(category="provider") | ~Q(home_hub=""), name="provider_has_home_hub"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_provider(self) -> bool:
        return self.category == Category.PROVIDER


class User(AbstractUser):
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    role = models.CharField(max_length=16, choices=Role.choices, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(role="") | Q(organisation__isnull=False), name="role_needs_organisation"
            ),
        ]


class DeviceModel(models.Model):
    """A CPU or accelerator model with its published peak dense throughput."""

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    vendor = models.CharField(max_length=64)
    kind = models.CharField(max_length=8, choices=[(k.value, k.name) for k in DeviceKind])
    architecture = models.CharField(max_length=16, blank=True, choices=ARCHITECTURE_CHOICES)
    domestic = models.BooleanField(default=False, help_text="Chinese-designed (信创)")
    software_stack = models.CharField(max_length=16, choices=STACK_CHOICES)
    fp64_tflops = models.DecimalField(max_digits=10, decimal_places=3)
    fp32_tflops = models.DecimalField(max_digits=10, decimal_places=3)
    fp16_tflops = models.DecimalField(max_digits=10, decimal_places=3)
    int8_tops = models.DecimalField(max_digits=10, decimal_places=3)
    memory_gb = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    power_w = models.PositiveIntegerField()
    cores = models.PositiveIntegerField(default=0, help_text="CPUs: cores per socket")
    source = models.TextField(help_text="Where the figures come from")

    class Meta:
        ordering = ("vendor", "name")

    def __str__(self) -> str:
        return self.name

    def spec(self) -> DeviceSpec:
        return DeviceSpec(
            code=self.code,
            kind=DeviceKind(self.kind),
            fp64_tflops=self.fp64_tflops,
            fp32_tflops=self.fp32_tflops,
            fp16_tflops=self.fp16_tflops,
            int8_tops=self.int8_tops,
            cores=self.cores,
        )


class Site(models.Model):
    """A data centre (算力中心) of a provider."""

    provider = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="sites")
    serial = models.PositiveIntegerField()
    identifier = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    hub = models.CharField(max_length=8, choices=HUB_CHOICES)
    city = models.CharField(max_length=32, choices=CITY_CHOICES)
    kind = models.CharField(max_length=16, choices=[(k.value, k.name.title()) for k in SiteKind])
    pue = models.DecimalField(
        max_digits=4, decimal_places=2, validators=[MinValueValidator(Decimal("1.00"))], help_text="Power usage eff."
    )
    wue = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("0"), help_text="Litres per kWh")
    green_share = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(1))],
        help_text="Share of electricity from green sources, 0..1",
    )
    grid_factor = models.DecimalField(
        max_digits=6, decimal_places=4, default=NATIONAL_GRID_FACTOR, help_text="kg CO2 per kWh of grid power"
    )
    pools_allocated = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["provider", "serial"], name="site_serial_unique_per_provider"),
            models.CheckConstraint(condition=Q(pue__gte=1), name="site_pue_at_least_one"),
            models.CheckConstraint(condition=Q(green_share__gte=0, green_share__lte=1), name="site_green_share_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.identifier})"

    @property
    def cue(self) -> Decimal:
        """Carbon usage effectiveness: kg CO2 per kWh of IT energy."""
        return (self.pue * self.grid_factor * (1 - self.green_share)).quantize(Decimal("0.0001"))


class PoolStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


class ResourcePool(models.Model):
    """A homogeneous set of nodes at a site."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="pools")
    serial = models.PositiveIntegerField()
    identifier = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=PoolStatus.choices, default=PoolStatus.ACTIVE)
    node_count = models.PositiveIntegerField()
    cpu_model = models.ForeignKey(DeviceModel, on_delete=models.PROTECT, related_name="+")
    cpu_cores_per_node = models.PositiveIntegerField()
    memory_gb_per_node = models.PositiveIntegerField()
    storage_gb_per_node = models.PositiveIntegerField(default=0)
    network_gbps = models.PositiveIntegerField(default=0)
    accelerator_model = models.ForeignKey(
        DeviceModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    accelerators_per_node = models.PositiveIntegerField(default=0)
    sharing_allowed = models.BooleanField(default=False, help_text="Sells slices of one accelerator")
    software_stack = models.CharField(max_length=16, choices=STACK_CHOICES)
    cpu_architecture = models.CharField(max_length=16, choices=ARCHITECTURE_CHOICES)
    compute_class = models.CharField(max_length=16, choices=[(c.value, c.name.title()) for c in ComputeClass])
    benchmark_factor = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal("1.000"),
        help_text="Measured delivered/peak throughput; operator-verified",
    )
    benchmark_verified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["site", "serial"], name="pool_serial_unique_per_site"),
            models.CheckConstraint(condition=Q(node_count__gte=1), name="pool_has_nodes"),
            models.CheckConstraint(
                condition=Q(accelerator_model__isnull=True, accelerators_per_node=0)
                | Q(accelerator_model__isnull=False, accelerators_per_node__gte=1),
                name="pool_accelerator_model_iff_count",
            ),
            models.CheckConstraint(
                condition=Q(benchmark_factor__gt=0, benchmark_factor__lte=2), name="pool_benchmark_factor_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.identifier})"

    def shape(self) -> PoolShape:
        return PoolShape(
            compute_class=ComputeClass(self.compute_class),
            node_count=self.node_count,
            cpu=self.cpu_model.spec(),
            cpu_cores_per_node=self.cpu_cores_per_node,
            accelerator=self.accelerator_model.spec() if self.accelerator_model_id else None,
            accelerators_per_node=self.accelerators_per_node,
            benchmark_factor=self.benchmark_factor,
        )
