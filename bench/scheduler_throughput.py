"""Scheduler throughput, placement quality and a naive baseline on one market.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/scheduler_throughput.py

What it does, in order:

1. **Setup (not timed).** Creates a dedicated database (``cx_bench`` on the
   server of ``DATABASE_URL``; never the database the URL names), migrates
   it, and writes a market with ``bulk_create``: ``--pools`` resource pools
   (one active offer each) shaped like Alibaba's production GPU cluster
   (``alibaba-spot-gpu-v2026/node_info_df.csv``: A10 × 1, A100/A800 × 8,
   H800 × 8 …) plus domestic-accelerator and CPU pools, spread over the 8 hubs
   at differing prices, and ``--jobs`` queued jobs from many buyer
   organisations shaped like the tasks of ``alibaba-gpu-v2023/
   openb_pod_list_default.csv`` (whole GPUs 1/2/4/8, shared slices, CPU-only).
   Rows carry the identifiers, serials and derived fields the services would
   give them; no audit rows are written for setup. The database is then copied
   (``CREATE DATABASE … TEMPLATE``) for the naive baseline.
2. **Ours (timed).** ``--workers`` OS processes each call
   ``scheduler.services.cycle_run`` (what the Celery task runs) in a loop until
   no queued job they can claim can be placed. Wall time runs from the moment
   all workers are connected and warmed up until the last one is done.
3. **Overbooking check.** Every offer's holding leases go through
   ``scheduler.domain.capacity.overbookings``.
4. **Quality.** The same batch as an assignment problem solved with HiGHS
   (``scipy.optimize.milp``), see :func:`optimum`.
5. **Naive baseline (timed).** On the copy: one job at a time, in queue order:
   lock the job, then offer by offer in id order (``SELECT … FOR UPDATE``),
   read its leases, first fit; write the lease, the job's transition and the
   audit rows; commit.

The last line printed is one JSON object with the figures. Runs are figures,
not pass/fail. ``--keep`` keeps the databases; by default they are dropped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import queue
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.database import django_setup, drop_database, recreate_database, with_database  # noqa: E402

DATA = Path(os.environ.get("CX_SHARED_DATA", "/work/shared/data"))
NODES_CSV = DATA / "alibaba-spot-gpu-v2026" / "node_info_df.csv"
PODS_CSV = DATA / "alibaba-gpu-v2023" / "openb_pod_list_default.csv"
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
BENCH_DB = "cx_bench"
WALLET = Decimal("10000000.00")  # CNY topped up in each buyer's wallet
MAX_CYCLES = 50  # a worker gives up after this many cycles (a safeguard: the bench never needs that many)
NAIVE_DB = "cx_bench_naive"


# --- the market's shapes ----------------------------------------------------------------------------------------------

# node_info_df.csv model → (catalogue code, CPU model code, memory GB per node). GPU-series-1/2 are undisclosed
# models; they stand in as L20 (48 GB, the series sold in 1-, 4- and 8-device nodes) and H20 (96 GB, 8 per node).
TRACE_MODELS = {
    "A10": ("nvidia-a10-24gb", "intel-xeon-platinum-8480plus", 512),
    "GPU-series-1": ("nvidia-l20-48gb", "intel-xeon-platinum-8480plus", 1024),
    "GPU-series-2": ("nvidia-h20-96gb", "intel-xeon-platinum-8480plus", 2048),
    "A100-SXM4-80GB": ("nvidia-a100-sxm4-80gb", "intel-xeon-platinum-8480plus", 2048),
    "H800": ("nvidia-h800-sxm5-80gb", "intel-xeon-platinum-8480plus", 2048),
    "A800-SXM4-80GB": ("nvidia-a800-sxm4-80gb", "amd-epyc-9654", 2048),
}
# Pools the trace does not have: a share of all pools, with (accelerator, per node, CPU, cores, memory GB).
EXTRA_SHAPES = [
    (0.05, ("nvidia-t4-16gb", 4, "hygon-c86-7390", 64, 256)),
    (0.03, ("nvidia-rtx-4090-24gb", 8, "amd-epyc-9654", 64, 512)),
    (0.05, ("huawei-ascend-910b", 8, "huawei-kunpeng-920-6426", 192, 1536)),
    (0.01, ("cambricon-mlu370-x8", 8, "hygon-c86-7390", 64, 512)),
    (0.01, ("kunlunxin-r200", 8, "hygon-c86-7390", 64, 512)),
    (0.07, (None, 0, "amd-epyc-9654", 192, 768)),
    (0.03, (None, 0, "huawei-kunpeng-920-6426", 128, 512)),
    (0.02, (None, 0, "hygon-c86-7390", 64, 256)),
]
# List price of one device-hour (accelerators) or one core-hour (CPU pools), CNY, before the hub and provider
# factors; offers list it per NCU-hour (units.price_per_ncu_hour), as a provider converts its node-hour price.
BASE_PRICE = {
    "nvidia-a10-24gb": Decimal("2.60"),
    "nvidia-l20-48gb": Decimal("3.90"),
    "nvidia-h20-96gb": Decimal("7.50"),
    "nvidia-a100-sxm4-80gb": Decimal("9.50"),
    "nvidia-a800-sxm4-80gb": Decimal("9.00"),
    "nvidia-h800-sxm5-80gb": Decimal("19.00"),
    "nvidia-t4-16gb": Decimal("1.30"),
    "nvidia-rtx-4090-24gb": Decimal("2.30"),
    "huawei-ascend-910b": Decimal("7.00"),
    "cambricon-mlu370-x8": Decimal("3.00"),
    "kunlunxin-r200": Decimal("2.60"),
    "amd-epyc-9654": Decimal("0.085"),
    "huawei-kunpeng-920-6426": Decimal("0.060"),
    "hygon-c86-7390": Decimal("0.050"),
}
HUB_FACTOR = {"JJJ": 1.10, "YRD": 1.12, "GBA": 1.08, "CY": 1.00, "NMG": 0.82, "GZ": 0.85, "GS": 0.80, "NX": 0.83}
HUB_WEIGHT = {"JJJ": 14, "YRD": 16, "GBA": 12, "CY": 10, "NMG": 13, "GZ": 13, "GS": 10, "NX": 12}
EAST_HUBS = ("JJJ", "YRD", "GBA", "CY")
TRAINING_MODELS = ["nvidia-a100-sxm4-80gb", "nvidia-a800-sxm4-80gb", "nvidia-h800-sxm5-80gb"]


@dataclass(frozen=True)
class PoolPlan:
    accelerator: str | None
    per_node: int
    cpu: str
    cores: int
    memory_gb: int


def pool_plans() -> list[tuple[float, PoolPlan]]:
    """Weighted pool shapes: the trace's node shapes (by node count) for 75% of pools, the extras for the rest."""
    counts: Counter[tuple[str, int, int]] = Counter()
    with NODES_CSV.open() as handle:
        for row in csv.DictReader(handle):
            counts[(row["gpu_model"], int(row["gpu_capacity_num"]), int(row["cpu_num"]))] += 1
    total = sum(counts.values())
    extra_share = sum(w for w, _ in EXTRA_SHAPES)
    plans: list[tuple[float, PoolPlan]] = []
    for (model, per_node, cores), n in counts.items():
        code, cpu, memory = TRACE_MODELS[model]
        plans.append(((1 - extra_share) * n / total, PoolPlan(code, per_node, cpu, cores, memory)))
    for weight, (code, per_node, cpu, cores, memory) in EXTRA_SHAPES:
        plans.append((weight, PoolPlan(code, per_node, cpu, cores, memory)))
    return plans


@dataclass(frozen=True)
class PodPlan:
    cpu_milli: int
    memory_mib: int
    gpus: int
    gpu_milli: int
    best_effort: bool
    seconds: int


def pod_plans() -> list[PodPlan]:
    plans = []
    with PODS_CSV.open() as handle:
        for row in csv.DictReader(handle):
            created, deleted = int(row["creation_time"] or 0), int(row["deletion_time"] or 0)
            plans.append(
                PodPlan(
                    cpu_milli=int(row["cpu_milli"]),
                    memory_mib=int(row["memory_mib"]),
                    gpus=int(row["num_gpu"]),
                    gpu_milli=int(row["gpu_milli"] or 0),
                    best_effort=row["qos"] == "BE",
                    seconds=min(max(deleted - created, 900), 24 * 3600),
                )
            )
    return plans


# --- the database -----------------------------------------------------------------------------------------------------


def close_connections() -> None:
    from django.db import connections

    connections.close_all()


# --- setup ------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    now: datetime
    providers: int = 0
    sites: int = 0
    pools: int = 0
    buyers: int = 0
    jobs: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    pool_kinds: Counter[str] = field(default_factory=Counter)


def make_market(*, pools: int, jobs: int, seed: int, now: datetime) -> Setup:
    """Write the market with bulk_create (valid rows, as the services would make them)."""
    from django.db import transaction

    from marketplace.domain.credit_code import with_check_character
    from marketplace.domain.geography import CITIES, HUBS, Side
    from marketplace.domain.identifiers import pool_identifier, provider_identifier, site_identifier
    from marketplace.domain.units import (
        CpuArchitecture,
        SiteKind,
        SoftwareStack,
        compute_class_for,
        price_per_ncu_hour,
    )
    from marketplace.models import DeviceModel, Organisation, ResourcePool, Site, User
    from scheduler.models import Job, JobStatus, Offer, PricingType
    from scheduler.services import job_spec

    started = time.perf_counter()
    rng = random.Random(seed)
    setup = Setup(now=now)
    devices = {d.code: d for d in DeviceModel.objects.all()}
    cities_of = {hub: [c.code for c in CITIES.values() if c.hub == hub] for hub in HUBS}
    serial = iter(range(1, 10_000_000))

    def credit() -> str:
        return with_check_character(f"91110108{next(serial):09d}")

    with transaction.atomic():
        # providers: about one per 12 pools, each with 1–3 sites of about 6 pools
        n_providers = max(1, pools // 12)
        hubs = list(HUB_WEIGHT)
        provider_hubs = rng.choices(hubs, weights=[HUB_WEIGHT[h] for h in hubs], k=n_providers)
        orgs = Organisation.objects.bulk_create(
            [
                Organisation(
                    name=f"Bench provider {i + 1}",
                    credit_code=credit(),
                    category="provider",
                    city=rng.choice(cities_of[hub]),
                    home_hub=hub,
                    verification_status="verified",
                    verified_at=now,
                )
                for i, hub in enumerate(provider_hubs)
            ]
        )
        for org in orgs:
            org.identifier = provider_identifier(org.home_hub, org.pk)
        users = [
            User(username=f"bench-provider-{org.pk}", organisation=org, role="provider", password="!")  # noqa: S106
            for org in orgs
        ]
        # buyers: many organisations in many cities, one user each
        buyer_cities = [c.code for c in CITIES.values()]
        buyer_orgs = Organisation.objects.bulk_create(
            [
                Organisation(
                    name=f"Bench buyer {i + 1}",
                    credit_code=credit(),
                    category=rng.choice(["enterprise", "enterprise", "university", "research_institute"]),
                    city=rng.choice(buyer_cities),
                    verification_status="verified",
                )
                for i in range(max(1, jobs // 40))
            ]
        )
        users += [
            User(username=f"bench-buyer-{org.pk}", organisation=org, role="buyer", password="!")  # noqa: S106
            for org in buyer_orgs
        ]
        User.objects.bulk_create(users, batch_size=2000)
        buyer_user = {u.organisation_id: u.pk for u in User.objects.filter(role="buyer").only("pk", "organisation")}
        setup.providers, setup.buyers = len(orgs), len(buyer_orgs)

        # sites
        site_rows: list[Site] = []
        provider_profile: dict[int, float] = {}
        for org in orgs:
            provider_profile[org.pk] = rng.uniform(0.85, 1.20)
            hub = org.home_hub
            west = HUBS[hub].side is Side.WEST
            for s in range(rng.choice([1, 1, 2, 3])):
                kind = rng.choices(["intelligent", "general", "supercomputing", "edge"], weights=[70, 15, 8, 7])[0]
                if kind == "edge" and west:
                    kind = "intelligent"
                site_rows.append(
                    Site(
                        provider=org,
                        serial=s + 1,
                        identifier=site_identifier(hub, org.pk, s + 1),
                        name=f"{org.name} site {s + 1}",
                        hub=hub,
                        city=rng.choice(cities_of[hub]),
                        kind=kind,
                        pue=Decimal(f"{rng.uniform(1.08, 1.22) if west else rng.uniform(1.22, 1.45):.2f}"),
                        green_share=Decimal(f"{rng.uniform(0.4, 0.85) if west else rng.uniform(0.05, 0.35):.4f}"),
                    )
                )
            org.sites_allocated = sum(1 for s in site_rows if s.provider is org)
        Organisation.objects.bulk_update(orgs, ["identifier", "sites_allocated"], batch_size=2000)
        Site.objects.bulk_create(site_rows, batch_size=2000)
        setup.sites = len(site_rows)

        # pools and one offer on each
        plans = pool_plans()
        pool_rows: list[ResourcePool] = []
        chosen = rng.choices([p for _, p in plans], weights=[w for w, _ in plans], k=pools)
        for i, plan in enumerate(chosen):
            accelerated = plan.accelerator is not None
            cpu = devices[plan.cpu]
            accel = devices[plan.accelerator] if accelerated else None
            site = site_rows[i % len(site_rows)]
            if site.kind == "supercomputing" and (accel or cpu).fp64_tflops <= 0:
                site = site_rows[(i + 1) % len(site_rows)]  # no FP64: a supercomputing centre would not list it
                if site.kind == "supercomputing":
                    site = next(s for s in site_rows if s.kind != "supercomputing")
            site.pools_allocated += 1
            if accelerated:
                nodes = rng.choice([2, 4, 4, 8, 8, 16]) if plan.per_node == 1 else rng.choice([1, 1, 2, 2, 4])
            else:
                nodes = rng.choice([2, 4, 8])
            pool_rows.append(
                ResourcePool(
                    site=site,
                    serial=site.pools_allocated,
                    identifier=pool_identifier(site.hub, site.provider_id, site.serial, site.pools_allocated),
                    name=f"{plan.accelerator or plan.cpu} pool",
                    node_count=nodes,
                    cpu_model=cpu,
                    cpu_cores_per_node=plan.cores,
                    memory_gb_per_node=plan.memory_gb,
                    storage_gb_per_node=rng.choice([3840, 7680, 15360]),
                    network_gbps=rng.choice([100, 200, 400]) if accelerated else 25,
                    accelerator_model=accel,
                    accelerators_per_node=plan.per_node,
                    sharing_allowed=accelerated and plan.per_node <= 4,
                    software_stack=accel.software_stack if accel else SoftwareStack.CPU.value,
                    cpu_architecture=cpu.architecture or CpuArchitecture.X86_64.value,
                    compute_class=compute_class_for(SiteKind(site.kind), accelerated).value,
                    benchmark_factor=Decimal(f"{rng.uniform(0.85, 1.0):.3f}"),
                )
            )
            setup.pool_kinds[plan.accelerator or f"cpu:{plan.cpu}"] += 1
        Site.objects.bulk_update(site_rows, ["pools_allocated"], batch_size=2000)
        ResourcePool.objects.bulk_create(pool_rows, batch_size=2000)
        setup.pools = len(pool_rows)

        offers = []
        for pool in pool_rows:
            accelerated = pool.accelerator_model_id is not None
            code = pool.accelerator_model.code if accelerated else pool.cpu_model.code
            units = pool.accelerators_per_node if accelerated else pool.cpu_cores_per_node
            factor = HUB_FACTOR[pool.site.hub] * provider_profile[pool.site.provider_id] * rng.uniform(0.9, 1.1)
            node_hour = BASE_PRICE[code] * units * Decimal(f"{factor:.4f}")
            price = price_per_ncu_hour(node_hour, pool.shape())
            kind = rng.choices(
                [PricingType.ON_DEMAND, PricingType.INTERRUPTIBLE, PricingType.RESERVED], weights=[80, 12, 8]
            )[0]
            rules: dict[str, Any] = {}
            min_hours = Decimal(0)
            if kind == PricingType.RESERVED:
                min_hours = Decimal(rng.choice([2, 4]))
                rules["commitment_tiers"] = [
                    {"min_hours": "2", "discount": "0.10"},
                    {"min_hours": "4", "discount": "0.20"},
                ]
            if rng.random() < 0.15:
                rules["green"] = {"max_discount": "0.05", "from_share": "0.50"}
            offers.append(
                Offer(
                    pool=pool,
                    nodes_offered=pool.node_count,
                    window_start=now - timedelta(days=1),
                    window_end=None if rng.random() < 0.9 else now + timedelta(hours=rng.choice([6, 12, 48])),
                    pricing_type=kind,
                    list_price=price.quantize(Decimal("0.00000001")),
                    price_rules=rules,
                    min_lease_hours=min_hours,
                )
            )
        Offer.objects.bulk_create(offers, batch_size=2000)

        # jobs, shaped like the trace's tasks
        pods = pod_plans()
        job_rows = []
        for i in range(jobs):
            pod = rng.choice(pods)
            buyer = rng.choice(buyer_orgs)
            values: dict[str, Any] = {
                "name": f"bench job {i + 1}",
                "image": "registry.example/bench:1.0",
                "command": ["python", "run.py"],
                "duration_seconds": pod.seconds,
                "interruptible": pod.best_effort,
                "buyer_city": buyer.city,
                "cpu_milli_per_node": pod.cpu_milli,
                "memory_mib_per_node": pod.memory_mib,
            }
            if pod.gpus == 0:
                values["software_stack"] = "cpu"
                values["cpu_architecture"] = "aarch64" if rng.random() < 0.15 else "x86_64"
                kind = "cpu"
            else:
                stack = rng.choices(["cuda", "cann", "neuware", "kunlun-xpu"], weights=[90, 7, 1.5, 1.5])[0]
                values["software_stack"] = stack
                values["domestic_only"] = stack != "cuda"
                if pod.gpus == 1 and pod.gpu_milli < 1000:
                    values["accelerator_milli"] = pod.gpu_milli
                    kind = "slice"
                else:
                    values["accelerators_per_node"] = pod.gpus
                    kind = f"{pod.gpus} GPU"
                    if stack == "cuda" and rng.random() < 0.15:
                        values["device_models"] = TRAINING_MODELS
                        values["accelerator_memory_gib"] = Decimal(80)
            roll = rng.random()
            if roll < 0.10:
                values["allowed_hubs"] = rng.sample(EAST_HUBS, rng.choice([1, 2]))
            elif roll < 0.18:
                values["max_latency_ms"] = rng.choice([5.0, 30.0])
            if rng.random() < 0.08:
                values["max_price_per_ncu_hour"] = Decimal("0.0300")
            setup.kinds[kind] += 1
            queued = now - timedelta(seconds=rng.randint(1, 3600))
            job = Job(
                buyer=buyer,
                submitted_by_id=buyer_user[buyer.pk],
                status=JobStatus.QUEUED,
                queued_at=queued,
                **values,
            )
            job.created_at = queued
            job_spec(job)  # what job_submit validates
            job_rows.append(job)
        Job.objects.bulk_create(job_rows, batch_size=2000)
        # every buyer's wallet funded through the billing service, so the cycle can hold each lease's cost
        from billing import services as billing

        for org in buyer_orgs:
            billing.wallet_top_up(organisation=org, amount=WALLET, reference="bench-initial", actor=None)
        Job.objects.update(created_at=now - timedelta(hours=1), status_changed_at=now - timedelta(hours=1))
        setup.jobs = len(job_rows)
    setup.seconds = time.perf_counter() - started
    return setup


# --- ours: workers running the scheduling cycle -----------------------------------------------------------------------


def _worker(index: int, url: str, limit: int, workers: int, split: str, ready: Any, go: Any, results: Any) -> None:
    """One scheduling worker: cycles until nothing it can claim can be placed.

    ``split="shard"``: every cycle is ``cycle_run(shard=(index, workers))``: the worker plans the whole queue on the
    whole market (as every worker does, so they compute the same plan) and writes the placements of the jobs of
    buyers whose id is ``index`` mod workers; the workers' placements do not collide and they never wait for each
    other's buyers' wallet locks. ``split="none"``: every cycle claims up to ``limit`` jobs (``SKIP LOCKED``) and
    plans only those, so the workers propose the same capacity and the losers are refused at commit.

    A cycle with nothing refused at commit and nothing preempted has tried every job it planned against every offer
    with what is committed; in this bench no lease ends, so free capacity only shrinks and those jobs can never be
    placed: the worker stops. It also stops when it has no job to place."""
    django_setup(url)
    from django.db import connection

    from scheduler import services
    from scheduler.domain import matching  # noqa: F401 - warm the import before the clock starts

    connection.ensure_connection()
    ready.wait()
    go.wait()
    started = time.perf_counter()
    cycles = []
    shard = (index, workers) if split == "shard" and workers > 1 else None
    while True:
        t0 = time.perf_counter()
        c0 = time.process_time()
        report = services.cycle_run(limit=limit, shard=shard)
        cycles.append(
            {
                "shard": None if shard is None else shard[0],
                "queued": report.queued,
                "assigned": report.assigned,
                "pending": report.pending,
                "refused_at_commit": report.refused_at_commit,
                "preempted": report.preempted,
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),
                "cpu_inputs": round(report.cpu_inputs, 3),
                "cpu_engine": round(report.cpu_engine, 3),
                "cpu_writes": round(report.cpu_writes, 3),
                "at": round(time.perf_counter() - started, 3),
            }
        )
        if report.queued == 0:
            break
        if not (report.refused_at_commit or report.preempted):
            break
        if len(cycles) >= MAX_CYCLES:
            break
    results.put({"worker": index, "cycles": cycles, "seconds": time.perf_counter() - started})
    connection.close()


@dataclass
class RunResult:
    seconds: float
    workers: list[dict[str, Any]]

    @property
    def last_placement(self) -> float:
        return max((c["at"] for w in self.workers for c in w["cycles"] if c["assigned"]), default=0.0)


def run_ours(url: str, *, workers: int, limit: int, split: str) -> RunResult:
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(workers + 1)
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(i, url, limit, workers, split, ready, go, results)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    out = []
    while len(out) < len(procs):
        try:
            out.append(results.get(timeout=1.0))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError("a scheduling worker died (its traceback is above)") from None
    seconds = time.perf_counter() - started
    for p in procs:
        p.join()
    return RunResult(seconds=seconds, workers=sorted(out, key=lambda r: r["worker"]))


def overbooked_offers() -> tuple[int, int, list[str]]:
    """(offers checked, offers overbooked, first findings) over every offer's holding leases."""
    from scheduler import selectors
    from scheduler.domain.capacity import Hold, overbookings
    from scheduler.models import HOLDING_LEASE_STATES, Lease, Offer

    holds: dict[int, list[Hold]] = defaultdict(list)
    for lease in Lease.objects.filter(status__in=HOLDING_LEASE_STATES).only("offer_id", "start", "end", "allocations"):
        holds[lease.offer_id].extend(selectors.lease_holds(lease))
    bad = 0
    findings: list[str] = []
    offers = Offer.objects.filter(pk__in=list(holds)).select_related("pool", "pool__accelerator_model")
    for offer in offers:
        found = overbookings(selectors.offer_node_shape(offer), offer.nodes_offered, holds[offer.pk])
        if found:
            bad += 1
            findings.extend(f"offer {offer.pk}: {f}" for f in found[:2])
    return len(holds), bad, findings[:10]


# --- quality: the same batch as an assignment problem -----------------------------------------------------------------


@dataclass
class Quality:
    jobs_placed: int
    our_cost: float
    lp_bound: float | None  # the LP relaxation's optimum: no assignment can cost less
    mip_cost: float | None  # the best integral assignment HiGHS found
    mip_bound: float | None  # HiGHS's proven lower bound for the MIP
    mip_status: str
    candidates_per_job: int
    variables: int
    seconds: float
    max_placeable: int | None = None  # LP bound on how many jobs of the batch could be placed at all

    @property
    def proven(self) -> bool:
        """Whether the MIP's incumbent is proven optimal (to a relative gap of 1e-6)."""
        if self.mip_cost is None or self.mip_bound is None:
            return False
        return self.mip_cost - self.mip_bound <= 1e-6 * max(abs(self.mip_cost), 1.0)

    @property
    def best_bound(self) -> float | None:
        bounds = [b for b in (self.lp_bound, self.mip_bound) if b is not None and not math.isnan(b)]
        return max(bounds) if bounds else None

    @property
    def ratio(self) -> float | None:
        """Our cost over the optimum when HiGHS proved it, else over the best lower bound (a ratio no better than
        the true one)."""
        reference = self.mip_cost if self.proven else self.best_bound
        return self.our_cost / reference if reference else None


@dataclass
class Pair:
    job: int
    pool: int  # index into the pool list
    cost: float
    thousandths: int  # accelerator thousandths held in the pool (all nodes)
    cpu_milli: int
    memory_mib: int


def feasible_pairs(
    specs: list[Any], pool_offers: list[Any], *, now: datetime, k: int, must: dict[int, int]
) -> tuple[list[Pair], list[Any]]:
    """For each job, its ``k`` cheapest pools that pass the engine's exact static check
    (``demand.static_reason``), plus the pool our run gave it (``must``: job index → pool index).

    A vectorised prefilter keeps only pools that satisfy *necessary* conditions (same stack, architecture,
    device model, hubs, latency, interruptible-only, sharing, node size, node count, price cap per NCU-hour) and
    sorts them by cost; pools are then confirmed one by one with ``static_reason`` until ``k`` pass."""
    import numpy as np

    from marketplace.domain.geography import CITIES, latency_ms
    from scheduler.domain import demand as engine

    facts = [engine.pool_facts(p) for p in pool_offers]
    n = len(facts)
    stack = np.array([str(p.stack) for p in pool_offers])
    arch = np.array([str(p.cpu_architecture) for p in pool_offers])
    model = np.array([f.model or "" for f in facts])
    hub = np.array([p.hub for p in pool_offers])
    city = [p.city for p in pool_offers]
    domestic = np.array([p.domestic for p in pool_offers])
    interruptible_only = np.array([str(p.pricing_type) == "interruptible" for p in pool_offers])
    sharing = np.array([p.sharing_allowed for p in pool_offers])
    per_node = np.array([f.units_per_node for f in facts])
    node_cpu = np.array([f.node_shape.cpu_milli for f in facts])
    node_memory = np.array([f.node_shape.memory_mib for f in facts])
    offered = np.array([f.nodes_offered for f in facts])
    price = np.array([float(p.unit_price) for p in pool_offers])
    ncu_unit = np.array([float(f.ncu_per_unit) for f in facts])
    latency_cache: dict[tuple[str, float], np.ndarray] = {}

    pairs: list[Pair] = []
    for j, job in enumerate(specs):
        mask = stack == str(job.stack)
        if job.cpu_architecture is not None:
            mask &= arch == str(job.cpu_architecture)
        if job.device_models:
            mask &= np.isin(model, list(job.device_models))
        if job.domestic_only:
            mask &= domestic
        if job.allowed_hubs:
            mask &= np.isin(hub, list(job.allowed_hubs))
        if job.max_latency_ms is not None:
            key = (job.buyer_city or "", job.max_latency_ms)
            if key not in latency_cache:
                latency_cache[key] = np.array(
                    [c in CITIES and latency_ms(job.buyer_city or "", c) <= job.max_latency_ms for c in city]
                )
            mask &= latency_cache[key]
        if not job.interruptible:
            mask &= ~interruptible_only
        if job.capacity is None:
            if str(job.stack) == "cpu":
                units = job.nodes * job.cpu_milli_per_node / 1000
                mask &= (job.cpu_milli_per_node <= node_cpu) & (job.nodes <= offered)
            elif job.accelerator_milli:
                units = job.accelerator_milli / 1000
                mask &= sharing
            else:
                units = job.nodes * job.accelerators_per_node
                mask &= (job.accelerators_per_node <= per_node) & (job.nodes <= offered)
            mask &= (job.cpu_milli_per_node <= node_cpu) & (job.memory_mib_per_node <= node_memory)
            rate = price * ncu_unit * units
        else:
            rate = price  # capacity demands: every candidate is resolved exactly below
        if job.max_price_per_ncu_hour is not None:
            mask &= price <= float(job.max_price_per_ncu_hour) * (1 + 1e-9)
        idx = np.flatnonzero(mask)
        order = idx[np.argsort(rate[idx], kind="stable")] if job.capacity is None else idx
        found: list[tuple[Decimal, int, Any]] = []
        ready = job.ready_at(now)
        for i in order.tolist():
            f = facts[i]
            if engine.static_reason(job, f, ready) is not None:
                continue
            resolved = engine.resolve(job, f)
            found.append((engine.estimated_cost(f.pool, resolved, job), i, resolved))
            if job.capacity is None and len(found) >= k:
                break
        found.sort(key=lambda t: (t[0], t[1]))
        chosen = found[:k]
        ours = must.get(j)
        if ours is not None and all(i != ours for _, i, _ in chosen):
            f = facts[ours]
            resolved = engine.resolve(job, f)
            chosen.append((engine.estimated_cost(f.pool, resolved, job), ours, resolved))
        for cost, i, resolved in chosen:
            d = resolved.demand
            pairs.append(
                Pair(
                    job=j,
                    pool=i,
                    cost=float(cost),
                    thousandths=resolved.nodes * d.accelerator_thousandths,
                    cpu_milli=resolved.nodes * d.cpu_milli,
                    memory_mib=resolved.nodes * d.memory_mib,
                )
            )
    assert n == len(facts)
    return pairs, facts


@dataclass
class Solution:
    status: str
    value: float | None
    bound: float | None


def assignment_rows(pairs: list[Pair], facts: list[Any], *, exactly_one: bool) -> tuple[Any, list[float], list[float]]:
    """The constraint rows of the assignment problem over ``pairs`` (one column each): per job, the sum of its
    x at most one (``exactly_one``: exactly one); per pool, the accelerator thousandths, CPU thousandths and
    memory MiB its jobs hold at most the pool's offered nodes' total. Returns (COO matrix, row lower bounds,
    row upper bounds)."""
    import numpy as np
    from scipy.sparse import coo_matrix

    job_row = {j: r for r, j in enumerate(sorted({p.job for p in pairs}))}
    pools = sorted({p.pool for p in pairs})
    pool_row = {i: len(job_row) + 3 * r for r, i in enumerate(pools)}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for c, p in enumerate(pairs):
        rows.append(job_row[p.job])
        cols.append(c)
        vals.append(1.0)
        for offset, value in ((0, p.thousandths), (1, p.cpu_milli), (2, p.memory_mib)):
            if value:
                rows.append(pool_row[p.pool] + offset)
                cols.append(c)
                vals.append(float(value))
    lo = [1.0 if exactly_one else 0.0] * len(job_row)
    hi = [1.0] * len(job_row)
    for i in pools:
        f = facts[i]
        lo += [-np.inf] * 3  # HiGHS reads any bound past 1e20 as none
        hi += [
            float(f.nodes_offered * f.node_shape.accelerators * 1000),
            float(f.nodes_offered * f.node_shape.cpu_milli),
            float(f.nodes_offered * f.node_shape.memory_mib),
        ]
    return coo_matrix((vals, (rows, cols)), shape=(len(lo), len(pairs))), lo, hi


def solve_assignment(
    pairs: list[Pair], facts: list[Any], *, placed: set[int] | None, time_limit: float, integral: bool
) -> Solution:
    """The batch as an assignment problem, solved by HiGHS (``scipy.optimize.milp``).

    Variables: x[j, p] in [0, 1] (integral when ``integral``) for each candidate pair. Rows: each job on at most one
    pool (with ``placed``: exactly one, for exactly the jobs in ``placed``); per pool, the accelerator thousandths,
    CPU thousandths and memory MiB its jobs hold (all their nodes) at most the pool's offered nodes' total.
    Objective: with ``placed``, minimise total cost; without, maximise the number of jobs placed."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    if placed is not None:
        pairs = [p for p in pairs if p.job in placed]
    m = len(pairs)
    matrix, lo, hi = assignment_rows(pairs, facts, exactly_one=placed is not None)
    a = matrix.tocsr()
    objective = np.array([p.cost for p in pairs]) if placed is not None else np.full(m, -1.0)
    res = milp(
        objective,
        constraints=[LinearConstraint(a, np.array(lo), np.array(hi))],
        integrality=np.ones(m) if integral else np.zeros(m),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit, "mip_rel_gap": 1e-6, "disp": False},
    )
    value = None if res.x is None else float(objective @ res.x)
    bound = getattr(res, "mip_dual_bound", None) if integral else value
    return Solution(status=str(res.message), value=value, bound=None if bound is None else float(bound))


def solve_mip_from(
    pairs: list[Pair], facts: list[Any], *, placed: set[int], start: dict[int, int], time_limit: float
) -> Solution:
    """The same min-cost problem as :func:`solve_assignment` with binary x, solved with highspy and started from
    our own assignment (``start``: job → pool), so HiGHS always has an incumbent no dearer than ours and improves
    it within ``time_limit``. Returns the best assignment's cost and HiGHS's proven lower bound."""
    import highspy
    import numpy as np

    pairs = [p for p in pairs if p.job in placed]
    m = len(pairs)
    matrix, lo, hi = assignment_rows(pairs, facts, exactly_one=True)
    a = matrix.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_ = m
    lp.num_row_ = len(lo)
    lp.col_cost_ = np.array([p.cost for p in pairs])
    lp.col_lower_ = np.zeros(m)
    lp.col_upper_ = np.ones(m)
    lp.row_lower_ = np.array(lo)
    lp.row_upper_ = np.array(hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    lp.integrality_ = [highspy.HighsVarType.kInteger] * m
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", 1e-6)
    h.passModel(lp)
    solution = highspy.HighsSolution()
    solution.col_value = [1.0 if start.get(p.job) == p.pool else 0.0 for p in pairs]
    solution.value_valid = True
    h.setSolution(solution)
    h.run()
    info = h.getInfo()
    status = h.modelStatusToString(h.getModelStatus())
    value = float(info.objective_function_value) if info.primal_solution_status else None
    return Solution(status=status, value=value, bound=float(info.mip_dual_bound))


def optimum(*, now: datetime, k: int, time_limit: float, pool_offers: list[Any], specs: list[Any]) -> Quality:
    """Our placement's cost against the optimum of the same problem.

    The problem: the jobs our run placed, each on exactly one pool, every (job, pool) pair allowed only if
    ``demand.static_reason`` passes (the engine's own hard constraints) and priced with
    ``demand.estimated_cost`` (unit price × NCU × hours, prices as the first cycle saw them); capacity per pool
    aggregated over its nodes (accelerator thousandths, CPU, memory): a relaxation of per-node packing, so the
    optimum is a lower bound on what any exact packing could reach. Candidates per job: its ``k`` cheapest
    feasible pools plus the pool we chose (so our placement is a feasible point). Objective: minimise total cost.
    Solved with HiGHS as an LP (a lower bound, fast) and as a MIP (binary x) started from our assignment, within
    ``time_limit``: the MIP's incumbent is an upper bound on the optimum, its dual bound a lower bound."""
    from scheduler.models import HOLDING_LEASE_STATES, Lease

    started = time.perf_counter()
    pool_index = {p.pool_id: i for i, p in enumerate(pool_offers)}
    job_index = {s.job_id: j for j, s in enumerate(specs)}
    must: dict[int, int] = {}
    for job_id, offer_id in Lease.objects.filter(status__in=HOLDING_LEASE_STATES).values_list("job_id", "offer_id"):
        j = job_index.get(str(job_id))
        i = pool_index.get(f"offer:{offer_id}")
        if j is not None and i is not None:
            must[j] = i
    pairs, facts = feasible_pairs(specs, pool_offers, now=now, k=k, must=must)
    by_pair = {(p.job, p.pool): p for p in pairs}
    our_cost = sum(by_pair[(j, i)].cost for j, i in must.items())
    placed = set(must)
    lp = solve_assignment(pairs, facts, placed=placed, time_limit=time_limit, integral=False)
    mip = solve_mip_from(pairs, facts, placed=placed, start=must, time_limit=time_limit)
    most = solve_assignment(pairs, facts, placed=None, time_limit=time_limit, integral=False)
    return Quality(
        jobs_placed=len(placed),
        our_cost=our_cost,
        lp_bound=lp.value,
        mip_cost=mip.value,
        mip_bound=mip.bound,
        mip_status=mip.status,
        candidates_per_job=k,
        variables=sum(1 for p in pairs if p.job in placed),
        seconds=time.perf_counter() - started,
        max_placeable=None if most.value is None else math.floor(-most.value + 1e-6),
    )


def engine_snapshot(now: datetime) -> tuple[list[Any], list[Any]]:
    """The market and the queue as the first cycle sees them (pool offers, job specs)."""
    from scheduler import selectors
    from scheduler.models import Job, JobStatus
    from scheduler.services import job_spec

    pool_offers, _leases, _rows = selectors.engine_inputs(now=now)
    specs = [job_spec(job) for job in Job.objects.filter(status=JobStatus.QUEUED).order_by("queued_at", "id")]
    return pool_offers, specs


# --- the naive baseline -----------------------------------------------------------------------------------------------


@dataclass
class NaiveResult:
    jobs_tried: int
    placed: int
    seconds: float
    extrapolated_seconds: float
    offers_locked: int
    complete: bool
    cost: float


def run_naive(*, now: datetime, budget: float, pool_offers: list[Any], specs: list[Any]) -> NaiveResult:
    """One job at a time, in queue order (oldest first), no batching: for each job, in one transaction, lock the job,
    then walk the offers in id order that pass the engine's static checks; lock each (``SELECT … FOR UPDATE``),
    read its holding leases, and take the first node(s) and devices that fit (first fit); write the lease, the
    job's transition and two audit rows; commit. The static checks per (job, offer) are computed before the clock
    starts (so the figure is the database path, not Python checks). Stops at ``budget`` seconds and extrapolates
    linearly from the rate of the last 10% of jobs done."""
    from django.db import transaction
    from django.db.models import F

    from core.audit import audit_record
    from scheduler.domain import demand as engine
    from scheduler.domain.capacity import Hold, fits, hold_from
    from scheduler.domain.packing import NodeState, place_gang
    from scheduler.models import HOLDING_LEASE_STATES, Job, JobStatus, Lease, LeaseStatus, Offer

    facts = [engine.pool_facts(p) for p in pool_offers]
    pool_of = dict(Offer.objects.values_list("pk", "pool_id"))
    order = sorted(range(len(facts)), key=lambda i: int(pool_offers[i].pool_id.split(":")[1]))
    candidates: list[list[tuple[int, Any]]] = []
    for job in specs:
        ready = job.ready_at(now)
        found = []
        for i in order:
            f = facts[i]
            if f.pool.stack is not job.stack:
                continue
            if engine.static_reason(job, f, ready) is None:
                found.append((i, engine.resolve(job, f)))
        candidates.append(found)
    started = time.perf_counter()
    marks: list[float] = []
    placed = locked_total = 0
    cost = 0.0
    for job, found in zip(specs, candidates, strict=True):
        if time.perf_counter() - started > budget:
            break
        with transaction.atomic():
            Job.objects.select_for_update().filter(pk=int(job.job_id), status=JobStatus.QUEUED).first()
            for i, resolved in found:
                f = facts[i]
                offer_id = int(f.pool.pool_id.split(":")[1])
                Offer.objects.select_for_update().filter(pk=offer_id).first()
                locked_total += 1
                leases = Lease.objects.filter(offer_id=offer_id, status__in=HOLDING_LEASE_STATES, end__gt=now)
                holds = [
                    Hold.from_record(r, lease.start, lease.end)
                    for lease in leases.only("start", "end", "allocations")
                    for r in lease.allocations
                ]
                nodes = [NodeState.empty(f.node_shape) for _ in range(f.nodes_offered)]
                for h in holds:
                    if h.start <= now < h.end:
                        nodes[h.node].allocate(h.placement(), h.demand())
                placement = place_gang(nodes, resolved.demand, resolved.nodes, policy="first-fit")
                if placement is None:
                    continue
                end = now + job.duration
                new = [hold_from(p, resolved.demand, now, end) for p in placement]
                if not fits(f.node_shape, f.nodes_offered, holds, new):
                    continue
                price = engine.estimated_cost(f.pool, resolved, job)
                lease = Lease.objects.create(
                    job_id=int(job.job_id),
                    offer_id=offer_id,
                    pool_id=pool_of[offer_id],
                    start=now,
                    end=end,
                    allocations=[h.as_record() for h in new],
                    pricing_type=str(f.pool.pricing_type),
                    unit_price=f.pool.unit_price,
                    ncu=resolved.ncu.quantize(Decimal("0.0001")),
                    ncu_hours=(resolved.ncu * engine.duration_hours(job.duration)).quantize(Decimal("0.0001")),
                    estimated_cost=price.quantize(Decimal("0.01")),
                    interruptible=job.interruptible,
                )
                Job.objects.filter(pk=int(job.job_id), status=JobStatus.QUEUED).update(
                    status=JobStatus.SCHEDULED, status_changed_at=now
                )
                Offer.objects.filter(pk=offer_id).update(generation=F("generation") + 1)
                job_row = Job(pk=int(job.job_id))
                audit_record(
                    actor=None,
                    action="job.transition",
                    entity=job_row,
                    from_state=JobStatus.QUEUED,
                    to_state=JobStatus.SCHEDULED,
                )
                audit_record(actor=None, action="lease.created", entity=lease, to_state=LeaseStatus.SCHEDULED)
                placed += 1
                cost += float(price)
                break
        marks.append(time.perf_counter() - started)
    seconds = marks[-1] if marks else 0.0
    done = len(marks)
    complete = done == len(specs)
    extrapolated = seconds
    if not complete and done >= 10:
        tail = max(1, done // 10)
        rate = (marks[-1] - marks[-1 - tail]) / tail
        extrapolated = seconds + rate * (len(specs) - done)
    return NaiveResult(
        jobs_tried=done,
        placed=placed,
        seconds=seconds,
        extrapolated_seconds=extrapolated,
        offers_locked=locked_total,
        complete=complete,
        cost=cost,
    )


# --- main -------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--limit", type=int, default=0, help="jobs claimed per cycle (default: all; jobs/workers with --split none)"
    )
    parser.add_argument(
        "--split",
        choices=["shard", "none"],
        default="shard",
        help="shard: workers plan the whole queue and each writes its buyers' jobs; none: each plans what it claims",
    )
    parser.add_argument(
        "--k",
        type=int,
        default=60,
        help="candidate pools per job in the optimum (too few raise the optimum: cheap capacity is contested)",
    )
    parser.add_argument("--solver-seconds", type=float, default=120.0)
    parser.add_argument("--naive-budget", type=float, default=120.0, help="seconds before the naive run extrapolates")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    args = parser.parse_args(argv)

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not url.startswith(("postgres://", "postgresql://")):
        print("This bench needs PostgreSQL (SKIP LOCKED, several workers): set DATABASE_URL=postgres://…")
        return 2
    bench_url = with_database(url, BENCH_DB)
    limit = args.limit or (args.jobs if args.split == "shard" else math.ceil(args.jobs / args.workers))

    print(f"Scheduler throughput bench: {args.jobs:,} jobs, {args.pools:,} pools, {args.workers} workers")
    print(f"database server {urlsplit(url).hostname}:{urlsplit(url).port}, bench database {BENCH_DB}")
    recreate_database(url, BENCH_DB)
    django_setup(bench_url)
    from django.core.management import call_command
    from django.db import connection

    t0 = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    migrate_seconds = time.perf_counter() - t0
    now = datetime.now(tz=UTC)
    setup = make_market(pools=args.pools, jobs=args.jobs, seed=args.seed, now=now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    pool_offers, specs = engine_snapshot(datetime.now(tz=UTC))
    close_connections()
    if not args.skip_naive:
        recreate_database(url, NAIVE_DB, template=BENCH_DB)
    print(
        f"setup (not timed): migrate {migrate_seconds:.1f} s, market {setup.seconds:.1f} s — {setup.providers} "
        f"providers, {setup.sites} sites, {setup.pools} pools/offers, {setup.buyers} buyer organisations, "
        f"{setup.jobs} queued jobs"
    )
    print("  jobs:  " + ", ".join(f"{k} {v}" for k, v in setup.kinds.most_common()))
    print("  pools: " + ", ".join(f"{k} {v}" for k, v in setup.pool_kinds.most_common()))

    load_before = os.getloadavg()
    run = run_ours(bench_url, workers=args.workers, limit=limit, split=args.split)
    load_after = os.getloadavg()
    from django.db.models import Sum

    from scheduler.models import Job, JobStatus, Lease

    placed = Lease.objects.count()
    still_queued = Job.objects.filter(status=JobStatus.QUEUED).count()
    leased_cost = float(Lease.objects.aggregate(s=Sum("estimated_cost"))["s"] or 0)
    checked, overbooked, findings = overbooked_offers()
    jobs_per_s = placed / run.seconds if run.seconds else 0.0
    print()
    split = "whole queue planned, jobs split by buyer" if args.split == "shard" else "each plans the jobs it claims"
    print(
        f"ours: {placed:,} jobs placed in {run.seconds:.2f} s = {jobs_per_s:,.0f} jobs/s "
        f"({args.workers} workers, {split}, up to {limit:,} jobs claimed per cycle); {still_queued:,} left queued"
    )
    print(
        f"  last placement committed at {run.last_placement:.2f} s; the rest is the cycles that confirm the "
        f"{still_queued:,} jobs left cannot be placed"
    )
    print(f"  load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs")
    for w in run.workers:
        print(f"  worker {w['worker']}: {len(w['cycles'])} cycles, {w['seconds']:.2f} s")
        for c in w["cycles"]:
            shard = "claimed jobs" if c["shard"] is None else f"shard {c['shard']}"
            print(
                f"    {shard}: {c['queued']:,} claimed → {c['assigned']:,} placed, {c['refused_at_commit']:,} "
                f"refused at commit, {c['preempted']} preempted; {c['seconds']:.2f} s ({c['cpu_seconds']:.2f} s CPU: "
                f"reading {c['cpu_inputs']:.2f}, engine {c['cpu_engine']:.2f}, writing {c['cpu_writes']:.2f})"
            )
    print(f"  overbooking check: {checked:,} offers with leases, {overbooked} overbooked")
    for line in findings:
        print("   ", line)

    quality = None
    if not args.skip_quality:
        quality = optimum(now=now, k=args.k, time_limit=args.solver_seconds, pool_offers=pool_offers, specs=specs)

        def cny(value: float | None) -> str:
            return "n/a" if value is None else f"{value:,.2f} CNY"

        print()
        print(
            f"quality: the same {quality.jobs_placed:,} jobs as an assignment problem (HiGHS; "
            f"{quality.candidates_per_job} cheapest feasible pools per job plus ours, {quality.variables:,} "
            "variables; capacity aggregated per pool)"
        )
        print(f"  our cost           {cny(quality.our_cost)}")
        print(f"  LP lower bound     {cny(quality.lp_bound)}")
        print(
            f"  MIP optimum        {cny(quality.mip_cost)} (bound {cny(quality.mip_bound)}; "
            f"{'proven optimal' if quality.proven else quality.mip_status})"
        )
        reference = "the proven optimum" if quality.proven else "the best lower bound"
        print(f"  ratio              {quality.ratio or float('nan'):.4f} (ours over {reference})")
        print(f"  leases' own estimated cost: {cny(leased_cost)} (prices locked cycle by cycle)")
        most = (
            f"at most {quality.max_placeable:,} of the {len(specs):,} jobs could be placed even with capacity "
            "aggregated per pool (LP bound)"
            if quality.max_placeable is not None
            else "how many jobs could be placed at all: not solved in its time limit"
        )
        print(f"  {most}; we placed {quality.jobs_placed:,}; optimum {quality.seconds:.1f} s")
    close_connections()

    naive = None
    if not args.skip_naive:
        from django.db import connections

        connections["default"].settings_dict["NAME"] = NAIVE_DB
        naive = run_naive(now=now, budget=args.naive_budget, pool_offers=pool_offers, specs=specs)
        close_connections()
        print()
        how = "measured" if naive.complete else f"extrapolated from {naive.jobs_tried:,} jobs in {naive.seconds:.1f} s"
        print(
            f"naive (1 process, one job at a time, lock, first fit): {naive.placed:,} placed of {naive.jobs_tried:,} "
            f"tried, {naive.extrapolated_seconds:.1f} s for {len(specs):,} jobs ({how}), {naive.offers_locked:,} "
            f"offer locks taken"
        )
        print(f"  ours {run.seconds:.2f} s vs naive {naive.extrapolated_seconds:.1f} s")

    if not args.keep:
        drop_database(url, BENCH_DB)
        drop_database(url, NAIVE_DB)
    result = {
        "jobs": args.jobs,
        "pools": args.pools,
        "workers": args.workers,
        "seconds": round(run.seconds, 3),
        "seconds_to_last_placement": round(run.last_placement, 3),
        "split": args.split,
        "jobs_placed": placed,
        "jobs_per_s": round(jobs_per_s, 1),
        "overbooked": overbooked,
        "cost_ratio_vs_optimal": None if quality is None or quality.ratio is None else round(quality.ratio, 5),
        "optimum_proven": None if quality is None else quality.proven,
        "cost_ratio_vs_mip_incumbent": None
        if quality is None or not quality.mip_cost
        else round(quality.our_cost / quality.mip_cost, 5),
        "our_cost": None if quality is None else round(quality.our_cost, 2),
        "optimal_cost": None if quality is None or quality.mip_cost is None else round(quality.mip_cost, 2),
        "lp_bound": None if quality is None or quality.lp_bound is None else round(quality.lp_bound, 2),
        "max_placeable": None if quality is None else quality.max_placeable,
        "naive_seconds": None if naive is None else round(naive.extrapolated_seconds, 2),
        "naive_extrapolated": None if naive is None else not naive.complete,
        "naive_placed": None if naive is None else naive.placed,
        "setup_seconds": round(setup.seconds + migrate_seconds, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
