"""The figures behind the market dashboard and the buyers' and providers'
pages. Each function runs a fixed number of queries, whatever the size of
the market (the tests bound them), and returns plain data: Decimals for
money and units, datetimes in UTC.

Market figures are public (capacity, prices, queues, carbon, voucher
budgets); the review backlogs are for operators only."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Avg, Count, F, Min, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import (
    Account,
    Charge,
    PaymentNotice,
    PaymentNoticeStatus,
    SettlementStatement,
    StatementRole,
    StatementStatus,
)
from console.domain import figures
from marketplace.domain.geography import HUBS
from marketplace.domain.units import ComputeClass, ncu_per_accelerator, ncu_per_core, pool_ncu
from marketplace.models import Organisation, PoolStatus, ResourcePool, VerificationStatus
from scheduler.execution import reliability_scores
from scheduler.models import HOLDING_LEASE_STATES, Job, JobStatus, Lease, Offer, OfferStatus, Rating

PRICE_DAYS = 14
WAIT_WINDOW = timedelta(days=1)
CLASSES = [c.value for c in ComputeClass]
ZERO = Decimal("0.00")
CHINA = ZoneInfo("Asia/Shanghai")


def _vouchers_ready() -> bool:
    try:
        from vouchers import models  # noqa: F401
    except ImportError:
        return False
    return True


# --- capacity, utilisation, carbon --------------------------------------------------------------------------------


def _watts_per_ncu(pool: ResourcePool) -> Decimal:
    shape = pool.shape()
    if shape.accelerated:
        per_unit = ncu_per_accelerator(shape)
        return Decimal(pool.accelerator_model.power_w) / per_unit if per_unit else Decimal(0)
    per_core = ncu_per_core(shape)
    cores = pool.cpu_model.cores or 1
    return Decimal(pool.cpu_model.power_w) / cores / per_core if per_core else Decimal(0)


def _market_pools(pools: Any, *, now: datetime) -> list[tuple[ResourcePool, figures.PoolCapacity]]:
    """Pools with what is offered of them and held on them now: three queries."""
    pools = list(pools.select_related("site", "cpu_model", "accelerator_model"))
    ids = [p.pk for p in pools]
    offered = dict(
        Offer.objects.filter(pool_id__in=ids, status=OfferStatus.ACTIVE)
        .filter(Q(window_end__isnull=True) | Q(window_end__gt=now), window_start__lte=now)
        .values("pool_id")
        .annotate(nodes=Sum("nodes_offered"))
        .values_list("pool_id", "nodes")
    )
    held = dict(
        Lease.objects.filter(pool_id__in=ids, status__in=HOLDING_LEASE_STATES, start__lte=now, end__gt=now)
        .values("pool_id")
        .annotate(ncu=Sum("ncu"))
        .values_list("pool_id", "ncu")
    )
    result = []
    for pool in pools:
        shape = pool.shape()
        total = pool_ncu(shape)
        per_node = total / pool.node_count
        result.append(
            (
                pool,
                figures.PoolCapacity(
                    hub=pool.site.hub,
                    compute_class=pool.compute_class,
                    ncu=total,
                    offered_ncu=per_node * min(offered.get(pool.pk) or 0, pool.node_count),
                    held_ncu=Decimal(held.get(pool.pk) or 0),
                    watts_per_ncu=_watts_per_ncu(pool),
                    pue=pool.site.pue,
                    grid_factor=pool.site.grid_factor,
                    green_share=pool.site.green_share,
                ),
            )
        )
    return result


def _units(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.1"))


def capacity_by_hub(capacities: list[figures.PoolCapacity]) -> list[dict[str, Any]]:
    """Per hub (all eight, in order): NCU by class, offered, held now and utilisation, east or west."""
    cells = {(c.hub, c.compute_class): c for c in figures.cells(capacities)}
    rows = []
    for code, hub in HUBS.items():
        mine = [cells[code, cls] for cls in CLASSES if (code, cls) in cells]
        offered = sum((c.offered_ncu for c in mine), Decimal(0))
        held = sum((c.held_ncu for c in mine), Decimal(0))
        rows.append(
            {
                "hub": code,
                "name": hub.name_zh,
                "side": hub.side.value,
                "ncu_by_class": {
                    cls: _units(cells[code, cls].ncu) if (code, cls) in cells else ZERO for cls in CLASSES
                },
                "utilisation_by_class": {cls: cells[code, cls].utilisation for cls in CLASSES if (code, cls) in cells},
                "ncu": _units(sum((c.ncu for c in mine), Decimal(0))),
                "offered_ncu": _units(offered),
                "held_ncu": _units(held),
                "utilisation": figures.utilisation(held, offered),
            }
        )
    return rows


def _sides(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for side in ("east", "west"):
        mine = [r for r in rows if r["side"] == side]
        offered = sum((r["offered_ncu"] for r in mine), Decimal(0))
        held = sum((r["held_ncu"] for r in mine), Decimal(0))
        result.append(
            {
                "side": side,
                "ncu": sum((r["ncu"] for r in mine), Decimal(0)),
                "offered_ncu": offered,
                "held_ncu": held,
                "utilisation": figures.utilisation(held, offered),
            }
        )
    return result


def green_by_hub(capacities: list[figures.PoolCapacity]) -> list[dict[str, Any]]:
    by_hub = {g.hub: g for g in figures.hub_green(capacities)}
    return [
        {
            "hub": code,
            "name": hub.name_zh,
            "side": hub.side.value,
            "green_share": by_hub[code].green_share if code in by_hub else None,
            "carbon_g_per_ncu_hour": by_hub[code].carbon_g_per_ncu_hour if code in by_hub else None,
        }
        for code, hub in HUBS.items()
    ]


# --- prices, queue, jobs ------------------------------------------------------------------------------------------


def price_index(*, now: datetime, days: int = PRICE_DAYS) -> dict[str, Any]:
    """Per class: the NCU-hour-weighted mean locked unit price of the leases
    created each day (China time) and its index."""
    since = now - timedelta(days=days)
    rows = (
        Lease.objects.filter(created_at__gte=since, ncu_hours__gt=0)
        .annotate(day=TruncDate("created_at", tzinfo=CHINA))
        .values("day", "pool__compute_class")
        .annotate(value=Sum(F("unit_price") * F("ncu_hours")), hours=Sum("ncu_hours"))
        .order_by("day")
    )
    means: dict[str, list] = defaultdict(list)
    for row in rows:
        if row["hours"]:
            means[row["pool__compute_class"]].append((row["day"], Decimal(row["value"]) / Decimal(row["hours"])))
    days_seen = sorted({day for series in means.values() for day, _ in series})
    series = []
    for cls in CLASSES:
        if cls not in means:
            continue
        mean_by_day = dict(means[cls])
        series.append(
            {
                "compute_class": cls,
                "points": [
                    {"day": day.isoformat(), "index": index, "mean_price": mean_by_day[day].quantize(Decimal("0.0001"))}
                    for day, index in figures.price_index(means[cls])
                ],
            }
        )
    return {"days": [d.isoformat() for d in days_seen], "series": series}


def jobs_and_queue(*, now: datetime) -> dict[str, Any]:
    counts = dict(Job.objects.order_by().values("status").annotate(n=Count("id")).values_list("status", "n"))
    waits = Lease.objects.filter(created_at__gte=now - WAIT_WINDOW, job__queued_at__isnull=False).values_list(
        "created_at", "job__queued_at"
    )
    median = figures.median_seconds((created - queued).total_seconds() for created, queued in waits)
    return {
        "jobs_by_state": [{"state": s.value, "label": s.label, "count": counts.get(s.value, 0)} for s in JobStatus],
        "queue_length": counts.get(JobStatus.QUEUED, 0),
        "median_wait_seconds": median,
    }


# --- vouchers and backlogs -----------------------------------------------------------------------------------------


def voucher_budgets() -> list[dict[str, Any]] | None:
    """Per programme: redeemed, committed to vouchers but not redeemed, and still available; None without vouchers."""
    if not _vouchers_ready():
        return None
    from vouchers.domain import movements
    from vouchers.models import ChargeSubsidy, Voucher, VoucherProgramme

    programmes = list(VoucherProgramme.objects.order_by("id").values("id", "name", "budget", "status"))
    ids = [p["id"] for p in programmes]
    committed = dict(
        Voucher.objects.filter(programme_id__in=ids)
        .values("programme_id")
        .annotate(total=Sum("amount"))
        .values_list("programme_id", "total")
    )
    redeemed = dict(
        ChargeSubsidy.objects.filter(programme_id__in=ids)
        .values("programme_id")
        .annotate(total=Sum(F("amount") - F("refunded")))
        .values_list("programme_id", "total")
    )
    codes = {movements.budget_account(pid): pid for pid in ids}
    available = {
        codes[code]: balance for code, balance in Account.objects.filter(code__in=codes).values_list("code", "balance")
    }
    rows = []
    for p in programmes:
        pid = p["id"]
        spent = Decimal(redeemed.get(pid) or 0).quantize(ZERO)
        issued = Decimal(committed.get(pid) or 0).quantize(ZERO)
        rows.append(
            {
                "programme": pid,
                "name": p["name"],
                "status": p["status"],
                "budget": p["budget"],
                "redeemed": spent,
                "committed_unredeemed": max(issued - spent, ZERO),
                "available": Decimal(available.get(pid) or 0).quantize(ZERO),
            }
        )
    return rows


def _age_hours(moment: datetime | None, now: datetime) -> Decimal | None:
    if moment is None:
        return None
    return Decimal(max(0.0, (now - moment).total_seconds()) / 3600).quantize(Decimal("0.1"))


def review_backlog(*, now: datetime) -> dict[str, Any]:
    """What waits for an operator and for how long: statements, disputes, applications, providers."""
    statements = SettlementStatement.objects.filter(role=StatementRole.PROVIDER).aggregate(
        pending=Count("id", filter=Q(status=StatementStatus.PENDING_REVIEW)),
        oldest=Min("created_at", filter=Q(status=StatementStatus.PENDING_REVIEW)),
        disputed=Count("id", filter=Q(status=StatementStatus.DISPUTED)),
        oldest_disputed=Min("created_at", filter=Q(status=StatementStatus.DISPUTED)),
    )
    providers = Organisation.objects.filter(category="provider").aggregate(
        pending=Count("id", filter=Q(verification_status=VerificationStatus.PENDING)),
        oldest=Min("created_at", filter=Q(verification_status=VerificationStatus.PENDING)),
    )
    payments = PaymentNotice.objects.filter(status=PaymentNoticeStatus.PENDING).aggregate(
        n=Count("id"), oldest=Min("created_at")
    )
    queues = [
        {
            "queue": "provider_statements",
            "label": "Provider statements awaiting approval",
            "count": statements["pending"],
            "oldest_age_hours": _age_hours(statements["oldest"], now),
        },
        {
            "queue": "disputes",
            "label": "Disputed statements",
            "count": statements["disputed"],
            "oldest_age_hours": _age_hours(statements["oldest_disputed"], now),
        },
        {
            "queue": "providers",
            "label": "Providers awaiting verification",
            "count": providers["pending"],
            "oldest_age_hours": _age_hours(providers["oldest"], now),
        },
        {
            "queue": "payments",
            "label": "Payments to confirm against the bank statement",
            "count": payments["n"],
            "oldest_age_hours": _age_hours(payments["oldest"], now),
        },
    ]
    if _vouchers_ready():
        from vouchers.models import ApplicationStatus, RedemptionStatement, RedemptionStatus, VoucherApplication

        redemption = RedemptionStatement.objects.filter(status=RedemptionStatus.PENDING_REVIEW).aggregate(
            n=Count("id"), oldest=Min("created_at")
        )
        applications = VoucherApplication.objects.filter(status=ApplicationStatus.PENDING_REVIEW).aggregate(
            n=Count("id"), oldest=Min("created_at")
        )
        queues += [
            {
                "queue": "redemption_statements",
                "label": "Voucher redemption statements awaiting approval",
                "count": redemption["n"],
                "oldest_age_hours": _age_hours(redemption["oldest"], now),
            },
            {
                "queue": "voucher_applications",
                "label": "Voucher applications awaiting review",
                "count": applications["n"],
                "oldest_age_hours": _age_hours(applications["oldest"], now),
            },
        ]
    return {"queues": queues, "settlement_backlog_age_hours": queues[0]["oldest_age_hours"]}


# --- the dashboard -------------------------------------------------------------------------------------------------


def market_figures(*, operator: bool, now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard shows. ``operator`` adds the review backlogs."""
    now = now or timezone.now()
    market = ResourcePool.objects.filter(
        status=PoolStatus.ACTIVE, site__provider__verification_status=VerificationStatus.VERIFIED
    )
    capacities = [capacity for _pool, capacity in _market_pools(market, now=now)]
    hubs = capacity_by_hub(capacities)
    data: dict[str, Any] = {
        "generated_at": now,
        "classes": CLASSES,
        "capacity": {"hubs": hubs, "sides": _sides(hubs)},
        "prices": price_index(now=now),
        "green": green_by_hub(capacities),
        "vouchers": voucher_budgets(),
        "backlog": review_backlog(now=now) if operator else None,
    }
    data.update(jobs_and_queue(now=now))
    return data


# --- a buyer's jobs and a provider's pools ---------------------------------------------------------------------------


def buyer_jobs(*, organisation_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """The organisation's latest jobs: state, progress from the latest lease,
    the pending reason, cost so far (gross of its charges) and what vouchers paid."""
    jobs = list(Job.objects.filter(buyer_id=organisation_id).order_by("-id")[:limit])
    ids = [job.pk for job in jobs]
    latest: dict[int, Lease] = {}
    for lease in Lease.objects.filter(job_id__in=ids).select_related("pool__site").order_by("id"):
        latest[lease.job_id] = lease
    costs = {
        row["lease__job_id"]: row
        for row in Charge.objects.filter(lease__job_id__in=ids)
        .values("lease__job_id")
        .annotate(gross=Sum("gross"), vouchers=Sum("voucher_funded"))
    }
    rows = []
    for job in jobs:
        lease = latest.get(job.pk)
        cost = costs.get(job.pk, {})
        progress = lease.progress_percent if lease else None
        rows.append(
            {
                "id": job.pk,
                "name": job.name,
                "state": job.status,
                "state_label": JobStatus(job.status).label,
                "pending_reason": job.pending_reason if job.status in (JobStatus.QUEUED, JobStatus.SUBMITTED) else "",
                "progress_percent": Decimal(100) if job.status == JobStatus.SUCCEEDED else progress,
                "progress_message": lease.progress_message if lease else "",
                "pool": lease.pool.identifier if lease else "",
                "hub": lease.pool.site.hub if lease else "",
                "cost_so_far": Decimal(cost.get("gross") or 0).quantize(ZERO),
                "voucher_subsidy": Decimal(cost.get("vouchers") or 0).quantize(ZERO),
            }
        )
    return rows


def provider_pools(*, organisation_id: int, now: datetime | None = None) -> dict[str, Any]:
    """The provider's pools: utilisation now, earnings (provider share of charges), ratings; and its reliability."""
    now = now or timezone.now()
    mine = ResourcePool.objects.filter(site__provider_id=organisation_id).order_by("id")
    pools = _market_pools(mine, now=now)
    ids = [pool.pk for pool, _ in pools]
    earnings = dict(
        Charge.objects.filter(lease__pool_id__in=ids, provider_id=organisation_id)
        .values("lease__pool_id")
        .annotate(total=Sum("provider_share"))
        .values_list("lease__pool_id", "total")
    )
    ratings = {
        row["lease__pool_id"]: row
        for row in Rating.objects.filter(lease__pool_id__in=ids)
        .values("lease__pool_id")
        .annotate(average=Avg("score"), n=Count("id"))
    }
    reliability = reliability_scores([organisation_id], now=now).get(organisation_id, Decimal("1.0000"))
    rows = []
    for pool, capacity in pools:
        rating = ratings.get(pool.pk)
        rows.append(
            {
                "id": pool.pk,
                "name": pool.name,
                "identifier": pool.identifier,
                "hub": pool.site.hub,
                "compute_class": pool.compute_class,
                "status": pool.status,
                "ncu": _units(capacity.ncu),
                "offered_ncu": _units(capacity.offered_ncu),
                "held_ncu": _units(capacity.held_ncu),
                "utilisation": figures.utilisation(capacity.held_ncu, capacity.offered_ncu),
                "earnings": Decimal(earnings.get(pool.pk) or 0).quantize(ZERO),
                "rating_average": Decimal(rating["average"]).quantize(Decimal("0.01")) if rating else None,
                "rating_count": rating["n"] if rating else 0,
            }
        )
    rated = [r for r in rows if r["rating_count"]]
    count = sum(r["rating_count"] for r in rated)
    return {
        "pools": rows,
        "reliability": reliability,
        "earnings": sum((r["earnings"] for r in rows), ZERO),
        "rating_average": (
            (sum(r["rating_average"] * r["rating_count"] for r in rated) / count).quantize(Decimal("0.01"))
            if count
            else None
        ),
        "rating_count": count,
    }
