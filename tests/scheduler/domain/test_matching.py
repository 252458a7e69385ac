"""Stories of the matching engine: what a buyer, a provider and the operator see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from marketplace.domain.geography import CITIES
from marketplace.domain.units import (
    ComputeClass,
    CpuArchitecture,
    DeviceKind,
    DeviceSpec,
    PoolShape,
    Precision,
    SoftwareStack,
)
from scheduler.domain.demand import (
    CapacityDemand,
    JobSpec,
    JobSpecError,
    Lease,
    MatchingConfig,
    NodeAllocation,
    Objective,
    PoolOffer,
    PricingType,
    Reason,
    hub_latency_matrix,
)
from scheduler.domain.matching import (
    Assignment,
    JobNeverFits,
    check_submission,
    explain,
    quote,
    schedule_cycle,
)
from scheduler.domain.packing import Placement, SliceDemand

NOW = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
D = Decimal

H100 = DeviceSpec("nvidia-h100-sxm5-80gb", DeviceKind.GPU, D("66.9"), D("66.9"), D("989.4"), D("1979"))
A100 = DeviceSpec("nvidia-a100-sxm4-80gb", DeviceKind.GPU, D("19.5"), D("19.5"), D("312"), D("624"))
ASCEND = DeviceSpec("huawei-ascend-910b", DeviceKind.NPU, D(0), D("156.5"), D("313"), D("626"))
XEON = DeviceSpec("intel-xeon-platinum-8480plus", DeviceKind.CPU, D("3.584"), D("7.168"), D("114.688"), D(0), cores=56)
KUNPENG = DeviceSpec("huawei-kunpeng-920-6426", DeviceKind.CPU, D("1.3312"), D("2.6624"), D("2.6624"), D(0), cores=64)
NODE_MEMORY = 2048 * 1024  # MiB


def make_pool(
    pool_id: str,
    *,
    device: DeviceSpec | None = H100,
    stack: SoftwareStack = SoftwareStack.CUDA,
    hub: str | None = None,
    city: str = "shanghai",
    price: str = "0.01",
    nodes: int = 2,
    per_node: int = 8,
    cpu: DeviceSpec = XEON,
    cores: int = 112,
    memory_gib: str = "80",
    power_w: str = "700",
    **kw,
) -> PoolOffer:
    accelerated = device is not None
    shape = PoolShape(
        ComputeClass.INTELLIGENT if accelerated else ComputeClass.GENERAL,
        nodes,
        cpu,
        cores,
        device,
        per_node if accelerated else 0,
    )
    kw.setdefault("window_start", NOW - timedelta(days=30))
    kw.setdefault("cpu_architecture", CpuArchitecture.X86_64)
    return PoolOffer(
        pool_id=pool_id,
        identifier=f"CX-{pool_id}",
        provider_id=f"provider-{pool_id}",
        site_id=f"site-{pool_id}",
        hub=hub if hub is not None else CITIES[city].hub or "",
        city=city,
        stack=stack,
        shape=shape,
        node_memory_mib=NODE_MEMORY,
        unit_price=D(price),
        accelerator_memory_gib=D(memory_gib) if accelerated else D(0),
        unit_power_w=D(power_w),
        **kw,
    )


def make_job(
    job_id: str,
    *,
    org: str = "org-a",
    stack: SoftwareStack = SoftwareStack.CUDA,
    accelerators: int = 8,
    nodes: int = 1,
    hours: float = 2,
    submitted: datetime = NOW - timedelta(minutes=5),
    **kw,
) -> JobSpec:
    if "capacity" in kw or "accelerator_milli" in kw or stack is SoftwareStack.CPU:
        accelerators = 0
    return JobSpec(
        job_id=job_id,
        org_id=org,
        submitted_at=submitted,
        stack=stack,
        duration=timedelta(hours=hours),
        accelerators_per_node=accelerators,
        nodes=nodes,
        **kw,
    )


def lease_from(assignment: Assignment, lease_id: str, *, interruptible: bool | None = None) -> Lease:
    return Lease(
        lease_id=lease_id,
        job_id=assignment.job_id,
        org_id=assignment.org_id,
        pool_id=assignment.pool_id,
        start=assignment.start,
        end=assignment.end,
        allocations=assignment.allocations,
        interruptible=assignment.interruptible if interruptible is None else interruptible,
    )


def whole_node_lease(lease_id: str, pool_id: str, *, node: int = 0, hours: float = 4, devices: int = 8, **kw) -> Lease:
    demand = SliceDemand(112_000 * devices // 8, NODE_MEMORY * devices // 8, accelerators=devices)
    kw.setdefault("start", NOW - timedelta(hours=1))
    kw.setdefault("org_id", "org-z")
    return Lease(
        lease_id=lease_id,
        job_id=f"job-of-{lease_id}",
        pool_id=pool_id,
        end=NOW + timedelta(hours=hours),
        allocations=(NodeAllocation(Placement(node, tuple(range(devices)), 1000), demand),),
        **kw,
    )


def only(result_assignments: tuple[Assignment, ...], job_id: str) -> Assignment:
    found = [a for a in result_assignments if a.job_id == job_id]
    assert len(found) == 1, f"{job_id} assigned {len(found)} times"
    return found[0]


# --- filters ---------------------------------------------------------------------------------------------------------


def test_a_cuda_job_is_never_placed_on_an_ascend_pool_even_when_it_is_cheaper():
    pools = [
        make_pool("ascend", device=ASCEND, stack=SoftwareStack.CANN, price="0.001"),
        make_pool("h100", price="0.02"),
    ]
    result = schedule_cycle([make_job("train")], pools, [], NOW)
    assert only(result.assignments, "train").pool_id == "h100"

    alone = schedule_cycle([make_job("train")], pools[:1], [], NOW)
    assert alone.assignments == ()
    assert alone.pending["train"].message == "0/1 pools fit: 1 wrong software stack"


def test_pending_reason_counts_each_pool_once_under_its_first_failing_check():
    pools = [
        make_pool("ascend", device=ASCEND, stack=SoftwareStack.CANN),
        make_pool("ascend-2", device=ASCEND, stack=SoftwareStack.CANN),
        make_pool("dear", price="0.05"),
    ]
    job = make_job("capped", max_price_per_ncu_hour=D("0.02"))
    result = schedule_cycle([job], pools, [], NOW)
    why = result.pending["capped"]
    assert why.message == "0/3 pools fit: 2 wrong software stack, 1 over price cap"
    assert why.never_fits
    assert why.as_dict()["reasons"] == {"wrong_stack": 2, "over_price_cap": 1}


def test_a_job_allowed_in_jjj_and_yrd_within_5_ms_of_shanghai_lands_in_shanghai_jiangsu_or_zhejiang():
    pools = [
        make_pool("beijing", city="beijing", price="0.001"),  # allowed hub, 8 ms away
        make_pool("zhongwei", city="zhongwei", price="0.001"),  # west, outside the hubs
        make_pool("guangzhou", city="guangzhou", price="0.002"),
        make_pool("suzhou", city="suzhou", price="0.012"),
        make_pool("hangzhou", city="hangzhou", price="0.011"),
        make_pool("shanghai", city="shanghai", price="0.013"),
    ]
    jobs = [
        make_job(
            f"near-{i}",
            org=f"org-{i}",
            accelerators=4,
            allowed_hubs=frozenset({"JJJ", "YRD"}),
            buyer_city="shanghai",
            max_latency_ms=5.0,
        )
        for i in range(10)
    ]
    result = schedule_cycle(jobs, pools, [], NOW)
    assert len(result.assignments) == 10  # 3 pools × 2 nodes × 8 devices hold ten 4-device jobs
    assert {CITIES[a.city].region for a in result.assignments} <= {"Shanghai", "Jiangsu", "Zhejiang"}
    assert [a.pool_id for a in result.assignments][:4] == ["hangzhou"] * 4  # the cheapest eligible pool first

    why = explain(jobs[0], pools, now=NOW, occupancy=False)
    assert why.message == "3/6 pools fit: 2 outside allowed hubs, 1 over latency limit"


def test_domestic_only_jobs_and_unverified_providers_are_filtered():
    pools = [
        make_pool("h100"),
        make_pool("ascend", device=ASCEND, stack=SoftwareStack.CANN, domestic=True, provider_verified=False),
        make_pool("ascend-ok", device=ASCEND, stack=SoftwareStack.CANN, domestic=True, price="0.03"),
    ]
    job = make_job("xinchuang", stack=SoftwareStack.CANN, domestic_only=True)
    result = schedule_cycle([job], pools, [], NOW)
    assert only(result.assignments, "xinchuang").pool_id == "ascend-ok"
    assert explain(job, pools, now=NOW, occupancy=False).message == (
        "1/3 pools fit: 1 wrong software stack, 1 provider not verified"
    )


def test_an_on_demand_job_is_never_placed_on_an_interruptible_only_offer():
    pools = [make_pool("spot", pricing_type=PricingType.INTERRUPTIBLE, price="0.003"), make_pool("od", price="0.01")]
    on_demand = make_job("od-job", org="a")
    spot_ok = make_job("spot-job", org="b", interruptible=True)
    result = schedule_cycle([on_demand, spot_ok], pools, [], NOW)
    assert only(result.assignments, "od-job").pool_id == "od"
    assert only(result.assignments, "spot-job").pool_id == "spot"
    assert only(result.assignments, "spot-job").interruptible


def test_window_deadline_and_lease_length_are_respected():
    pools = [
        make_pool("closes-soon", window_end=NOW + timedelta(hours=1), price="0.001"),
        make_pool("min-24h", min_lease=timedelta(hours=24), price="0.002"),
        make_pool("open", price="0.01"),
    ]
    job = make_job("two-hours", deadline=NOW + timedelta(hours=3))
    result = schedule_cycle([job], pools, [], NOW)
    assert only(result.assignments, "two-hours").pool_id == "open"
    assert explain(job, pools, now=NOW, occupancy=False).message == (
        "1/3 pools fit: 1 lease length not offered, 1 outside offer window or deadline"
    )


def test_a_job_that_can_never_fit_is_refused_at_submission_with_the_reason():
    pools = [make_pool("small", nodes=1), make_pool("ascend", device=ASCEND, stack=SoftwareStack.CANN)]
    with pytest.raises(JobNeverFits) as refused:
        check_submission(make_job("huge", nodes=4), pools, now=NOW)
    assert refused.value.detail == "No pool can run this job: 0/2 pools fit: 1 wrong software stack, 1 too few nodes."
    assert refused.value.extra["explanation"]["never_fits"] is True

    # a job that fits an empty market is accepted even if the market is full right now
    busy = [whole_node_lease("l1", "small")]
    assert check_submission(make_job("ok"), pools, now=NOW).fit == 1
    assert explain(make_job("ok"), pools, busy, now=NOW).message == (
        "0/2 pools fit: 1 wrong software stack, 1 no free capacity"
    )


def test_cpu_only_jobs_need_a_cpu_pool_of_their_architecture():
    pools = [
        make_pool("x86", device=None, stack=SoftwareStack.CPU, cores=112, price="0.2"),
        make_pool(
            "arm",
            device=None,
            stack=SoftwareStack.CPU,
            cpu=KUNPENG,
            cores=128,
            cpu_architecture=CpuArchitecture.AARCH64,
            price="0.1",
        ),
        make_pool("gpu"),
    ]
    job = make_job("etl", stack=SoftwareStack.CPU, cpu_architecture=CpuArchitecture.X86_64, cpu_milli_per_node=16_000)
    result = schedule_cycle([job], pools, [], NOW)
    placed = only(result.assignments, "etl")
    assert placed.pool_id == "x86"
    # 16 cores of a 56-core Xeon at 7.168 TFLOPS FP32 per socket
    assert placed.ncu == D(16) * D("7.168") / 56
    assert explain(job, pools, now=NOW, occupancy=False).message == (
        "1/3 pools fit: 1 wrong software stack, 1 wrong CPU architecture"
    )


# --- demand shapes ---------------------------------------------------------------------------------------------------


def test_capacity_demand_is_turned_into_devices_per_pool_and_priced_on_what_it_holds():
    pools = [make_pool("h100", price="0.010"), make_pool("a100", device=A100, price="0.012")]
    job = make_job("2pf", capacity=CapacityDemand(D(2000), Precision.FP16, accelerator_memory_gib=D(320)), hours=10)
    result = schedule_cycle([job], pools, [], NOW)
    placed = only(result.assignments, "2pf")
    # H100: 2000 / 989.4 → 3 devices, 320 GiB / 80 → 4 devices: 4 devices = 3957.6 NCU
    # A100: 2000 / 312 → 7 devices = 2184 NCU, at 0.012 → 262.08 vs 0.010 × 3957.6 × 10 = 395.76
    assert placed.pool_id == "a100"
    assert placed.ncu == 7 * D(312)
    assert placed.estimated_cost == D("262.08")
    assert [len(a.placement.devices) for a in placed.allocations] == [7]


def test_a_capacity_demand_larger_than_a_node_becomes_a_gang_of_equal_members():
    pools = [make_pool("h100", nodes=4)]
    job = make_job("big", capacity=CapacityDemand(D(12000), Precision.FP16))  # 12.13 → 13 devices
    placed = only(schedule_cycle([job], pools, [], NOW).assignments, "big")
    assert [len(a.placement.devices) for a in placed.allocations] == [7, 7]
    assert len({a.placement.node for a in placed.allocations}) == 2


def test_shared_slices_go_to_offers_that_allow_sharing_and_fill_one_device():
    pools = [make_pool("no-share", price="0.001"), make_pool("share", sharing_allowed=True, nodes=1)]
    jobs = [make_job(f"slice-{i}", org=f"o{i}", accelerator_milli=250) for i in range(4)]
    result = schedule_cycle(jobs, pools, [], NOW)
    placed = [only(result.assignments, j.job_id) for j in jobs]
    assert {a.pool_id for a in placed} == {"share"}
    devices = {(a.allocations[0].placement.node, a.allocations[0].placement.devices) for a in placed}
    assert devices == {(0, (0,))}  # four quarter slices share one device, the other seven stay whole
    assert placed[0].ncu == D("989.4") / 4
    assert explain(jobs[0], pools, now=NOW, occupancy=False).message == "1/2 pools fit: 1 no accelerator sharing"


def test_partial_node_jobs_fill_a_used_node_before_breaking_a_whole_one():
    pool = make_pool("p", nodes=2)
    first = schedule_cycle([make_job("half", accelerators=4)], [pool], [], NOW).assignments[0]
    lease = lease_from(first, "l-half")
    second = schedule_cycle([make_job("quarter", org="b", accelerators=2)], [pool], [lease], NOW).assignments[0]
    assert second.allocations[0].placement.node == first.allocations[0].placement.node
    # the other node stays whole for a whole-node job
    third = schedule_cycle([make_job("whole", org="c")], [pool], [lease, lease_from(second, "l-q")], NOW)
    assert only(third.assignments, "whole").allocations[0].placement.node != first.allocations[0].placement.node


def test_among_equal_cost_pools_the_one_already_in_use_is_preferred():
    pools = [make_pool("a-fresh"), make_pool("b-used")]
    used = whole_node_lease("l", "b-used", hours=10, devices=4)
    result = schedule_cycle([make_job("one-gpu", accelerators=1)], pools, [used], NOW)
    assert only(result.assignments, "one-gpu").pool_id == "b-used"


def test_default_cpu_and_memory_follow_the_accelerator_share():
    placed = only(schedule_cycle([make_job("q", accelerators=2)], [make_pool("p")], [], NOW).assignments, "q")
    demand = placed.allocations[0].demand
    assert (demand.cpu_milli, demand.memory_mib) == (112_000 // 4, NODE_MEMORY // 4)


# --- time ------------------------------------------------------------------------------------------------------------


def test_a_future_lease_limits_what_may_start_now():
    pool = make_pool("p", nodes=1)
    future = whole_node_lease("later", "p", start=NOW + timedelta(hours=2), hours=6)
    result = schedule_cycle(
        [make_job("short", accelerators=8, hours=2), make_job("long", org="b", accelerators=8, hours=3)],
        [pool],
        [future],
        NOW,
    )
    assert only(result.assignments, "short").end == NOW + timedelta(hours=2)
    assert "long" in result.pending


def test_a_job_with_a_future_earliest_start_waits_for_it():
    start = NOW + timedelta(days=1)
    job = make_job("tomorrow", earliest_start=start)
    result = schedule_cycle([job], [make_pool("p")], [], NOW)
    assert result.pending["tomorrow"].message == (f"1/1 pools fit; waits for its earliest start {start.isoformat()}")
    ahead = schedule_cycle([job], [make_pool("p")], [], NOW, MatchingConfig(lookahead=timedelta(days=2)))
    assert only(ahead.assignments, "tomorrow").start == start


def test_backfill_lets_small_jobs_use_gaps_without_delaying_the_reserved_big_job():
    pool = make_pool("p", nodes=2)
    running = whole_node_lease("running", "p", node=0, hours=4)
    big = make_job("big", nodes=2, submitted=NOW - timedelta(hours=3))
    fits_gap = make_job("short", accelerators=1, hours=2, submitted=NOW - timedelta(hours=2))
    too_long = make_job("long", accelerators=1, hours=10, submitted=NOW - timedelta(hours=1))
    result = schedule_cycle([big, fits_gap, too_long], [pool], [running], NOW)

    (reservation,) = result.reservations
    assert (reservation.job_id, reservation.start) == ("big", NOW + timedelta(hours=4))
    assert "capacity reserved on pool p from" in result.pending["big"].message
    assert only(result.assignments, "short").end <= reservation.start
    assert "long" in result.pending


# --- fairness and preemption ------------------------------------------------------------------------------------------


def test_one_job_of_a_small_buyer_is_scheduled_in_the_same_cycle_as_ten_thousand_of_a_big_one():
    pools = [make_pool(f"p{i}", nodes=4) for i in range(4)]  # 128 devices
    flood = [
        make_job(f"big-{i:05d}", org="big", accelerators=1, submitted=NOW - timedelta(hours=5)) for i in range(10_000)
    ]
    lone = make_job("lone", org="small", accelerators=1, submitted=NOW - timedelta(seconds=1))
    result = schedule_cycle([*flood, lone], pools, [], NOW)
    assert only(result.assignments, "lone")
    assert len(result.assignments) == 128
    assert result.pending["big-09999"].message == "0/4 pools fit: 4 no free capacity"


def test_the_cheap_capacity_goes_to_the_job_that_saves_most_on_it_once_fair_share_has_chosen_the_jobs():
    pools = [make_pool("cheap", nodes=1, price="0.01"), make_pool("dear", nodes=1, price="0.02")]
    short = make_job("short-slice", org="org-a", accelerators=1, hours=0.5, submitted=NOW - timedelta(hours=2))
    long = make_job("long-node", org="org-b", accelerators=8, hours=10, submitted=NOW - timedelta(hours=1))

    greedy = schedule_cycle([short, long], pools, [], NOW, MatchingConfig(repack=False))
    assert only(greedy.assignments, "short-slice").pool_id == "cheap"  # first in line, it breaks the cheap node
    assert only(greedy.assignments, "long-node").pool_id == "dear"

    result = schedule_cycle([short, long], pools, [], NOW)
    assert {a.job_id for a in result.assignments} == {"short-slice", "long-node"}, "the same jobs get capacity"
    assert only(result.assignments, "long-node").pool_id == "cheap"
    assert only(result.assignments, "short-slice").pool_id == "dear"
    total = sum(a.estimated_cost for a in result.assignments)
    assert total < sum(a.estimated_cost for a in greedy.assignments)
    alone = schedule_cycle([short], pools, [], NOW)
    assert only(alone.assignments, "short-slice").pool_id == "cheap", "a job on its own still gets the cheapest"


def test_when_capacity_is_contested_fair_share_not_the_stakes_decides_who_gets_it():
    pools = [make_pool("only", nodes=1)]
    small = make_job("small-first", org="org-a", accelerators=1, hours=0.5, submitted=NOW - timedelta(hours=2))
    big = make_job("big-later", org="org-b", accelerators=8, hours=10, submitted=NOW - timedelta(hours=1))
    result = schedule_cycle([small, big], pools, [], NOW)
    assert [a.job_id for a in result.assignments] == ["small-first"]  # older, so first in line; the big job waits
    assert "no free capacity" in result.pending["big-later"].message


def test_an_on_demand_job_preempts_an_interruptible_lease_when_nothing_else_fits():
    pools = [make_pool("p", nodes=1), make_pool("q", nodes=1)]
    leases = [
        whole_node_lease("spot-1", "p", interruptible=True, org_id="spot-buyer", start=NOW - timedelta(hours=3)),
        whole_node_lease("spot-2", "q", interruptible=True, org_id="spot-buyer", start=NOW - timedelta(minutes=10)),
    ]
    result = schedule_cycle([make_job("urgent")], pools, leases, NOW)
    (preemption,) = result.preemptions
    # the lease that started most recently loses least work
    assert (preemption.lease_id, preemption.by_job_id, preemption.preempted_job_id) == (
        "spot-2",
        "urgent",
        "job-of-spot-2",
    )
    assert only(result.assignments, "urgent").pool_id == "q"


def test_no_preemption_when_free_capacity_exists_or_for_interruptible_jobs():
    pools = [make_pool("p", nodes=1), make_pool("free", nodes=1, price="0.05")]
    spot = whole_node_lease("spot", "p", interruptible=True)
    result = schedule_cycle([make_job("od")], pools, [spot], NOW)
    assert result.preemptions == ()
    assert only(result.assignments, "od").pool_id == "free"

    result = schedule_cycle([make_job("also-spot", interruptible=True)], pools[:1], [spot], NOW)
    assert result.preemptions == ()
    assert "also-spot" in result.pending
    # on-demand leases are never preempted
    on_demand = whole_node_lease("od-lease", "p")
    assert schedule_cycle([make_job("od")], pools[:1], [on_demand], NOW).preemptions == ()


# --- scoring ---------------------------------------------------------------------------------------------------------


def test_objectives_pick_cheapest_greenest_and_earliest():
    pools = [
        make_pool("cheap-busy", price="0.008", nodes=1),
        make_pool("dear-green", city="zhongwei", price="0.012", green_share=D("0.9"), pue=D("1.1")),
        make_pool("mid", price="0.010", nodes=1),
    ]
    busy = [whole_node_lease("l", "cheap-busy", hours=3)]
    cheapest = quote(make_job("c"), pools, busy, now=NOW)
    assert [o.pool_id for o in cheapest.options] == ["cheap-busy", "mid", "dear-green"]
    assert cheapest.options[0].start == NOW + timedelta(hours=3)  # the expected start on a busy pool

    earliest = quote(make_job("e", objective=Objective.EARLIEST), pools, busy, now=NOW)
    assert earliest.options[0].pool_id == "mid"
    assert earliest.options[-1].pool_id == "cheap-busy"

    greenest = quote(make_job("g", objective=Objective.GREENEST), pools, busy, now=NOW)
    assert greenest.options[0].pool_id == "dear-green"

    cycle = schedule_cycle([make_job("c")], pools, busy, NOW)
    assert only(cycle.assignments, "c").pool_id == "mid"  # a cycle places what can start now


def test_quote_reports_price_energy_and_carbon():
    pool = make_pool("p", price="0.01", pue=D("1.2"), green_share=D("0.5"), grid_carbon_kg_per_kwh=D("0.6"))
    (option,) = quote(make_job("q", hours=2), [pool], now=NOW).options
    assert option.ncu == 8 * D("989.4")
    assert option.ncu_hours == D("15830.4000")
    assert option.estimated_cost == D("158.30")
    assert option.energy_kwh == D("13.440")  # 8 × 700 W × 2 h × PUE 1.2
    assert option.carbon_kg == D("4.032")  # × 0.6 kg/kWh × (1 − 0.5)
    assert (option.hub, option.pool_identifier) == ("YRD", "CX-p")


def test_latency_tolerant_work_goes_west_when_the_price_is_close():
    pools = [make_pool("east", price="0.0100"), make_pool("west", city="zhongwei", price="0.0103")]
    batch = make_job("batch", objective=Objective.EARLIEST)
    interactive = make_job("inference", objective=Objective.EARLIEST, buyer_city="shanghai", max_latency_ms=20.0)
    assert quote(batch, pools, now=NOW).options[0].pool_id == "west"
    assert quote(interactive, pools, now=NOW).options[0].pool_id == "east"
    # not when the western price is far off
    far = [make_pool("east", price="0.0100"), make_pool("west", city="zhongwei", price="0.0120")]
    assert quote(batch, far, now=NOW).options[0].pool_id == "east"
    # "cheapest" only prefers the west at the same cost
    assert quote(make_job("c"), pools, now=NOW).options[0].pool_id == "east"
    same = [make_pool("east", price="0.0100"), make_pool("west", city="zhongwei", price="0.0100")]
    assert quote(make_job("c"), same, now=NOW).options[0].pool_id == "west"


def test_job_spec_validation_names_the_field():
    with pytest.raises(JobSpecError) as error:
        make_job("x", accelerators=0)
    assert error.value.field == "accelerators_per_node"
    with pytest.raises(JobSpecError) as error:
        make_job("x", max_latency_ms=5.0)
    assert error.value.field == "buyer_city"
    with pytest.raises(JobSpecError) as error:
        make_job("x", stack=SoftwareStack.CPU, cpu_milli_per_node=1000)
    assert error.value.field == "cpu_architecture"
    with pytest.raises(JobSpecError):
        make_job("x", earliest_start=NOW, deadline=NOW + timedelta(hours=1), hours=2)


def test_reasons_have_labels_and_static_flags():
    assert Reason.WRONG_STACK.label == "wrong software stack"
    assert not Reason.NO_CAPACITY.static
    assert Reason.OVER_PRICE_CAP.static


def test_a_site_in_a_city_the_geography_does_not_know_is_placed_by_its_hub():
    pools = [make_pool("new-town", city="lingang", hub="YRD"), make_pool("nowhere", city="atlantis", hub="")]
    near = make_job("near", buyer_city="shanghai", max_latency_ms=5.0)
    # the farthest known YRD city from Shanghai (Hefei) is about 3 ms away
    assert explain(near, pools, now=NOW, occupancy=False).message == "1/2 pools fit: 1 over latency limit"
    strict = make_job("strict", buyer_city="shanghai", max_latency_ms=2.0)
    assert explain(strict, pools, now=NOW, occupancy=False).message == "0/2 pools fit: 2 over latency limit"


def test_the_hub_latency_matrix_follows_the_plan_targets():
    matrix = hub_latency_matrix()
    assert len(matrix) == 64
    assert matrix["YRD", "YRD"] <= 5.0  # inside one hub
    assert matrix["YRD", "NX"] == matrix["NX", "YRD"] > 10.0  # east to west is 1.5 × fibre distance


def test_an_earliest_quote_finds_a_free_pool_beyond_many_cheaper_busy_ones():
    busy_pools = [make_pool(f"busy-{i:02d}", nodes=1, price="0.005") for i in range(70)]
    leases = [whole_node_lease(f"l{i}", p.pool_id, hours=24) for i, p in enumerate(busy_pools)]
    free = make_pool("free", nodes=1, price="0.02")
    options = quote(make_job("asap", objective=Objective.EARLIEST), [*busy_pools, free], leases, now=NOW).options
    assert (options[0].pool_id, options[0].start) == ("free", NOW)
    assert options[1].start == NOW + timedelta(hours=24)
