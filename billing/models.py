"""The double-entry ledger, escrow holds, usage samples and their charges,
and settlement. Balances are derived from postings; ``Account.balance`` is a
cache updated in the same transaction as the postings and reconciled by
``manage.py check_ledger``. Rows here are written only by billing.services."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Round

from marketplace.models import Organisation

MONEY = {"max_digits": 18, "decimal_places": 2}


class AccountKind(models.TextChoices):
    BUYER_AVAILABLE = "available", "Buyer: available"
    BUYER_HELD = "held", "Buyer: held in escrow"
    BUYER_DEBT = "debt", "Buyer: usage owed beyond the hold"
    PROVIDER_PAYABLE = "payable", "Provider: earned, not yet paid out"
    PROVIDER_DISPUTED = "disputed", "Provider: held back under dispute"
    PLATFORM_COMMISSION = "commission", "Platform: commission revenue"
    BANK_CLEARING = "clearing", "Platform: external bank clearing"
    ADJUSTMENTS = "adjustments", "Platform: operator adjustments"
    PROGRAMME_BUDGET = "budget", "Voucher programme: uncommitted budget"
    PROGRAMME_LAPSED = "lapsed", "Voucher programme: balances forfeited at expiry"
    VOUCHER = "voucher", "Voucher: issued, not yet redeemed"


# What may go below zero. The clearing account stands for the world outside
# (it goes negative by money paid in); adjustments carry operator credits;
# a buyer's debt account goes negative by what the buyer owes.
MAY_GO_NEGATIVE = frozenset({AccountKind.BANK_CLEARING, AccountKind.ADJUSTMENTS, AccountKind.BUYER_DEBT})


class Account(models.Model):
    code = models.CharField(max_length=64, unique=True, help_text='e.g. "org:12:available", "platform:commission"')
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    kind = models.CharField(max_length=16, choices=AccountKind.choices)
    currency = models.CharField(max_length=3, default="CNY")
    may_go_negative = models.BooleanField(default=False)
    balance = models.DecimalField(**MONEY, default=Decimal("0.00"))

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(
                condition=Q(may_go_negative=True) | Q(balance__gte=0), name="account_balance_not_negative"
            ),
            models.UniqueConstraint(
                fields=["organisation", "kind"], condition=Q(organisation__isnull=False), name="one_account_per_kind"
            ),
        ]

    def __str__(self) -> str:
        return self.code


class LedgerTransaction(models.Model):
    """An append-only movement of money; its postings sum to zero."""

    key = models.CharField(max_length=255, unique=True, help_text="Idempotency key: a retry returns this row")
    kind = models.CharField(max_length=32, db_index=True)
    memo = models.CharField(max_length=500, blank=True)
    fingerprint = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.key


class Posting(models.Model):
    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="postings")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="postings")
    amount = models.DecimalField(**MONEY, help_text="Positive: money into the account; negative: out")

    class Meta:
        ordering = ("id",)
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="posting_not_zero")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.amount:+}"


class HoldStatus(models.TextChoices):
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed (captured and released)"
    VOIDED = "voided", "Voided (nothing ran)"


class Hold(models.Model):
    """Escrow of a lease's estimated maximum cost, two-phase: captured by
    usage, the rest released at the end (or voided if nothing ran)."""

    lease = models.OneToOneField("scheduler.Lease", on_delete=models.PROTECT, related_name="hold")
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="holds")
    amount = models.DecimalField(**MONEY)
    captured = models.DecimalField(**MONEY, default=Decimal("0.00"))
    released = models.DecimalField(**MONEY, default=Decimal("0.00"))
    status = models.CharField(max_length=16, choices=HoldStatus.choices, default=HoldStatus.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(captured__gte=0, released__gte=0, amount__gte=0), name="hold_amounts_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(amount__gte=Round(models.F("captured") + models.F("released"), 2)),
                name="hold_not_overdrawn",
            ),
        ]

    def __str__(self) -> str:
        return f"Hold of {self.amount} for lease {self.lease_id}"

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.captured - self.released


class UsageSample(models.Model):
    """Metered usage of a lease over [start, end), reported (and signed) by the provider's agent."""

    lease = models.ForeignKey("scheduler.Lease", on_delete=models.PROTECT, related_name="usage_samples")
    sequence = models.PositiveIntegerField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    device_seconds = models.DecimalField(max_digits=18, decimal_places=3, default=Decimal(0))
    ncu_hours = models.DecimalField(max_digits=18, decimal_places=4)
    energy_kwh = models.DecimalField(max_digits=14, decimal_places=3, null=True, blank=True)
    signature = models.CharField(max_length=128, blank=True)
    charged = models.BooleanField(default=False)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        # Charging claims the oldest uncharged samples: a small index of those alone, however many are charged.
        indexes = [models.Index(fields=["id"], condition=Q(charged=False), name="usage_sample_uncharged")]
        constraints = [
            models.UniqueConstraint(fields=["lease", "sequence"], name="usage_sample_once_per_sequence"),
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="usage_window_ordered"),
            models.CheckConstraint(condition=Q(ncu_hours__gte=0), name="usage_not_negative"),
        ]

    def __str__(self) -> str:
        return f"Usage {self.sequence} of lease {self.lease_id}"


class Charge(models.Model):
    """The money for one usage sample at the lease's locked price: exactly once."""

    sample = models.OneToOneField(UsageSample, on_delete=models.PROTECT, related_name="charge")
    lease = models.ForeignKey("scheduler.Lease", on_delete=models.PROTECT, related_name="charges")
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    pricing_type = models.CharField(max_length=16)
    unit_price = models.DecimalField(max_digits=20, decimal_places=10)
    ncu_hours = models.DecimalField(max_digits=18, decimal_places=4)
    gross = models.DecimalField(**MONEY)
    commission = models.DecimalField(**MONEY)
    provider_share = models.DecimalField(**MONEY)
    from_hold = models.DecimalField(**MONEY, default=Decimal("0.00"))
    from_available = models.DecimalField(**MONEY, default=Decimal("0.00"))
    owed = models.DecimalField(**MONEY, default=Decimal("0.00"), help_text="Not covered: recorded as debt")
    voucher_funded = models.DecimalField(
        **MONEY, default=Decimal("0.00"), help_text="Paid by the buyer's compute vouchers (see vouchers.ChargeSubsidy)"
    )
    transaction = models.OneToOneField(LedgerTransaction, on_delete=models.PROTECT, related_name="charge")
    provider_statement = models.ForeignKey(
        "billing.SettlementStatement", null=True, blank=True, on_delete=models.PROTECT, related_name="provider_charges"
    )
    buyer_statement = models.ForeignKey(
        "billing.SettlementStatement", null=True, blank=True, on_delete=models.PROTECT, related_name="buyer_charges"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            # Sums are rounded to the fen in the check: SQLite keeps decimals as
            # binary floats, where 9.88 + 113.57 is not 123.45.
            models.CheckConstraint(
                condition=Q(gross=Round(models.F("commission") + models.F("provider_share"), 2)),
                name="charge_split_exact",
            ),
            models.CheckConstraint(
                condition=Q(
                    gross=Round(
                        models.F("from_hold")
                        + models.F("from_available")
                        + models.F("owed")
                        + models.F("voucher_funded"),
                        2,
                    )
                ),
                name="charge_funded_exactly",
            ),
            models.CheckConstraint(condition=Q(gross__gte=0), name="charge_not_negative"),
            models.CheckConstraint(condition=Q(voucher_funded__gte=0), name="charge_voucher_funded_not_negative"),
        ]

    def __str__(self) -> str:
        return f"Charge {self.gross} for usage {self.sample_id}"


class PeriodStatus(models.TextChoices):
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed"


class SettlementPeriod(models.Model):
    start = models.DateTimeField()
    end = models.DateTimeField()
    status = models.CharField(max_length=16, choices=PeriodStatus.choices, default=PeriodStatus.OPEN)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("start",)
        constraints = [
            models.UniqueConstraint(fields=["start", "end"], name="settlement_period_unique"),
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="settlement_period_ordered"),
        ]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} – {self.end:%Y-%m-%d %H:%M}"


class StatementRole(models.TextChoices):
    PROVIDER = "provider", "Provider"
    BUYER = "buyer", "Buyer"


class StatementStatus(models.TextChoices):
    PENDING_REVIEW = "pending_review", "Pending review"
    APPROVED = "approved", "Approved"
    DISPUTED = "disputed", "Disputed"
    PAID = "paid", "Paid out"
    FINAL = "final", "Final (buyer statement)"


class SettlementStatement(models.Model):
    period = models.ForeignKey(SettlementPeriod, on_delete=models.PROTECT, related_name="statements")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="statements")
    role = models.CharField(max_length=16, choices=StatementRole.choices)
    status = models.CharField(max_length=16, choices=StatementStatus.choices)
    gross = models.DecimalField(**MONEY, default=Decimal("0.00"))
    commission = models.DecimalField(**MONEY, default=Decimal("0.00"))
    net = models.DecimalField(**MONEY, default=Decimal("0.00"))
    voucher_funded = models.DecimalField(**MONEY, default=Decimal("0.00"))
    adjustments = models.DecimalField(**MONEY, default=Decimal("0.00"))
    disputed_amount = models.DecimalField(**MONEY, default=Decimal("0.00"))
    samples = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["period", "organisation", "role"], name="one_statement_per_party"),
        ]

    def __str__(self) -> str:
        return f"{self.role} statement {self.pk} of {self.organisation_id}"

    @property
    def payable(self) -> Decimal:
        return self.net + self.adjustments - self.disputed_amount


class StatementLine(models.Model):
    """One lease's usage in a statement."""

    statement = models.ForeignKey(SettlementStatement, on_delete=models.PROTECT, related_name="lines")
    lease = models.ForeignKey("scheduler.Lease", on_delete=models.PROTECT, related_name="+")
    samples = models.PositiveIntegerField()
    ncu_hours = models.DecimalField(max_digits=18, decimal_places=4)
    gross = models.DecimalField(**MONEY)
    commission = models.DecimalField(**MONEY)
    net = models.DecimalField(**MONEY)

    class Meta:
        ordering = ("id",)
        constraints = [models.UniqueConstraint(fields=["statement", "lease"], name="one_line_per_lease")]

    def __str__(self) -> str:
        return f"Lease {self.lease_id}: {self.gross}"


class PaymentNoticeStatus(models.TextChoices):
    PENDING = "pending", "Pending: not yet found on the bank account"
    CONFIRMED = "confirmed", "Confirmed: credited to the wallet"
    REJECTED = "rejected", "Rejected: no such payment arrived"


class PaymentNotice(models.Model):
    """A buyer's notice of money paid in to the platform's bank account, with
    the payment's reference. Nothing moves when it is given: an operator who
    finds the payment on the bank statement confirms it, and only then is the
    top-up posted to the ledger (``transaction``); otherwise it is rejected
    with a reason. One notice per organisation and reference."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="payment_notices")
    amount = models.DecimalField(**MONEY)
    reference = models.CharField(max_length=200)
    reference_key = models.CharField(
        max_length=200, db_index=True, help_text="The reference without case, spaces or separators (one per transfer)"
    )
    status = models.CharField(max_length=16, choices=PaymentNoticeStatus.choices, default=PaymentNoticeStatus.PENDING)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="The operator's reason (required to reject)")
    transaction = models.OneToOneField(
        LedgerTransaction, on_delete=models.PROTECT, null=True, blank=True, related_name="payment_notice"
    )

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(fields=("organisation", "reference_key"), name="payment_notice_once_per_reference"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_notice_amount_positive"),
            models.CheckConstraint(
                condition=Q(status="confirmed", transaction__isnull=False) | ~Q(status="confirmed"),
                name="payment_notice_confirmed_has_transaction",
            ),
        ]
        indexes = [models.Index(fields=("status", "id"), name="payment_notice_queue")]

    def __str__(self) -> str:
        return f"Payment notice {self.reference} of {self.amount} ({self.status})"
