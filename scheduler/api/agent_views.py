"""The agent API (authenticated with ``Authorization: Agent <token>``, scoped
to one provider) and the provider's management of its agent credentials.
The contract is documented in agent/README.md."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.permissions import IsBuyer, IsProvider
from marketplace.models import Organisation
from scheduler import execution
from scheduler.models import Agent, Lease


class AgentAuthentication(BaseAuthentication):
    keyword = b"agent"

    def authenticate(self, request: Request) -> tuple[Agent, None] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("send the header as: Authorization: Agent <token>")
        agent = execution.agent_authenticate(parts[1].decode(errors="replace"))
        if agent is None:
            raise AuthenticationFailed("unknown or revoked agent token")
        return agent, None

    def authenticate_header(self, request: Request) -> str:
        return "Agent"


class AgentAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "scheduler.api.agent_views.AgentAuthentication"
    name = "agentToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization", "description": "Agent <token>"}


class IsAgent(BasePermission):
    message = "Only a provider's agent may call this (Authorization: Agent <token>)."

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, Agent) and request.user.revoked_at is None


class AgentView(APIView):
    authentication_classes = [AgentAuthentication]
    permission_classes = [IsAgent]

    def lease(self, request: Request, pk: int) -> Lease:
        return execution.lease_of_agent(request.user, pk)


class AgentLeaseOutput(serializers.ModelSerializer):
    job = serializers.SerializerMethodField()
    devices = serializers.SerializerMethodField()
    pool = serializers.CharField(source="pool.identifier", read_only=True, help_text="the pool the lease runs on")
    site = serializers.CharField(source="pool.site.identifier", read_only=True, help_text="the pool's site")
    last_sequence = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = Lease
        fields = (
            "id",
            "status",
            "job",
            "pool",
            "site",
            "start",
            "end",
            "allocations",
            "ncu",
            "devices",
            "last_sequence",
        )

    def get_job(self, lease: Lease) -> dict[str, Any]:
        job = lease.job
        return {"id": job.pk, "name": job.name, "image": job.image, "command": job.command}

    def get_devices(self, lease: Lease) -> int:
        return sum(len(a.get("devices", ())) for a in lease.allocations)


class AgentLeaseListView(AgentView):
    """Agent: the provider's leases to run (scheduled, running or suspended)."""

    @extend_schema(responses=inline_serializer("AgentLeaseList", {"results": AgentLeaseOutput(many=True)}))
    def get(self, request: Request) -> Response:
        return Response({"results": AgentLeaseOutput(execution.agent_leases(request.user), many=True).data})


def _lease_body(lease: Lease) -> dict[str, Any]:
    annotated = execution.agent_leases_any(lease.pk)
    return AgentLeaseOutput(annotated).data


class AgentAckView(AgentView):
    """Agent: the workload started (lease → running, job → running)."""

    @extend_schema(request=None, responses=AgentLeaseOutput)
    def post(self, request: Request, pk: int) -> Response:
        lease = execution.lease_acknowledge(agent=request.user, lease=self.lease(request, pk))
        return Response(_lease_body(lease))


class AgentHeartbeatView(AgentView):
    """Agent: still alive. ``stop`` says the lease no longer runs (cancelled, preempted, suspended or lost)."""

    @extend_schema(
        request=None,
        responses=inline_serializer(
            "HeartbeatOutput", {"status": serializers.CharField(), "stop": serializers.BooleanField()}
        ),
    )
    def post(self, request: Request, pk: int) -> Response:
        status, stop = execution.lease_heartbeat(agent=request.user, lease=self.lease(request, pk))
        return Response({"status": status, "stop": stop})


class AgentProgressView(AgentView):
    """Agent: progress of the workload (服务进度), shown to the buyer."""

    class InputSerializer(serializers.Serializer):
        percent = serializers.DecimalField(max_digits=5, decimal_places=2, min_value=Decimal(0), max_value=Decimal(100))
        message = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses=AgentLeaseOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lease = execution.lease_progress(agent=request.user, lease=self.lease(request, pk), **data.validated_data)
        return Response(_lease_body(lease))


UsageOutput = inline_serializer(
    "UsageOutput", {"id": serializers.IntegerField(), "duplicate": serializers.BooleanField()}
)


class AgentUsageView(AgentView):
    """Agent: a signed usage sample. 201 when recorded, 200 for a sequence already recorded."""

    class InputSerializer(serializers.Serializer):
        sequence = serializers.IntegerField(min_value=1)
        start = serializers.CharField(max_length=64)
        end = serializers.CharField(max_length=64)
        device_seconds = serializers.CharField(max_length=32)
        ncu_hours = serializers.CharField(max_length=32)
        energy_kwh = serializers.CharField(max_length=32, required=False, allow_null=True, default=None)
        signature = serializers.CharField(max_length=128)

    class Parsed(serializers.Serializer):
        start = serializers.DateTimeField()
        end = serializers.DateTimeField()
        device_seconds = serializers.DecimalField(max_digits=18, decimal_places=3, min_value=Decimal(0))
        ncu_hours = serializers.DecimalField(max_digits=18, decimal_places=4, min_value=Decimal(0))
        energy_kwh = serializers.DecimalField(
            max_digits=14, decimal_places=3, min_value=Decimal(0), required=False, allow_null=True
        )

    @extend_schema(request=InputSerializer, responses={201: UsageOutput, 200: UsageOutput})
    def post(self, request: Request, pk: int) -> Response:
        raw = self.InputSerializer(data=request.data)
        raw.is_valid(raise_exception=True)
        text = raw.validated_data
        parsed = self.Parsed(data={k: text[k] for k in ("start", "end", "device_seconds", "ncu_hours", "energy_kwh")})
        parsed.is_valid(raise_exception=True)
        values = parsed.validated_data
        sample, created = execution.lease_usage(
            agent=request.user,
            lease=self.lease(request, pk),
            sequence=text["sequence"],
            start=values["start"],
            end=values["end"],
            device_seconds=values["device_seconds"],
            ncu_hours=values["ncu_hours"],
            energy_kwh=values.get("energy_kwh"),
            signature=text["signature"],
            signed_text={k: text[k] for k in ("start", "end", "device_seconds", "ncu_hours", "energy_kwh")},
        )
        return Response({"id": sample.pk, "duplicate": not created}, status=201 if created else 200)


class AgentCompleteView(AgentView):
    """Agent: the workload ended with this exit code (0 → completed, else failed)."""

    class InputSerializer(serializers.Serializer):
        exit_code = serializers.IntegerField(min_value=-255, max_value=255)
        message = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses=AgentLeaseOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lease = execution.lease_complete(agent=request.user, lease=self.lease(request, pk), **data.validated_data)
        return Response(_lease_body(lease))


# --- providers manage their agents ------------------------------------------------------------------------------------


class AgentOutput(serializers.ModelSerializer):
    class Meta:
        model = Agent
        fields = ("id", "name", "created_at", "rotated_at", "revoked_at", "last_seen_at")


class IssuedOutput(serializers.Serializer):
    id = serializers.IntegerField(source="agent.pk")
    name = serializers.CharField(source="agent.name")
    created_at = serializers.DateTimeField(source="agent.created_at")
    token = serializers.CharField()
    secret = serializers.CharField()


class AgentListView(APIView):
    """Provider: your agents (GET); register one (POST) — its token and secret are shown only in this answer."""

    permission_classes = [IsProvider]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)

    @extend_schema(responses=AgentOutput(many=True))
    def get(self, request: Request) -> Response:
        agents = Agent.objects.filter(provider_id=request.user.organisation_id)
        return Response(AgentOutput(agents, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: IssuedOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = execution.agent_create(user=request.user, name=data.validated_data["name"])
        return Response(IssuedOutput(issued).data, status=201)


class AgentRotateView(APIView):
    """Provider: new token and secret for an agent; the old ones stop working."""

    permission_classes = [IsProvider]

    @extend_schema(request=None, responses=IssuedOutput)
    def post(self, request: Request, pk: int) -> Response:
        agent = get_object_or_404(Agent, pk=pk, provider_id=request.user.organisation_id)
        return Response(IssuedOutput(execution.agent_rotate(agent=agent, user=request.user)).data)


class AgentRevokeView(APIView):
    """Provider: revoke an agent's credential."""

    permission_classes = [IsProvider]

    @extend_schema(request=None, responses=AgentOutput)
    def post(self, request: Request, pk: int) -> Response:
        agent = get_object_or_404(Agent, pk=pk, provider_id=request.user.organisation_id)
        return Response(AgentOutput(execution.agent_revoke(agent=agent, user=request.user)).data)


# --- buyers rate, everyone reads provider profiles ---------------------------------------------------------------


class LeaseRateView(APIView):
    """Buyer: rate a completed lease of your job, 1–5 with a comment (once)."""

    permission_classes = [IsBuyer]

    class InputSerializer(serializers.Serializer):
        score = serializers.IntegerField(min_value=1, max_value=5)
        comment = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    @extend_schema(
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "RatingOutput", {"id": serializers.IntegerField(), "score": serializers.IntegerField()}
            )
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lease = get_object_or_404(
            Lease.objects.select_related("job", "pool__site"), pk=pk, job__buyer_id=request.user.organisation_id
        )
        rating = execution.lease_rate(user=request.user, lease=lease, **data.validated_data)
        return Response({"id": rating.pk, "score": rating.score}, status=201)


class ProviderProfileView(APIView):
    """A verified provider's public profile: reliability, lease outcomes, ratings and their average."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: inline_serializer("ProviderProfile", {"identifier": serializers.CharField()})})
    def get(self, request: Request, identifier: str) -> Response:
        provider = get_object_or_404(
            Organisation, identifier=identifier.strip().upper(), category="provider", verification_status="verified"
        )
        return Response(execution.provider_profile(provider))
