"""Offers, jobs (orders, 业务订单) and leases. State changes go through
scheduler.services; nothing else assigns ``status``."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from marketplace.models import ARCHITECTURE_CHOICES, STACK_CHOICES, Organisation, ResourcePool


class PricingType(models.TextChoices):
    ON_DEMAND = "on_demand", "On demand"
    RESERVED = "reserved", "Reserved"
    INTERRUPTIBLE = "interruptible", "Interruptible (spot)"


class OfferStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    WITHDRAWN = "withdrawn", "Withdrawn"


class Offer(models.Model):
    """A provider's listing on a pool: some of its nodes, in a time window, at a price."""

    pool = models.ForeignKey(ResourcePool, on_delete=models.PROTECT, related_name="offers")
    status = models.CharField(max_length=16, choices=OfferStatus.choices, default=OfferStatus.ACTIVE)
    nodes_offered = models.PositiveIntegerField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField(null=True, blank=True)
    pricing_type = models.CharField(max_length=16, choices=PricingType.choices, default=PricingType.ON_DEMAND)
    list_price = models.DecimalField(max_digits=20, decimal_places=10, help_text="CNY per NCU-hour")
    price_rules = models.JSONField(
        default=dict, blank=True, help_text="Commitment tiers, interruptible curve, time of use, green, volume tiers"
    )
    min_lease_hours = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal(0))
    max_lease_hours = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    generation = models.PositiveBigIntegerField(default=0, help_text="Bumped by every capacity claim")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=Q(nodes_offered__gte=1), name="offer_has_nodes"),
            models.CheckConstraint(condition=Q(list_price__gte=0), name="offer_price_not_negative"),
            models.CheckConstraint(
                condition=Q(window_end__isnull=True) | Q(window_end__gt=models.F("window_start")),
                name="offer_window_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"Offer {self.pk} on {self.pool_id}"


class JobStatus(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"
    QUEUED = "queued", "Queued"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    PREEMPTED = "preempted", "Preempted"


FINAL_JOB_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Objective(models.TextChoices):
    CHEAPEST = "cheapest", "Cheapest"
    EARLIEST = "earliest", "Earliest"
    GREENEST = "greenest", "Greenest"


class Precision(models.TextChoices):
    FP64 = "fp64", "FP64"
    FP32 = "fp32", "FP32"
    FP16 = "fp16", "FP16/BF16"
    INT8 = "int8", "INT8"


class Job(models.Model):
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="jobs")
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=200)
    image = models.CharField(max_length=500, blank=True)
    command = models.JSONField(default=list, help_text="argv of the workload")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.SUBMITTED, db_index=True)
    # demand
    device_models = models.JSONField(default=list, blank=True)
    capacity_tflops = models.DecimalField(max_digits=14, decimal_places=3, null=True, blank=True)
    capacity_precision = models.CharField(max_length=8, choices=Precision.choices, blank=True)
    capacity_accelerator_memory_gib = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal(0))
    accelerators_per_node = models.PositiveIntegerField(default=0)
    accelerator_milli = models.PositiveIntegerField(default=0)
    nodes = models.PositiveIntegerField(default=1)
    cpu_milli_per_node = models.PositiveIntegerField(default=0)
    memory_mib_per_node = models.PositiveIntegerField(default=0)
    storage_gib_per_node = models.PositiveIntegerField(default=0)
    accelerator_memory_gib = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal(0))
    software_stack = models.CharField(max_length=16, choices=STACK_CHOICES)
    cpu_architecture = models.CharField(max_length=16, choices=ARCHITECTURE_CHOICES, blank=True)
    duration_seconds = models.PositiveIntegerField()
    earliest_start = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    max_price_per_ncu_hour = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    max_total_price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    allowed_hubs = models.JSONField(default=list, blank=True)
    buyer_city = models.CharField(max_length=32, blank=True)
    max_latency_ms = models.FloatField(null=True, blank=True)
    domestic_only = models.BooleanField(default=False)
    interruptible = models.BooleanField(default=False)
    objective = models.CharField(max_length=16, choices=Objective.choices, default=Objective.CHEAPEST)
    priority = models.IntegerField(default=0)
    retry_on_loss = models.BooleanField(default=True, help_text="Re-queue elsewhere if a lease is lost")
    # progress and explanations
    pending_reason = models.TextField(blank=True)
    pending_detail = models.JSONField(default=dict, blank=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        indexes = [models.Index(fields=["status", "queued_at"], name="job_queue_idx")]

    def __str__(self) -> str:
        return f"Job {self.pk} {self.name}"


class LeaseStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    LOST = "lost", "Lost"
    PREEMPTED = "preempted", "Preempted"
    CANCELLED = "cancelled", "Cancelled"
    SUSPENDED = "suspended", "Suspended (unpaid usage)"


# Leases that keep their capacity: a suspended lease keeps its nodes while the buyer settles.
HOLDING_LEASE_STATES = (LeaseStatus.SCHEDULED, LeaseStatus.RUNNING, LeaseStatus.SUSPENDED)


class Lease(models.Model):
    """A job matched to capacity: offer nodes, a time window and a locked price."""

    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="leases")
    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="leases")
    pool = models.ForeignKey(ResourcePool, on_delete=models.PROTECT, related_name="leases")
    status = models.CharField(max_length=16, choices=LeaseStatus.choices, default=LeaseStatus.SCHEDULED)
    start = models.DateTimeField()
    end = models.DateTimeField()
    allocations = models.JSONField(help_text="Per node: node, devices, thousandths, CPU and memory held")
    pricing_type = models.CharField(max_length=16, choices=PricingType.choices)
    unit_price = models.DecimalField(max_digits=20, decimal_places=10, help_text="Locked CNY per NCU-hour")
    ncu = models.DecimalField(max_digits=16, decimal_places=4, help_text="NCU held")
    ncu_hours = models.DecimalField(max_digits=18, decimal_places=4)
    estimated_cost = models.DecimalField(max_digits=14, decimal_places=2)
    volume_position = models.DecimalField(
        max_digits=18, decimal_places=4, default=Decimal(0), help_text="Buyer's NCU-hours this month when priced"
    )
    energy_kwh = models.DecimalField(max_digits=14, decimal_places=3, default=Decimal(0))
    carbon_kg = models.DecimalField(max_digits=14, decimal_places=3, default=Decimal(0))
    interruptible = models.BooleanField(default=False)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress_percent = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    progress_message = models.CharField(max_length=500, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    final_message = models.TextField(blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="lease_window_ordered"),
            models.UniqueConstraint(
                fields=["job"],
                condition=Q(status__in=["scheduled", "running", "suspended"]),
                name="one_holding_lease_per_job",
            ),
        ]
        indexes = [models.Index(fields=["offer", "status"], name="lease_offer_status_idx")]

    def __str__(self) -> str:
        return f"Lease {self.pk} of job {self.job_id}"


class Agent(models.Model):
    """A provider's agent credential: a bearer token (stored hashed) and an
    HMAC secret that signs usage samples. Rotating replaces both; revoking
    ends them."""

    provider = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="agents")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    secret = models.CharField(max_length=128, help_text="HMAC key for usage signatures")
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"Agent {self.name} of {self.provider_id}"

    @property
    def is_authenticated(self) -> bool:  # lets DRF treat the agent as request.user
        return self.revoked_at is None


class Rating(models.Model):
    """A buyer's rating of a completed lease (1–5)."""

    lease = models.OneToOneField(Lease, on_delete=models.PROTECT, related_name="rating")
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="ratings_given")
    provider = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="ratings_received")
    score = models.PositiveSmallIntegerField()
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [models.CheckConstraint(condition=Q(score__gte=1, score__lte=5), name="rating_1_to_5")]

    def __str__(self) -> str:
        return f"{self.score}/5 for lease {self.lease_id}"
