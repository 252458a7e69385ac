"""Notices to the caller's organisation, and a job's trace."""

from typing import Any

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import query_filters
from core.models import Notice
from core.permissions import IsMember
from core.trace import JobTrace, job_trace
from scheduler.models import Job


class NoticeOutput(serializers.ModelSerializer):
    class Meta:
        model = Notice
        fields = ("id", "kind", "title", "message", "subject_type", "subject_id", "created_at", "read_at")


class NoticeListView(APIView):
    """Your organisation's notices, newest first (``?unread=1`` for unread only)."""

    permission_classes = [IsMember]

    class Filters(serializers.Serializer):
        unread = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="Unread only")

    @extend_schema(parameters=[Filters], responses=NoticeOutput(many=True))
    def get(self, request: Request) -> Response:
        notices = Notice.objects.filter(organisation_id=request.user.organisation_id)
        if query_filters(request, self.Filters).get("unread"):
            notices = notices.filter(read_at__isnull=True)
        return Response(NoticeOutput(notices[:200], many=True).data)


class NoticeReadView(APIView):
    """Mark one of your organisation's notices read."""

    permission_classes = [IsMember]

    @extend_schema(request=None, responses=NoticeOutput)
    def post(self, request: Request, pk: int) -> Response:
        notice = get_object_or_404(Notice, pk=pk, organisation_id=request.user.organisation_id)
        if notice.read_at is None:
            Notice.objects.filter(pk=notice.pk).update(read_at=timezone.now())
            notice.refresh_from_db()
        return Response(NoticeOutput(notice).data)


# --- a job's trace ---------------------------------------------------------------------------------------------------

MONEY = {"max_digits": 18, "decimal_places": 2}
SUMS = {"max_digits": 24, "decimal_places": 2}  # totals over many charges


class TraceJobOutput(serializers.ModelSerializer):
    buyer_name = serializers.CharField(source="buyer.name", read_only=True)

    class Meta:
        model = Job
        fields = (
            "id",
            "name",
            "buyer",
            "buyer_name",
            "status",
            "pending_reason",
            "software_stack",
            "nodes",
            "accelerators_per_node",
            "duration_seconds",
            "interruptible",
            "created_at",
            "queued_at",
            "status_changed_at",
        )


class TraceUsageOutput(serializers.Serializer):
    samples = serializers.IntegerField()
    charged = serializers.IntegerField(help_text="Samples charged so far")
    ncu_hours = serializers.DecimalField(max_digits=24, decimal_places=4)
    device_seconds = serializers.DecimalField(max_digits=24, decimal_places=3)
    energy_kwh = serializers.DecimalField(max_digits=24, decimal_places=3)
    first_start = serializers.DateTimeField(allow_null=True)
    last_end = serializers.DateTimeField(allow_null=True)


class TraceHoldOutput(serializers.Serializer):
    amount = serializers.DecimalField(**MONEY)
    captured = serializers.DecimalField(**MONEY)
    released = serializers.DecimalField(**MONEY)
    status = serializers.CharField()


class TraceLeaseOutput(serializers.Serializer):
    id = serializers.IntegerField()
    pool_identifier = serializers.CharField()
    provider = serializers.CharField(help_text="The provider organisation's name")
    status = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    pricing_type = serializers.CharField()
    unit_price = serializers.DecimalField(max_digits=20, decimal_places=10, help_text="Locked CNY per NCU-hour")
    ncu_hours = serializers.DecimalField(max_digits=18, decimal_places=4, help_text="NCU-hours held")
    estimated_cost = serializers.DecimalField(**MONEY)
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    exit_code = serializers.IntegerField(allow_null=True)
    final_message = serializers.CharField(allow_blank=True)
    usage = TraceUsageOutput()
    hold = TraceHoldOutput(allow_null=True, help_text="The buyer's escrow (not shown to providers)")


class TraceStatementLineOutput(serializers.Serializer):
    samples = serializers.IntegerField()
    ncu_hours = serializers.DecimalField(max_digits=18, decimal_places=4)
    gross = serializers.DecimalField(**MONEY)
    commission = serializers.DecimalField(**MONEY)
    net = serializers.DecimalField(**MONEY)


class TracePayoutOutput(serializers.Serializer):
    transaction = serializers.CharField(help_text="The payout's ledger transaction key")
    amount = serializers.DecimalField(**MONEY, help_text="The whole statement's payout, not this job's part")
    at = serializers.DateTimeField()


class TraceStatementOutput(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.CharField()
    role = serializers.CharField()
    status = serializers.CharField()
    organisation_name = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    lease = serializers.IntegerField()
    line = TraceStatementLineOutput(help_text="The statement's line for this lease")
    payout = TracePayoutOutput(allow_null=True)


class TraceEventOutput(serializers.Serializer):
    at = serializers.DateTimeField()
    kind = serializers.ChoiceField(choices=["audit", "usage", "charge", "voucher_redemption", "statement", "payout"])
    action = serializers.CharField(help_text="e.g. job.submitted, job.transition, lease.transition, charge.captured")
    summary = serializers.CharField()
    actor = serializers.CharField(allow_blank=True)
    lease = serializers.IntegerField(allow_null=True)
    from_state = serializers.CharField(allow_blank=True)
    to_state = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(allow_blank=True, help_text="Why: the scheduler's reason, the operator's, …")
    amount = serializers.DecimalField(**MONEY, allow_null=True)
    data = serializers.DictField(help_text="The event's details as recorded")


class TraceTotalsOutput(serializers.Serializer):
    ncu_hours = serializers.DecimalField(max_digits=24, decimal_places=4)
    gross = serializers.DecimalField(**SUMS)
    voucher_funded = serializers.DecimalField(**SUMS)
    buyer_paid = serializers.DecimalField(
        **SUMS, allow_null=True, help_text="From the hold and the wallet (null for providers)"
    )
    owed = serializers.DecimalField(**SUMS, allow_null=True, help_text="Beyond hold and wallet (null for providers)")
    commission = serializers.DecimalField(**SUMS)
    provider_share = serializers.DecimalField(**SUMS)


class TraceOutput(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=["operator", "buyer", "provider"], help_text="What you see: everything, the buyer's or your part"
    )
    job = TraceJobOutput()
    leases = TraceLeaseOutput(many=True)
    events = TraceEventOutput(many=True, help_text="Everything that happened, oldest first")
    statements = TraceStatementOutput(many=True)
    totals = TraceTotalsOutput(help_text="Over the charges shown")


def _trace_body(trace: JobTrace) -> dict[str, Any]:
    leases = [
        {
            "id": lease.pk,
            "pool_identifier": lease.pool.identifier,
            "provider": lease.pool.site.provider.name,
            "status": lease.status,
            "start": lease.start,
            "end": lease.end,
            "pricing_type": lease.pricing_type,
            "unit_price": lease.unit_price,
            "ncu_hours": lease.ncu_hours,
            "estimated_cost": lease.estimated_cost,
            "acknowledged_at": lease.acknowledged_at,
            "ended_at": lease.ended_at,
            "exit_code": lease.exit_code,
            "final_message": lease.final_message,
            "usage": trace.usage[lease.pk],
            "hold": trace.holds.get(lease.pk),
        }
        for lease in trace.leases
    ]
    statements = [
        {
            "id": item["statement"].pk,
            "number": item["number"],
            "role": item["statement"].role,
            "status": item["statement"].status,
            "organisation_name": item["statement"].organisation.name,
            "period_start": item["statement"].period.start,
            "period_end": item["statement"].period.end,
            "lease": item["line"].lease_id,
            "line": item["line"],
            "payout": (
                {"transaction": item["payout"].key, "amount": item["payout"].amount, "at": item["payout"].at}
                if item["payout"] is not None
                else None
            ),
        }
        for item in trace.statements
    ]
    return {
        "scope": trace.scope,
        "job": trace.job,
        "leases": leases,
        "events": trace.events,
        "statements": statements,
        "totals": trace.totals,
    }


class JobTraceView(APIView):
    """A job's full story, oldest first: submission, every scheduling decision
    with its reason, leases and their state changes, usage samples, charges,
    voucher redemptions, statements and payouts. The buyer that owns the job
    and operators see all of it; a provider that ran one of its leases sees
    its own part; anyone else gets 404."""

    permission_classes = [IsMember]

    @extend_schema(responses=TraceOutput)
    def get(self, request: Request, pk: int) -> Response:
        trace = job_trace(user=request.user, job_id=pk)
        return Response(TraceOutput(_trace_body(trace)).data)
