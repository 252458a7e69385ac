"""One market with two organisations of each kind, made through the services
as users make it, for the access matrix: every kind of object the API
serves exists for organisation A (and some for B), with the credentials of
each actor.

Actors: ``anon``; ``buyer``, ``provider`` (organisation A); ``operator``;
``buyer_b`` and ``provider_b`` (organisation B, acting on A's objects);
``agent`` (provider A's agent), ``agent_b`` (provider B's) and ``revoked``
(a revoked agent of provider A)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from billing import payments
from billing import services as billing
from billing.models import Charge, SettlementStatement
from core.notices import notify
from scheduler import execution
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories
from tests.billing.test_settlement import charge_usage, close_until_now
from tests.vouchers import helpers as voucher_helpers
from vouchers import services as vouchers
from vouchers import statements as redemption_statements
from vouchers.models import RedemptionStatement

USER_ACTORS = ("buyer", "provider", "operator", "buyer_b", "provider_b")
AGENT_ACTORS = ("agent", "agent_b", "revoked")
ACTORS = ("anon", *USER_ACTORS, *AGENT_ACTORS)


@dataclass
class World:
    objects: dict[str, Any] = field(default_factory=dict)
    users: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # actor → Authorization header value
    sessions: dict[str, dict[str, str]] = field(default_factory=dict)  # actor → session cookies
    secrets: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["objects"][name]
        except KeyError:
            raise AttributeError(name) from None


def usage_body(w: World) -> dict[str, Any]:
    """A usage sample of the running lease over the last second, signed with agent A's secret."""
    lease, end = w.lease_run, timezone.now()
    body = {
        "sequence": 1,
        "start": (end - timedelta(seconds=1)).isoformat(),
        "end": end.isoformat(),
        "device_seconds": "8",
        "ncu_hours": "0.0001",
        "energy_kwh": None,
    }
    message = execution.usage_message(
        lease_id=lease.pk,
        sequence=1,
        start=body["start"],
        end=body["end"],
        device_seconds=body["device_seconds"],
        ncu_hours=body["ncu_hours"],
        energy_kwh=None,
    )
    body["signature"] = execution.sign_usage(w.secrets["agent"], message)
    return body


def build() -> World:
    w = World()
    o = w.objects
    operator = factories.operator()
    provider, provider_b = factories.provider(), factories.provider()
    buyer, buyer_b = factories.buyer(), factories.buyer()
    w.users = {
        "buyer": buyer,
        "provider": provider,
        "operator": operator,
        "buyer_b": buyer_b,
        "provider_b": provider_b,
    }
    o["buyer_org"], o["provider_org"] = buyer.organisation, provider.organisation
    pending = factories.provider(verified=False)
    o["pending_org"] = pending.organisation

    # Provider A's capacity: the only capacity when A's buyer's jobs are scheduled.
    o["site_a"] = factories.site(provider)
    o["pool_a"] = factories.pool(provider, o["site_a"], name="pool a", node_count=4)
    o["offer_a"] = factories.offer(provider, o["pool_a"])
    o["pool_a2"] = factories.pool(provider, o["site_a"], name="pool a2, not offered yet")
    o["site_hidden"] = factories.site(pending)
    o["pool_hidden"] = factories.pool(pending, o["site_hidden"], name="pool of a pending provider")

    o["payment_a"], _ = payments.payment_notice_submit(
        organisation=buyer.organisation, amount=Decimal("10.00"), reference="matrix-notice", user=buyer
    )
    # Vouchers: buyer A holds one (so its done job's charge is subsidised) and has an application under review.
    programme = voucher_helpers.programme(operator)
    o["programme"] = programme
    o["voucher_a"] = voucher_helpers.voucher(buyer, programme, operator, amount="5000.00")
    o["programme_2"] = voucher_helpers.programme(operator)
    o["programme_3"] = voucher_helpers.programme(operator)
    o["application_a"] = vouchers.application_submit(
        user=buyer, programme=o["programme_2"], requested_amount=Decimal("800.00"), intended_use="protein folding"
    )
    o["document_a"] = vouchers.application_document_add(
        application=o["application_a"],
        user=buyer,
        name="business-licence.pdf",
        content_type="application/pdf",
        content=b"%PDF-1.4 licence",
    )

    # Buyer A's jobs on provider A's pool: one scheduled, one running, one done (charged, settled).
    jobs = {
        name: factories.submit(buyer, name=f"matrix {name} job of buyer A")
        for name in ("job_sched", "job_run", "job_done")
    }
    vouchers.job_voucher_choose(job=jobs["job_done"], enabled=True, actor=buyer)
    scheduler_services.cycle_run()
    for name, job in jobs.items():
        job.refresh_from_db()
        o[name] = job
        o[name.replace("job_", "lease_")] = Lease.objects.select_related("pool__site").get(job=job)
    issued = execution.agent_create(user=provider, name="node-a1")
    o["agent_a"] = issued.agent
    w.tokens["agent"] = f"Agent {issued.token}"
    w.secrets["agent"] = issued.secret
    issued_b = execution.agent_create(user=provider_b, name="node-b1")
    w.tokens["agent_b"] = f"Agent {issued_b.token}"
    revoked = execution.agent_create(user=provider, name="node-a2 (retired)")
    execution.agent_revoke(agent=revoked.agent, user=provider)
    w.tokens["revoked"] = f"Agent {revoked.token}"

    agent = issued.agent
    execution.lease_acknowledge(agent=agent, lease=o["lease_run"])
    execution.lease_acknowledge(agent=agent, lease=o["lease_done"])
    billing.hold_for_lease(lease=o["lease_done"])
    charge_usage(o["lease_done"], [1])
    execution.lease_complete(agent=agent, lease=o["lease_done"], exit_code=0, message="done")
    for name in ("lease_sched", "lease_run", "lease_done"):
        o[name].refresh_from_db()
    o["charge_a"] = Charge.objects.filter(lease=o["lease_done"]).first()
    assert o["charge_a"] is not None and o["charge_a"].voucher_funded > 0, "the done job's charge is subsidised"
    close_until_now(timezone.now() - timedelta(hours=1))
    o["statement_provider_a"] = SettlementStatement.objects.get(organisation=provider.organisation, role="provider")
    o["statement_buyer_a"] = SettlementStatement.objects.get(organisation=buyer.organisation, role="buyer")
    redemption_statements.redemption_close(programme=programme, end=timezone.now() + timedelta(seconds=1))
    o["redemption_statement"] = RedemptionStatement.objects.get(programme=programme)

    # Provider B's own capacity (listed after A's jobs were placed).
    o["site_b"] = factories.site(provider_b)
    o["pool_b"] = factories.pool(provider_b, o["site_b"], name="pool b")
    o["offer_b"] = factories.offer(provider_b, o["pool_b"])

    third = factories.buyer(funds=Decimal(0))
    o["relation_a"] = vouchers.relation_declare(
        actor=operator, organisation=buyer.organisation, other=third.organisation, kind="common_control"
    )
    o["notice_a"] = notify(
        organisation_id=buyer.organisation_id, kind="info", title="Welcome", message="Matrix notice of buyer A"
    )

    for actor, user in w.users.items():
        w.tokens[actor] = f"Token {Token.objects.get_or_create(user=user)[0].key}"
        client = Client()
        client.force_login(user)
        w.sessions[actor] = {name: morsel.value for name, morsel in client.cookies.items()}
    return w
