"""Properties of the matching engine over random markets: never overbooked in any time slot, on any node,
on any accelerator; gangs all or nothing; every assignment meets every hard constraint; "cheapest" never
picks a costlier feasible pool for a job alone; the explanation agrees with the pool-by-pool checks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from billing.domain.money import to_fen
from marketplace.domain.units import CpuArchitecture, Precision, SoftwareStack
from scheduler.domain.demand import (
    CapacityDemand,
    JobSpec,
    Lease,
    Objective,
    PoolOffer,
    PricingType,
    Resolved,
    estimated_cost,
    pool_facts,
    resolve,
    static_reason,
)
from scheduler.domain.matching import (
    CycleResult,
    Explanation,
    JobNeverFits,
    QuoteMarket,
    check_submission,
    explain,
    quote,
    schedule_cycle,
)
from scheduler.domain.packing import NodeState
from tests.scheduler.domain.test_matching import A100, ASCEND, H100, KUNPENG, NOW, lease_from, make_job, make_pool

D = Decimal
CITIES = ["shanghai", "hangzhou", "beijing", "guangzhou", "zhongwei", "guiyang", "chengdu", "wuhan"]
ORGS = ["org-a", "org-b", "org-c"]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pools(draw: st.DrawFn, *, max_pools: int = 5, baseline: bool = True, loose: bool = False) -> list[PoolOffer]:
    """Random offers; ``loose`` ones open now, with no lease limits, rarely unverified."""
    result = []
    for i in range(draw(st.integers(1, max_pools))):
        kind = draw(st.sampled_from(["h100", "a100", "ascend", "xeon", "kunpeng"]))
        per_node = draw(st.sampled_from([2, 4, 8]))
        nodes = draw(st.integers(1, 3))
        kw: dict = {
            "price": str(D(draw(st.integers(1, 40))) / 1000),
            "nodes": nodes,
            "per_node": per_node,
            "city": draw(st.sampled_from(CITIES)),
            "sharing_allowed": draw(st.booleans()),
            "pricing_type": draw(st.sampled_from([PricingType.ON_DEMAND] * (4 if loose else 1) + list(PricingType))),
            "provider_verified": draw(st.integers(0, 9 if loose else 3)) < (9 if loose else 3),
            "provider_reliability": D(draw(st.integers(50, 100))) / 100,
            "green_share": D(draw(st.integers(0, 100))) / 100,
            "window_start": NOW + timedelta(hours=draw(st.integers(-48, -1 if loose else 2))),
            "window_end": draw(st.none() | st.integers(24 if loose else 1, 72).map(lambda h: NOW + timedelta(hours=h))),
            "min_lease": timedelta(hours=draw(st.sampled_from([0] if loose else [0, 0, 2]))),
            "max_lease": draw(st.sampled_from([None] if loose else [None, None, timedelta(hours=12)])),
            "node_storage_gib": draw(st.sampled_from([2000] if loose else [0, 500, 2000])),
        }
        if kind == "h100":
            kw.update(device=H100)
        elif kind == "a100":
            kw.update(device=A100, memory_gib="40")
        elif kind == "ascend":
            kw.update(device=ASCEND, stack=SoftwareStack.CANN, domestic=True, memory_gib="64")
        elif kind == "xeon":
            kw.update(device=None, stack=SoftwareStack.CPU, cores=draw(st.sampled_from([56, 112])))
        else:
            kw.update(
                device=None,
                stack=SoftwareStack.CPU,
                cpu=KUNPENG,
                cores=128,
                cpu_architecture=CpuArchitecture.AARCH64,
                domestic=True,
            )
        pool = make_pool(f"p{i}", **kw)
        if baseline and draw(st.booleans()):
            pool = _with_baseline(draw, pool)
        result.append(pool)
    return result


def _with_baseline(draw: st.DrawFn, pool: PoolOffer) -> PoolOffer:
    """The pool with some of each node kept outside the market."""
    facts = pool_facts(pool)
    shape = facts.node_shape
    nodes = []
    for _ in range(facts.nodes_offered):
        free = [draw(st.sampled_from([1000, 1000, 0, 500])) for _ in range(shape.accelerators)]
        nodes.append(
            NodeState(
                shape,
                draw(st.integers(shape.cpu_milli // 2, shape.cpu_milli)),
                draw(st.integers(shape.memory_mib // 2, shape.memory_mib)),
                free,
            )
        )
    return PoolOffer(**{**{f: getattr(pool, f) for f in pool.__dataclass_fields__}, "nodes": tuple(nodes)})


@st.composite
def jobs(
    draw: st.DrawFn,
    prefix: str,
    *,
    max_jobs: int = 10,
    stacks: list[SoftwareStack] | None = None,
    rare: int = 3,
) -> list[JobSpec]:
    """Random jobs; each optional constraint applies with probability 1 / (rare + 1)."""

    def sometimes() -> bool:
        return draw(st.integers(0, rare)) == rare  # the simplest draw (0) means no constraint

    result = []
    for i in range(draw(st.integers(1, max_jobs))):
        stack = draw(
            st.sampled_from(stacks or [SoftwareStack.CUDA, SoftwareStack.CUDA, SoftwareStack.CANN, SoftwareStack.CPU])
        )
        kw: dict = {
            "objective": draw(st.sampled_from(list(Objective))),
            "interruptible": draw(st.booleans()),
            "priority": draw(st.integers(0, 2)),
            "storage_gib_per_node": 1000 if sometimes() else 0,
        }
        if stack is SoftwareStack.CPU:
            kw["cpu_architecture"] = (
                draw(st.sampled_from(list(CpuArchitecture))) if sometimes() else CpuArchitecture.X86_64
            )
            if draw(st.booleans()):
                kw["cpu_milli_per_node"] = draw(st.integers(500, 130_000))
                kw["nodes"] = draw(st.integers(1, 3)) if sometimes() else 1
            else:
                kw["capacity"] = CapacityDemand(D(draw(st.integers(1, 40))), Precision.FP32)
        else:
            shape = draw(st.sampled_from(["whole", "whole", "slice", "capacity"]))
            if shape == "whole":
                kw["accelerators_per_node"] = draw(st.sampled_from([1, 2, 4, 8]))
                kw["nodes"] = draw(st.integers(1, 3)) if sometimes() else 1
                if draw(st.booleans()):
                    kw["device_models"] = frozenset(draw(st.sets(st.sampled_from([H100.code, A100.code]), min_size=1)))
            elif shape == "slice":
                kw["accelerator_milli"] = draw(st.integers(1, 999))
            else:
                kw["capacity"] = CapacityDemand(
                    D(draw(st.integers(10, 6000))),
                    draw(st.sampled_from([Precision.FP16, Precision.FP32])),
                    D(draw(st.sampled_from([0, 0, 100, 400]))),
                )
            if draw(st.booleans()):
                kw["cpu_milli_per_node"] = draw(st.integers(1000, 60_000))
                kw["memory_mib_per_node"] = draw(st.integers(1024, 512 * 1024))
        if sometimes():
            kw["max_price_per_ncu_hour"] = D(draw(st.integers(5, 40))) / 1000
        if sometimes():
            kw["max_total_price"] = D(draw(st.integers(1, 2000)))
        if sometimes():
            kw["allowed_hubs"] = frozenset(draw(st.sets(st.sampled_from(["YRD", "JJJ", "NX", "GBA"]), min_size=1)))
        if sometimes():
            kw["buyer_city"] = draw(st.sampled_from(CITIES))
            kw["max_latency_ms"] = float(draw(st.sampled_from([2, 5, 10, 30])))
        kw["domestic_only"] = sometimes() and sometimes()
        hours = draw(st.integers(1, 24))
        if sometimes():
            kw["earliest_start"] = NOW + timedelta(hours=draw(st.integers(-2, 3)))
        if sometimes():
            start = kw.get("earliest_start") or NOW
            kw["deadline"] = start + timedelta(hours=hours + draw(st.integers(0, 24)))
        result.append(
            JobSpec(
                job_id=f"{prefix}{i}",
                org_id=draw(st.sampled_from(ORGS)),
                submitted_at=NOW - timedelta(minutes=draw(st.integers(1, 3000))),
                stack=stack,
                duration=timedelta(hours=hours),
                **kw,
            )
        )
    return result


def _usage_by_node(pools: list[PoolOffer], held: list[tuple[str, object, object, object]]) -> None:
    """Assert that on every node of every pool, at every instant, the sum of what is held fits what is free."""
    by_pool = {pool.pool_id: pool for pool in pools}
    per_node: dict[tuple[str, int], list] = {}
    for pool_id, start, end, allocations in held:
        for allocation in allocations:
            per_node.setdefault((pool_id, allocation.placement.node), []).append((start, end, allocation))
    for (pool_id, node), items in per_node.items():
        pool = by_pool[pool_id]
        facts = pool_facts(pool)
        base = pool.nodes[node] if pool.nodes is not None else NodeState.empty(facts.node_shape)
        for instant in {start for start, _, _ in items}:
            active = [a for start, end, a in items if start <= instant < end]
            cpu = sum(a.demand.cpu_milli for a in active)
            memory = sum(a.demand.memory_mib for a in active)
            assert cpu <= base.free_cpu_milli, (pool_id, node, instant, "cpu")
            assert memory <= base.free_memory_mib, (pool_id, node, instant, "memory")
            for device, free in enumerate(base.free_milli):
                used = sum(a.placement.accelerator_milli for a in active if device in a.placement.devices)
                assert used <= free, (pool_id, node, device, instant)


def _check_cycle(
    pools: list[PoolOffer], queued: list[JobSpec], leases: list[Lease], result: CycleResult, now: datetime
) -> None:
    by_job = {job.job_id: job for job in queued}
    by_pool = {pool.pool_id: pool for pool in pools}
    preempted = {p.lease_id for p in result.preemptions}
    assert preempted <= {lease.lease_id for lease in leases if lease.interruptible}
    placed_on = {a.job_id: a.pool_id for a in result.assignments}
    for p in result.preemptions:  # only on-demand jobs preempt, and they take the capacity they freed
        assert not by_job[p.by_job_id].interruptible
        assert placed_on[p.by_job_id] == p.pool_id

    # gang all or nothing, one assignment per job, every hard constraint met
    counted = Counter(a.job_id for a in result.assignments)
    assert all(n == 1 for n in counted.values())
    assert not set(counted) & set(result.pending)
    assert set(counted) | set(result.pending) == set(by_job)
    for a in result.assignments:
        job, pool = by_job[a.job_id], by_pool[a.pool_id]
        facts = pool_facts(pool)
        ready = job.ready_at(now)
        assert static_reason(job, facts, ready) is None
        assert a.start == ready >= pool.window_start
        assert a.end == a.start + job.duration
        resolved = resolve(job, facts)
        assert isinstance(resolved, Resolved)
        assert len(a.allocations) == resolved.nodes
        assert len({x.placement.node for x in a.allocations}) == resolved.nodes
        assert all(x.demand == resolved.demand for x in a.allocations)
        for x in a.allocations:
            taken = x.demand.accelerators or (1 if x.demand.accelerator_milli else 0)
            assert len(x.placement.devices) == taken
        assert a.estimated_cost == to_fen(estimated_cost(pool, resolved, job))
        if job.max_total_price is not None:
            assert estimated_cost(pool, resolved, job) <= job.max_total_price

    held = [(lease.pool_id, lease.start, lease.end, lease.allocations) for lease in leases]
    held = [h for h, lease in zip(held, leases, strict=True) if lease.lease_id not in preempted]
    held += [(a.pool_id, a.start, a.end, a.allocations) for a in result.assignments]
    held += [(r.pool_id, r.start, r.end, r.allocations) for r in result.reservations]
    _usage_by_node(pools, held)

    for job_id, why in result.pending.items():
        assert sum(n for _, n in why.counts) + why.fit == len(pools), job_id


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[PoolOffer], list[JobSpec], list[JobSpec]]:
    """A market that is open now, and two waves of jobs mostly for the stacks it offers."""
    market = draw(pools(loose=True))
    stacks = sorted({pool.stack for pool in market})
    earlier = draw(jobs("old-", max_jobs=12, stacks=stacks, rare=9))
    queued = draw(jobs("new-", max_jobs=12, stacks=stacks, rare=9))
    return market, earlier, queued


@PROPERTY
@given(scenario=scenarios(), interruptible=st.booleans())
def test_a_cycle_never_overbooks_and_every_assignment_meets_every_constraint(scenario, interruptible):
    market, earlier, queued = scenario
    # an earlier cycle an hour ago made the leases the market holds now
    first = schedule_cycle(earlier, market, [], NOW - timedelta(hours=1))
    leases = [
        lease_from(a, f"lease-{a.job_id}", interruptible=interruptible or a.interruptible) for a in first.assignments
    ]
    _check_cycle(market, earlier, [], first, NOW - timedelta(hours=1))
    result = schedule_cycle(queued, market, leases, NOW)
    _check_cycle(market, queued, leases, result, NOW)


@PROPERTY
@given(market=pools(baseline=False), queued=jobs("solo-", max_jobs=1))
def test_cheapest_never_picks_a_costlier_feasible_pool_for_a_job_alone(market, queued):
    job = JobSpec(**{**{f: getattr(queued[0], f) for f in JobSpec.__dataclass_fields__}, "objective": "cheapest"})
    ready = job.ready_at(NOW)
    feasible = {}
    for pool in market:
        facts = pool_facts(pool)
        if static_reason(job, facts, ready) is None and pool.window_start <= ready:
            resolved = resolve(job, facts)
            assert isinstance(resolved, Resolved)
            feasible[pool.pool_id] = to_fen(estimated_cost(pool, resolved, job))
    result = schedule_cycle([job], market, [], NOW, config=None)
    if ready > NOW:
        return  # waits for its start (covered by the quote below)
    if not feasible:
        assert result.assignments == ()
        return
    (chosen,) = result.assignments
    assert chosen.estimated_cost == min(feasible.values())

    options = quote(job, market, now=NOW).options
    assert options[0].estimated_cost <= min(feasible.values())
    assert [o.estimated_cost for o in options] == sorted(o.estimated_cost for o in options)


def _checked(check: Callable[[], Explanation]) -> object:
    try:
        return check()
    except JobNeverFits as refused:
        return ("never fits", refused.explanation)


@PROPERTY
@given(
    scenario=scenarios(),
    ago=st.integers(1, 3600),
    seconds=st.lists(st.integers(0, 2 * 3600), min_size=1, max_size=4),
)
def test_a_prepared_quote_market_answers_as_a_fresh_one_while_it_holds(scenario, ago, seconds):
    market, earlier, queued = scenario
    # leases made ``ago`` seconds before the market is prepared, some ending while it is used
    first = schedule_cycle(earlier, market, [], NOW - timedelta(seconds=ago))
    leases = [lease_from(a, f"lease-{a.job_id}", interruptible=a.interruptible) for a in first.assignments]
    tick = timedelta(microseconds=1)
    moments = {NOW + timedelta(seconds=s) for s in seconds}
    moments |= {moment + step for lease in leases for moment in (lease.end,) for step in (-tick, 0 * tick, tick)}
    prepared, prepared_at = QuoteMarket(market, leases, now=NOW), NOW
    assert prepared.usable_at(NOW)
    assert not prepared.usable_at(NOW - tick)
    # in any order: requests served on threads may ask with a moment earlier than the last one
    for i, now in enumerate(sorted((m for m in moments if m >= NOW), key=lambda m: (m.microsecond % 3, m))):
        job = queued[i % len(queued)]
        if not prepared.usable_at(now):
            # before it was prepared, or a lease started or ended since: the market a quote needs is another one
            assert now < prepared_at or any(
                prepared_at < moment <= now for lease in leases for moment in (lease.start, lease.end)
            )
            prepared, prepared_at = QuoteMarket(market, leases, now=now), now
        assert prepared.quote(job, now=now) == quote(job, market, leases, now=now)
        assert _checked(partial(prepared.check_submission, job, now=now)) == _checked(
            partial(check_submission, job, market, now=now)
        )


@settings(max_examples=200, deadline=None)
@given(market=pools(max_pools=8), queued=jobs("x-", max_jobs=1))
def test_the_explanation_counts_every_pool_under_its_first_failing_check(market, queued):
    job = queued[0]
    ready = job.ready_at(NOW)
    reference = Counter(
        reason for pool in market if (reason := static_reason(job, pool_facts(pool), ready)) is not None
    )
    why = explain(job, market, now=NOW, occupancy=False)
    assert dict(why.counts) == dict(reference)
    assert why.fit == len(market) - sum(reference.values())
    assert why.never_fits == (why.fit == 0)
    counts = [n for _, n in why.counts]
    assert counts == sorted(counts, reverse=True)


@PROPERTY
@given(
    scenario=scenarios(),
    ago=st.integers(1, 3600),
    later=st.one_of(st.integers(0, 60), st.integers(0, 2 * 3600)),
    held_before=st.integers(0, 2**16 - 1),
    flipped=st.lists(st.integers(0, 15), max_size=3),
    repriced=st.one_of(st.just(0), st.integers(0, 2**8 - 1)),
)
def test_a_quote_market_started_from_the_one_it_replaces_answers_as_a_fresh_one(
    scenario, ago, later, held_before, flipped, repriced
):
    """Leases made and ended, offers repriced, time moved on or not: what the new market keeps of the
    donor changes no answer."""
    market, earlier, queued = scenario
    held_after = held_before
    for bit in flipped:  # a few leases made or ended meanwhile
        held_after ^= 1 << bit
    first = schedule_cycle(earlier, market, [], NOW - timedelta(seconds=ago))
    leases = [lease_from(a, f"lease-{a.job_id}", interruptible=a.interruptible) for a in first.assignments]
    before = [lease for i, lease in enumerate(leases) if held_before >> (i % 16) & 1]
    after = [lease for i, lease in enumerate(leases) if held_after >> (i % 16) & 1]
    donor = QuoteMarket(market, before, now=NOW)
    for job in queued:  # the donor's memos, windows and packing state worked out
        donor.quote(job, now=NOW)
    moved_market = [
        replace(pool, unit_price=pool.unit_price + D("0.001")) if repriced >> (i % 8) & 1 else pool
        for i, pool in enumerate(market)
    ]
    now = NOW + timedelta(seconds=later)
    prepared = QuoteMarket(moved_market, after, now=now, donor=donor)
    kept = [p for p, state in prepared._market.states.items() if donor._market.states.get(p) is state]
    event(f"pool states kept: {'some' if kept else 'none'}")
    fresh = QuoteMarket(moved_market, after, now=now)
    # what it took over of the kept pools' leases: when the market next changes, and the NCU each lease holds
    assert prepared._next_change == fresh._next_change
    assert prepared._market.lease_ncu == fresh._market.lease_ncu
    assert prepared._market.usage == fresh._market.usage
    for job in queued:
        assert prepared.quote(job, now=now) == quote(job, moved_market, after, now=now)
        assert _checked(partial(prepared.check_submission, job, now=now)) == _checked(
            partial(check_submission, job, moved_market, now=now)
        )
    # the donor, still in use by a request that began before the change, answers as before
    for moment in (NOW, now):
        if donor.usable_at(moment):
            for job in queued:
                assert donor.quote(job, now=moment) == quote(job, market, before, now=moment)


def test_a_market_started_from_an_unchanged_one_keeps_its_pool_states():
    pools = [make_pool("a", device=A100, price="0.010"), make_pool("b", device=H100, price="0.020")]
    job = make_job("j", accelerators=2, hours=1)
    placed = schedule_cycle([job], pools, [], NOW)
    leases = [lease_from(a, "lease-j") for a in placed.assignments]
    donor = QuoteMarket(pools, leases, now=NOW)
    donor.quote(job, now=NOW)
    same = QuoteMarket(pools, leases, now=NOW + timedelta(seconds=1), donor=donor)
    moved = QuoteMarket(pools, [], now=NOW + timedelta(seconds=1), donor=donor)
    pool_id = leases[0].pool_id
    assert same._market.states[pool_id] is donor._market.states[pool_id]
    assert pool_id not in moved._market.states  # its lease ended: nothing of the donor's state is kept
    assert moved.quote(job, now=NOW + timedelta(seconds=1)) == quote(job, pools, [], now=NOW + timedelta(seconds=1))
