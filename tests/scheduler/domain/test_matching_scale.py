"""A synthetic market at the size of the benchmark target: 10,000 queued jobs onto 5,000 pools in one cycle.

The workload is built from the device catalogue the platform ships: accelerated pools of every model (1–16
nodes of 4 or 8 devices, CUDA, CANN, ROCm/DTK, Neuware, Kunlun), CPU pools of every CPU model, in every hub;
jobs of 300 organisations (one holding 30% of the queue) asking for whole devices, gangs, shared slices,
normalised capacity or CPU, with price caps, hubs, latency limits, domestic-only and interruptible flags.
The bound asserted is generous (the cycle takes a few seconds of CPU on one core); it guards against a
change that makes the engine scan jobs × pools × nodes.
"""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from marketplace.domain.geography import CITIES, HUBS
from marketplace.domain.units import (
    ComputeClass,
    CpuArchitecture,
    DeviceKind,
    DeviceSpec,
    PoolShape,
    Precision,
    SoftwareStack,
)
from scheduler.domain.demand import CapacityDemand, JobSpec, Lease, Objective, PoolOffer, PricingType
from scheduler.domain.matching import schedule_cycle
from tests.scheduler.domain.test_matching import NOW

D = Decimal
CATALOGUE = Path(__file__).resolve().parents[3] / "marketplace" / "fixtures" / "device_catalogue.json"


def _spec(entry: dict) -> DeviceSpec:
    return DeviceSpec(
        entry["code"],
        DeviceKind(entry["kind"]),
        D(entry["fp64_tflops"]),
        D(entry["fp32_tflops"]),
        D(entry["fp16_tflops"]),
        D(entry["int8_tops"]),
        cores=int(entry["cores"]),
    )


def synthetic_market(pool_count: int, job_count: int, seed: int = 7) -> tuple[list[PoolOffer], list[JobSpec]]:
    rng = random.Random(seed)
    catalogue = json.loads(CATALOGUE.read_text(encoding="utf-8"))
    accelerators = [e for e in catalogue if e["kind"] != "cpu"]
    cpus = [e for e in catalogue if e["kind"] == "cpu"]
    host = _spec(next(e for e in cpus if e["code"].startswith("intel")))
    cities = {hub: [c.code for c in CITIES.values() if c.hub == hub] for hub in HUBS}
    pools = []
    for i in range(pool_count):
        hub = rng.choice(list(HUBS))
        if rng.random() < 0.1:
            entry = rng.choice(cpus)
            device = _spec(entry)
            shape = PoolShape(ComputeClass.GENERAL, rng.randint(1, 16), device, device.cores * 2, None, 0)
            stack, arch = SoftwareStack.CPU, CpuArchitecture(entry["architecture"])
            price, memory, power = D(rng.randint(50, 150)) / 1000, D(0), D(entry["power_w"]) / device.cores
        else:
            entry = rng.choice(accelerators)
            shape = PoolShape(
                ComputeClass.INTELLIGENT, rng.choice([1, 2, 4, 8, 16]), host, 112, _spec(entry), rng.choice([8, 8, 4])
            )
            stack, arch = SoftwareStack(entry["software_stack"]), CpuArchitecture.X86_64
            price, memory, power = D(rng.randint(5, 40)) / 1000, D(str(entry["memory_gb"])), D(entry["power_w"])
        pools.append(
            PoolOffer(
                pool_id=f"p{i:05d}",
                identifier=f"CX{i:05d}",
                provider_id=f"provider-{i % 300}",
                site_id=f"site-{i % 1000}",
                hub=hub,
                city=rng.choice(cities[hub]),
                stack=stack,
                cpu_architecture=arch,
                shape=shape,
                node_memory_mib=1024 * 1024,
                unit_price=price,
                window_start=NOW - timedelta(days=1),
                pricing_type=rng.choice(
                    [PricingType.ON_DEMAND] * 4 + [PricingType.INTERRUPTIBLE, PricingType.RESERVED]
                ),
                accelerator_memory_gib=memory,
                unit_power_w=power,
                domestic=entry["domestic"],
                provider_verified=rng.random() < 0.97,
                provider_reliability=D(rng.randint(80, 100)) / 100,
                pue=D(rng.randint(110, 160)) / 100,
                green_share=D(rng.randint(0, 80)) / 100,
                sharing_allowed=rng.random() < 0.3,
            )
        )
    cuda_models = [e["code"] for e in accelerators if e["software_stack"] == "cuda"]
    jobs = []
    for i in range(job_count):
        kw: dict = {}
        draw = rng.random()
        if draw < 0.08:
            stack = SoftwareStack.CPU
            kw.update(
                cpu_architecture=CpuArchitecture.X86_64,
                cpu_milli_per_node=rng.choice([4000, 16000, 64000]),
                memory_mib_per_node=rng.choice([8192, 65536]),
            )
        else:
            stack = rng.choice([SoftwareStack.CUDA] * 6 + [SoftwareStack.CANN, SoftwareStack.ROCM_DTK])
            if draw < 0.18:
                kw.update(capacity=CapacityDemand(D(rng.choice([100, 500, 2000, 8000])), Precision.FP16))
            elif draw < 0.28:
                kw.update(accelerator_milli=rng.choice([250, 500]))
            else:
                per_node = rng.choice([1, 1, 2, 4, 8, 8])
                kw.update(accelerators_per_node=per_node, nodes=rng.choice([1, 1, 1, 2, 4]) if per_node == 8 else 1)
                if stack is SoftwareStack.CUDA and rng.random() < 0.5:
                    kw.update(device_models=frozenset(rng.sample(cuda_models, 3)))
        if rng.random() < 0.3:
            kw.update(allowed_hubs=frozenset(rng.sample(list(HUBS), 3)))
        if rng.random() < 0.2:
            kw.update(buyer_city=rng.choice(list(CITIES)), max_latency_ms=rng.choice([5.0, 10.0, 20.0]))
        if rng.random() < 0.3:
            kw.update(max_price_per_ncu_hour=D(rng.randint(10, 40)) / 1000)
        jobs.append(
            JobSpec(
                job_id=f"j{i:05d}",
                org_id="big" if rng.random() < 0.3 else f"org-{rng.randint(0, 300)}",
                submitted_at=NOW - timedelta(minutes=rng.randint(0, 3000)),
                stack=stack,
                duration=timedelta(hours=rng.choice([1, 2, 8, 24])),
                interruptible=rng.random() < 0.3,
                objective=rng.choice(list(Objective)),
                domestic_only=rng.random() < 0.05,
                **kw,
            )
        )
    return pools, jobs


def test_ten_thousand_jobs_onto_five_thousand_pools_in_one_cycle():
    pools, jobs = synthetic_market(5000, 10_000)
    started = time.process_time()
    result = schedule_cycle(jobs, pools, [], NOW)
    first = time.process_time() - started
    assert len(result.assignments) + len(result.pending) == len(jobs)
    # the market has room: all but the jobs no pool could ever take (and a few blocked gangs) are placed
    assert len(result.assignments) + len(result.never_fit) >= 0.98 * len(jobs)

    # half an hour later: the first cycle's assignments are leases, a new queue of 10,000 arrives
    leases = [
        Lease(f"l-{a.job_id}", a.job_id, a.org_id, a.pool_id, a.start, a.end, a.allocations, a.interruptible)
        for a in result.assignments
    ]
    _, later = synthetic_market(0, 10_000, seed=11)
    later = [
        JobSpec(**{**{f: getattr(j, f) for f in JobSpec.__dataclass_fields__}, "job_id": f"n{j.job_id}"}) for j in later
    ]
    started = time.process_time()
    second = schedule_cycle(later, pools, leases, NOW + timedelta(minutes=30))
    again = time.process_time() - started
    assert second.preemptions  # on-demand jobs took capacity back from interruptible leases
    print(f"\n10,000 jobs x 5,000 pools: {first:.2f} s CPU; again with {len(leases)} leases: {again:.2f} s CPU")
    assert first < 60 and again < 60
