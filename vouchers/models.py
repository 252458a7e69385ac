"""Compute voucher programmes (算力券), applications (申领), vouchers (发放),
their redemptions at charge time (核销) and redemption statements (兑付).

Money lives in the billing ledger (accounts ``programme:<id>:budget``,
``programme:<id>:lapsed`` and ``voucher:<id>``, see
:mod:`vouchers.domain.movements`); the rows here describe it. Rows are
written only by vouchers.services."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Round

from billing.models import Account, Charge
from marketplace.models import Organisation, Site

MONEY = {"max_digits": 18, "decimal_places": 2}
RATIO = {"max_digits": 5, "decimal_places": 4}


class ApplicantFlag(models.TextChoices):
    STARTUP = "startup", "Start-up"


class ClawbackRule(models.TextChoices):
    REBILL_BUYER = "rebill_buyer", "Re-bill the buyer"
    WRITE_OFF = "write_off", "Written off by the platform"


class ProgrammeStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    CLOSED = "closed", "Closed"


class VoucherProgramme(models.Model):
    """A programme run by an issuing authority: its rules are data (see
    :class:`vouchers.domain.subsidy.ProgrammeRules`)."""

    name = models.CharField(max_length=200, unique=True)
    authority = models.CharField(max_length=200, help_text="Issuing authority, e.g. a city data bureau")
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=ProgrammeStatus.choices, default=ProgrammeStatus.ACTIVE)
    budget = models.DecimalField(
        **MONEY, default=Decimal("0.00"), help_text="Deposited so far (the ledger is the truth)"
    )
    ratio_rules = models.JSONField(
        default=list, help_text='[{"compute_class": null, "domestic": true, "ratio": "0.30", "flagged_ratio": null}]'
    )
    flag = models.CharField(
        max_length=16, choices=ApplicantFlag.choices, blank=True, help_text="Applicant kind with the higher ratio"
    )
    per_org_yearly_cap = models.DecimalField(**MONEY, null=True, blank=True)
    per_charge_cap = models.DecimalField(**MONEY, null=True, blank=True)
    eligible_categories = models.JSONField(default=list, blank=True, help_text="Empty: every buyer category")
    sme_only = models.BooleanField(default=False, help_text="Enterprises must be SMEs")
    registration_cities = models.JSONField(default=list, blank=True)
    registration_regions = models.JSONField(default=list, blank=True)
    eligible_providers = models.ManyToManyField(
        Organisation, blank=True, related_name="partner_programmes", help_text="Partner list; empty: any provider"
    )
    eligible_sites = models.ManyToManyField(Site, blank=True, related_name="voucher_programmes")
    eligible_hubs = models.JSONField(default=list, blank=True)
    eligible_classes = models.JSONField(default=list, blank=True)
    application_opens = models.DateTimeField()
    application_closes = models.DateTimeField()
    validity_days = models.PositiveIntegerField(help_text="A voucher is valid this many days from issuance")
    stacking_group = models.CharField(max_length=64, blank=True, help_text="Empty: combines with no other programme")
    combined_max_ratio = models.DecimalField(**RATIO, default=Decimal("1.0000"))
    return_on_expiry = models.BooleanField(default=True, help_text="Unused balances return to the budget")
    clawback_rule = models.CharField(max_length=16, choices=ClawbackRule.choices, default=ClawbackRule.REBILL_BUYER)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(
                condition=Q(application_closes__gt=F("application_opens")), name="programme_window_ordered"
            ),
            models.CheckConstraint(
                condition=Q(combined_max_ratio__gte=0, combined_max_ratio__lte=1), name="programme_combined_max_0_1"
            ),
            models.CheckConstraint(condition=Q(validity_days__gte=1), name="programme_validity_positive"),
            models.CheckConstraint(
                condition=Q(per_org_yearly_cap__isnull=True) | Q(per_org_yearly_cap__gt=0),
                name="programme_yearly_cap_positive",
            ),
            models.CheckConstraint(
                condition=Q(per_charge_cap__isnull=True) | Q(per_charge_cap__gt=0), name="programme_charge_cap_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class RelationKind(models.TextChoices):
    PARENT_SUBSIDIARY = "parent_subsidiary", "Parent and subsidiary"
    COMMON_CONTROL = "common_control", "Under common control"
    SHAREHOLDING = "shareholding", "Significant shareholding"
    OTHER = "other", "Other related party"


class OrganisationRelation(models.Model):
    """A declared relation (关联方) between two organisations: vouchers never
    pay for compute one buys from the other. Stored once per pair, the lower id first."""

    organisation_a = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    organisation_b = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=24, choices=RelationKind.choices)
    note = models.CharField(max_length=500, blank=True)
    declared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["organisation_a", "organisation_b"], name="one_relation_per_pair"),
            models.CheckConstraint(condition=Q(organisation_a__lt=F("organisation_b")), name="relation_pair_ordered"),
        ]

    def __str__(self) -> str:
        return f"{self.organisation_a_id} ~ {self.organisation_b_id} ({self.kind})"


class ApplicationStatus(models.TextChoices):
    PENDING_REVIEW = "pending_review", "Pending review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


class VoucherApplication(models.Model):
    """An organisation's application (申领) with the automatic checks' results."""

    programme = models.ForeignKey(VoucherProgramme, on_delete=models.PROTECT, related_name="applications")
    applicant = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="voucher_applications")
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_amount = models.DecimalField(**MONEY)
    intended_use = models.TextField()
    flags = models.JSONField(default=list, blank=True, help_text='Applicant kinds claimed, e.g. ["startup"]')
    status = models.CharField(max_length=16, choices=ApplicationStatus.choices, db_index=True)
    checks = models.JSONField(default=list, help_text="The automatic checks: name, passed, hard, detail")
    automatic = models.BooleanField(default=False, help_text="Decided by the automatic checks")
    granted_amount = models.DecimalField(**MONEY, null=True, blank=True)
    granted_flags = models.JSONField(default=list, blank=True)
    reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(
                fields=["programme", "applicant"],
                condition=Q(status="pending_review"),
                name="one_open_application_per_programme",
            ),
            models.CheckConstraint(condition=Q(requested_amount__gt=0), name="application_amount_positive"),
            models.CheckConstraint(
                condition=Q(granted_amount__isnull=True)
                | Q(granted_amount__gt=0, granted_amount__lte=F("requested_amount")),
                name="application_grant_within_request",
            ),
        ]

    def __str__(self) -> str:
        return f"Application {self.pk} of {self.applicant_id} to {self.programme_id}"


class ApplicationDocument(models.Model):
    """A supporting file of an application, kept in the database (small files only)."""

    application = models.ForeignKey(VoucherApplication, on_delete=models.PROTECT, related_name="documents")
    name = models.CharField(max_length=200)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    content = models.BinaryField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.name


class VoucherStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"


class Voucher(models.Model):
    """An issued voucher (发放): a ledger account funded from the programme's
    budget, valid over [valid_from, expires_at)."""

    programme = models.ForeignKey(VoucherProgramme, on_delete=models.PROTECT, related_name="vouchers")
    holder = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="vouchers")
    application = models.OneToOneField(VoucherApplication, on_delete=models.PROTECT, related_name="voucher")
    amount = models.DecimalField(**MONEY, help_text="Issued")
    flags = models.JSONField(default=list, blank=True, help_text="Applicant kinds granted, e.g. start-up")
    account = models.OneToOneField(
        Account, null=True, blank=True, on_delete=models.PROTECT, related_name="voucher", help_text="voucher:<id>"
    )
    status = models.CharField(max_length=16, choices=VoucherStatus.choices, default=VoucherStatus.ACTIVE)
    valid_from = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    issued_at = models.DateTimeField(auto_now_add=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="voucher_amount_positive"),
            models.CheckConstraint(condition=Q(expires_at__gt=F("valid_from")), name="voucher_validity_ordered"),
        ]
        indexes = [models.Index(fields=["holder", "status"], name="voucher_holder_status_idx")]

    def __str__(self) -> str:
        return f"Voucher {self.pk} of {self.holder_id}"

    @property
    def balance(self) -> Decimal:
        return self.account.balance if self.account_id else Decimal("0.00")


class JobVoucherChoice(models.Model):
    """Whether a job pays with the buyer's vouchers (the job's "how it pays")."""

    job = models.OneToOneField("scheduler.Job", on_delete=models.PROTECT, related_name="voucher_choice")
    enabled = models.BooleanField(default=True)
    chosen_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Job {self.job_id} vouchers {'on' if self.enabled else 'off'}"


class RedemptionStatus(models.TextChoices):
    PENDING_REVIEW = "pending_review", "Pending review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected (clawed back)"


class RedemptionStatement(models.Model):
    """A programme's redemptions (核销) in one period, with the evidence the
    platform assembles, for the operator to approve (兑付) or reject."""

    programme = models.ForeignKey(VoucherProgramme, on_delete=models.PROTECT, related_name="statements")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(
        max_length=16, choices=RedemptionStatus.choices, default=RedemptionStatus.PENDING_REVIEW, db_index=True
    )
    lines = models.PositiveIntegerField(default=0)
    amount = models.DecimalField(**MONEY, default=Decimal("0.00"))
    approved_amount = models.DecimalField(**MONEY, default=Decimal("0.00"))
    clawed_back_amount = models.DecimalField(**MONEY, default=Decimal("0.00"))
    reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(
                fields=["programme", "period_start", "period_end"], name="one_redemption_statement_per_period"
            ),
            models.CheckConstraint(condition=Q(period_end__gt=F("period_start")), name="redemption_period_ordered"),
        ]

    def __str__(self) -> str:
        return f"Redemption statement {self.pk} of programme {self.programme_id}"


class SubsidyOutcome(models.TextChoices):
    PENDING = "pending", "Awaiting redemption review"
    APPROVED = "approved", "Redeemed (approved)"
    CLAWED_BACK = "clawed_back", "Rejected and clawed back"


class ChargeSubsidy(models.Model):
    """What one voucher paid of one charge (核销). ``refunded`` is what later
    refunds returned to the voucher or programme."""

    charge = models.ForeignKey(Charge, on_delete=models.PROTECT, related_name="subsidies")
    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="subsidies")
    programme = models.ForeignKey(VoucherProgramme, on_delete=models.PROTECT, related_name="subsidies")
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    hub = models.CharField(max_length=8)
    compute_class = models.CharField(max_length=16)
    ratio = models.DecimalField(**RATIO)
    amount = models.DecimalField(**MONEY)
    refunded = models.DecimalField(**MONEY, default=Decimal("0.00"))
    statement = models.ForeignKey(
        RedemptionStatement, null=True, blank=True, on_delete=models.PROTECT, related_name="subsidies"
    )
    outcome = models.CharField(max_length=16, choices=SubsidyOutcome.choices, default=SubsidyOutcome.PENDING)
    outcome_reason = models.TextField(blank=True)
    clawback_transaction = models.ForeignKey(
        "billing.LedgerTransaction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["charge", "voucher"], name="one_subsidy_per_charge_and_voucher"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="subsidy_positive"),
            models.CheckConstraint(
                condition=Q(refunded__gte=0, refunded__lte=F("amount")), name="subsidy_refund_within_amount"
            ),
        ]
        indexes = [models.Index(fields=["buyer", "programme", "created_at"], name="subsidy_buyer_year_idx")]

    def __str__(self) -> str:
        return f"{self.amount} of charge {self.charge_id} from voucher {self.voucher_id}"


class ChargeRefund(models.Model):
    """A refund or correction of part of a charge: the provider and the
    platform give back their shares; each voucher's share returns to the
    voucher (or its programme), only the buyer's own share to the buyer."""

    charge = models.ForeignKey(Charge, on_delete=models.PROTECT, related_name="refunds")
    reference = models.CharField(max_length=100, help_text="The correction's reference: a retry returns this row")
    amount = models.DecimalField(**MONEY)
    provider_share = models.DecimalField(**MONEY)
    commission = models.DecimalField(**MONEY)
    to_vouchers = models.DecimalField(**MONEY)
    to_buyer = models.DecimalField(**MONEY)
    reason = models.TextField()
    transaction = models.OneToOneField("billing.LedgerTransaction", on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["charge", "reference"], name="one_refund_per_reference"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_positive"),
            models.CheckConstraint(
                condition=Q(amount=Round(F("provider_share") + F("commission"), 2)), name="refund_split_exact"
            ),
            models.CheckConstraint(
                condition=Q(amount=Round(F("to_vouchers") + F("to_buyer"), 2)), name="refund_returned_exactly"
            ),
        ]

    def __str__(self) -> str:
        return f"Refund of {self.amount} on charge {self.charge_id}"
