"""Put the demo market to work, so the dashboard and the operator's queues
have something to show: offers on the verified providers' pools (western
hubs cheaper), buyers' wallets topped up, jobs placed six hours ago that ran
with usage metered and charged (some completed and rated, one lost), jobs
running now, jobs pending with their reason, a settlement period closed into
provider statements awaiting review (one disputed, one paid) and, when the
demo vouchers are loaded, voucher-funded charges on a redemption statement.

Everything goes through the services, as users and agents would do it.
Deterministic (seeded) and idempotent: it does nothing once offers exist.
Run ``load_demo_market`` (and ``load_demo_vouchers``) first."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from billing import services as billing
from billing import settlement
from core.errors import ApplicationError
from marketplace.domain.geography import HUBS, Side
from marketplace.models import ResourcePool, User, VerificationStatus
from scheduler import execution
from scheduler import services as scheduler
from scheduler.models import Lease, LeaseStatus, Offer

SEED = 2026
HOURS_AGO = 6
SAMPLE_MINUTES = 30
# CNY per NCU-hour in the eastern hubs; western offers are a quarter cheaper (东数西算).
LIST_PRICE = {
    "intelligent": Decimal("0.0200"),
    "general": Decimal("1.6000"),
    "super": Decimal("0.3500"),
    "edge": Decimal("0.0300"),
}
WEST_DISCOUNT = Decimal("0.75")

# (buyer, name, job values) placed in the past and metered since.
PAST_JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("buyer-sme", "robot grasping policy, fine-tune", {"accelerators_per_node": 8, "duration_seconds": 12 * 3600}),
    ("buyer-sme", "speech model inference", {"accelerators_per_node": 1, "duration_seconds": 10 * 3600}),
    ("buyer-sme", "vision model evaluation", {"accelerators_per_node": 2, "duration_seconds": 4 * 3600}),
    ("buyer-university", "protein folding sweep", {"accelerators_per_node": 8, "duration_seconds": 5 * 3600}),
    ("buyer-university", "course cluster: distributed training lab", {"accelerators_per_node": 4, "nodes": 2}),
    ("buyer-university", "climate downscaling", {"accelerators_per_node": 8, "duration_seconds": 9 * 3600}),
    ("buyer-hospital", "CT segmentation training", {"accelerators_per_node": 8, "duration_seconds": 4 * 3600}),
    ("buyer-hospital", "pathology slide inference", {"accelerators_per_node": 1, "duration_seconds": 3 * 3600}),
    ("buyer-research", "molecular dynamics ensemble", {"accelerators_per_node": 8, "duration_seconds": 8 * 3600}),
    ("buyer-research", "genome assembly", {"software_stack": "cpu", "cpu_architecture": "x86_64"}),
    ("buyer-school", "rendering the school film", {"accelerators_per_node": 2, "duration_seconds": 3 * 3600}),
    ("buyer-sme", "west batch: synthetic data generation", {"accelerators_per_node": 8, "allowed_hubs": ["NX"]}),
    ("buyer-research", "west batch: pretraining shard", {"accelerators_per_node": 8, "allowed_hubs": ["NMG"]}),
    ("buyer-university", "Ascend port of the LLM lab", {"software_stack": "cann", "accelerators_per_node": 8}),
]
# Jobs placed just now.
RECENT_JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("buyer-sme", "nightly regression models", {"accelerators_per_node": 4, "duration_seconds": 3 * 3600}),
    ("buyer-hospital", "radiology report model", {"accelerators_per_node": 8, "duration_seconds": 6 * 3600}),
    ("buyer-research", "west batch: docking screen", {"accelerators_per_node": 8, "allowed_hubs": ["GS"]}),
    ("buyer-school", "AI club notebooks", {"accelerators_per_node": 1, "duration_seconds": 2 * 3600}),
]


def _job(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": name,
        "image": "registry.example/demo:1.0",
        "command": ["python", "run.py"],
        "software_stack": "cuda",
        "nodes": 1,
        "duration_seconds": 8 * 3600,
    }
    if extra.get("software_stack") == "cpu":
        values.update({"cpu_milli_per_node": 64_000, "memory_mib_per_node": 128 * 1024})
    values.update(extra)
    return values


class Command(BaseCommand):
    help = "Put the demo market to work: offers, jobs, metered usage, statements (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        operator = User.objects.filter(username="operator", role="operator").first()
        if operator is None:
            raise CommandError("Load the demo market first (manage.py load_demo_market).")
        if Offer.objects.exists():
            self.stdout.write("Demo activity already loaded.")
            return
        with transaction.atomic():
            counts = self._load(operator, timezone.now())
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Demo activity loaded: {summary}"))

    def _load(self, operator: User, now: datetime) -> dict[str, int]:
        rng = random.Random(SEED)
        past = now - timedelta(hours=HOURS_AGO)
        providers = {u.organisation_id: u for u in User.objects.filter(role="provider").select_related("organisation")}
        pools = ResourcePool.objects.filter(
            site__provider__verification_status=VerificationStatus.VERIFIED, status="active"
        ).select_related("site")
        offers = 0
        for pool in pools.order_by("id"):
            if rng.random() < 0.1:
                continue  # a few pools are not on the market
            west = HUBS[pool.site.hub].side is Side.WEST
            price = LIST_PRICE[pool.compute_class] * (WEST_DISCOUNT if west else 1)
            price *= Decimal(str(round(rng.uniform(0.85, 1.2), 2)))
            scheduler.offer_create(
                pool=pool,
                actor=providers[pool.site.provider_id],
                nodes_offered=pool.node_count if rng.random() < 0.7 else max(1, pool.node_count // 2),
                list_price=price.quantize(Decimal("0.0001")),
                window_start=now - timedelta(days=1),
            )
            offers += 1

        buyers = {u.username: u for u in User.objects.filter(role="buyer")}
        for user in buyers.values():
            billing.wallet_top_up(
                organisation=user.organisation, amount=Decimal("500000.00"), reference="demo-opening", actor=user
            )
        self._vouchers_on = self._voucher_choice()

        past_jobs = [self._submit(buyers[b], name, values) for b, name, values in PAST_JOBS]
        scheduler.cycle_run(now=past)
        leases = list(
            Lease.objects.filter(job__in=[j for j in past_jobs if j]).select_related("job", "pool__site").order_by("id")
        )
        agents = {}
        for lease in leases:
            provider_id = lease.pool.site.provider_id
            if provider_id not in agents:
                agents[provider_id] = execution.agent_create(user=providers[provider_id], name="demo-node-01").agent
            self._run(lease, agents[provider_id], now)

        ended = 0
        for index, lease in enumerate(leases):
            lease.refresh_from_db()
            if lease.status != LeaseStatus.RUNNING:
                continue
            if index % 3 == 0:
                agent = agents[lease.pool.site.provider_id]
                execution.lease_complete(agent=agent, lease=lease, exit_code=0, message="")
                buyer = buyers_by_org(buyers)[lease.job.buyer_id]
                execution.lease_rate(user=buyer, lease=lease, score=[5, 4, 5, 3, 4][index % 5], comment="demo rating")
                ended += 1
            elif index == len(leases) - 1:
                execution.lease_lose(lease=lease, now=now)
                ended += 1

        recent_jobs = [self._submit(buyers[b], name, values) for b, name, values in RECENT_JOBS]
        scheduler.cycle_run(now=now)
        pending = self._pending_jobs(buyers, now)

        period = settlement.settlement_close(start=past - timedelta(hours=1), end=timezone.now(), actor=operator)
        statements = list(period.statements.filter(role="provider").order_by("id"))
        if len(statements) >= 3:
            settlement.statement_approve(statement=statements[0], actor=operator, reason="demo: matches agent logs")
            disputed = statements[1]
            settlement.statement_dispute(
                statement=disputed,
                actor=operator,
                reason="demo: buyer reports a stalled node for 20 minutes",
                amount=(disputed.payable / 10).quantize(Decimal("0.01")),
            )
        redemption = self._close_redemptions(operator)
        return {
            "offers": offers,
            "leases": Lease.objects.count(),
            "leases ended": ended,
            "jobs pending": pending,
            "jobs placed now": sum(1 for j in recent_jobs if j),
            "provider statements": len(statements),
            "redemption statements": redemption,
        }

    def _submit(self, user: User, name: str, extra: dict[str, Any]):
        try:
            job = scheduler.job_submit(user=user, values=_job(name, extra))
        except ApplicationError as exc:
            self.stdout.write(self.style.WARNING(f"Skipped job {name!r}: {exc.detail}"))
            return None
        if self._vouchers_on is not None and user.username == "buyer-sme":
            self._vouchers_on(job=job, enabled=True, actor=user)
        return job

    def _voucher_choice(self):
        try:
            from vouchers.services import job_voucher_choose
        except ImportError:
            return None
        return job_voucher_choose

    def _run(self, lease: Lease, agent, now: datetime) -> None:
        """The agent starts the lease, reports progress and usage every half hour up to now; the platform charges it."""
        billing.hold_for_lease(lease=lease)
        lease = execution.lease_acknowledge(agent=agent, lease=lease)
        rate = scheduler.commission_rate_for(lease.offer)
        cursor, sequence = lease.start, 0
        step = timedelta(minutes=SAMPLE_MINUTES)
        # Metering stops half an hour before the lease's end: the lease's last sample comes with its completion.
        while cursor + step <= min(now, lease.end - step):
            sequence += 1
            sample, _ = billing.usage_record(
                lease=lease,
                sequence=sequence,
                start=cursor,
                end=cursor + step,
                ncu_hours=(lease.ncu * Decimal(SAMPLE_MINUTES) / 60).quantize(Decimal("0.0001")),
            )
            billing.charge_sample(sample_id=sample.pk, commission_rate=rate)
            cursor += step
        elapsed = Decimal((cursor - lease.start).total_seconds())
        done = min(Decimal(100), elapsed * 100 / Decimal(lease.job.duration_seconds))
        execution.lease_progress(
            agent=agent, lease=lease, percent=done.quantize(Decimal("0.01")), message=f"step {sequence * 100} of 2400"
        )

    def _pending_jobs(self, buyers: dict[str, User], now: datetime) -> int:
        """Jobs the market cannot place now: more H800 nodes at once than any free pool has."""
        largest = (
            ResourcePool.objects.filter(
                accelerator_model__code="nvidia-h800-sxm5-80gb",
                site__provider__verification_status=VerificationStatus.VERIFIED,
            )
            .order_by("-node_count")
            .first()
        )
        if largest is None:
            return 0
        made = 0
        for attempt in range(12):  # submit until the H800 pools are full and one waits
            buyer = ("buyer-sme", "buyer-hospital")[attempt % 2]
            job = self._submit(
                buyers[buyer],
                f"foundation model pretraining, stage {attempt + 1}",
                {"device_models": ["nvidia-h800-sxm5-80gb"], "accelerators_per_node": 8, "nodes": largest.node_count},
            )
            if job is None:
                break
            scheduler.cycle_run(now=now)
            job.refresh_from_db()
            if job.status == "queued":
                made += 1
                if made == 2:
                    break
        return made

    def _close_redemptions(self, operator: User) -> int:
        try:
            from vouchers.models import VoucherProgramme
            from vouchers.statements import redemption_close
        except ImportError:
            return 0
        made = 0
        for programme in VoucherProgramme.objects.order_by("id"):
            made += redemption_close(programme=programme, end=timezone.now(), actor=operator) is not None
        return made


def buyers_by_org(buyers: dict[str, User]) -> dict[int, User]:
    return {u.organisation_id: u for u in buyers.values()}
