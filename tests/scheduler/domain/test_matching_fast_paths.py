"""The engine's fast paths answer as the straightforward computations they replace, over random markets with
leases running now and starting later: a quote packs only the pools that can still be among its best options;
free capacity now and over a window is computed as arrays and kept per window; what a job's demand and costs
are on each pool is kept per demand in a market that answers many quotes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from unittest.mock import patch

from hypothesis import given
from hypothesis import strategies as st

from marketplace.domain.units import SoftwareStack
from scheduler.domain import matching
from scheduler.domain.demand import Lease, MatchingConfig, NodeAllocation
from scheduler.domain.matching import QuoteMarket, _Market, quote, schedule_cycle
from scheduler.domain.packing import NodeState, Placement, SliceDemand
from tests.scheduler.domain.test_matching import NOW, lease_from
from tests.scheduler.domain.test_matching_properties import PROPERTY, jobs, pools

D = Decimal


@st.composite
def markets(draw: st.DrawFn) -> tuple[list, list[Lease], list]:
    """Offers (some with capacity kept outside the market), leases running now (made by a cycle some time
    ago) and leases starting later (made by a cycle ahead), and jobs to ask about."""
    market = draw(pools(max_pools=6))
    stacks = sorted({pool.stack for pool in market})
    earlier = draw(jobs("old-", max_jobs=10, stacks=stacks, rare=9))
    later = draw(jobs("late-", max_jobs=6, stacks=stacks, rare=9))
    asked = draw(jobs("ask-", max_jobs=4, stacks=stacks))
    ago = timedelta(minutes=draw(st.integers(1, 600)))
    ahead = timedelta(minutes=draw(st.integers(1, 600)))
    first = schedule_cycle(earlier, market, [], NOW - ago)
    leases = [lease_from(a, f"lease-{a.job_id}") for a in first.assignments]
    second = schedule_cycle(later, market, leases, NOW + ahead)
    leases += [lease_from(a, f"lease-{a.job_id}") for a in second.assignments]
    if draw(st.booleans()):  # a lease recorded on devices the node does not have: they hold nothing
        pool = market[0]
        demand = SliceDemand(1000, 1024, accelerators=2) if pool.shape.accelerated else SliceDemand(1000, 1024)
        devices = (0, 99) if pool.shape.accelerated else ()
        milli = 1000 if pool.shape.accelerated else 0
        leases.append(
            Lease(
                lease_id="stray",
                job_id="stray-job",
                org_id="org-z",
                pool_id=pool.pool_id,
                start=NOW - timedelta(hours=1),
                end=NOW + timedelta(hours=draw(st.integers(1, 30))),
                allocations=(NodeAllocation(Placement(0, devices, milli), demand),),
            )
        )
    return market, leases, asked


def _reference_quote(job, market, leases, config, limit):  # type: ignore[no-untyped-def]
    """The quote as computed before pruning: every candidate pool packed, all options sorted."""
    engine = _Market(market, now=NOW, config=config, leases=leases, jobs=(job,))
    ready = job.ready_at(NOW)
    options = engine.earliest(job, ready, config.quote_pool_limit)
    if len(options) > 1:
        for option in options:
            option.frag = engine.fragmentation_growth(option)
    options.sort(key=lambda o: engine.key(job, o))
    chosen = tuple(
        engine.assignment(job, o, tuple(NodeAllocation(p, o.resolved.demand) for p in o.placements))
        for o in options[:limit]
    )
    return chosen, engine.explain(job, ready, occupancy=False)


@PROPERTY
@given(scenario=markets(), limit=st.integers(-1, 5), pool_limit=st.sampled_from([1, 2, 3, 64]))
def test_a_quote_packs_only_what_can_be_among_its_best_options_and_answers_as_packing_them_all(
    scenario, limit, pool_limit
):
    market, leases, asked = scenario
    config = MatchingConfig(quote_pool_limit=pool_limit)
    for job in asked:
        options, explanation = _reference_quote(job, market, leases, config, limit)
        answer = quote(job, market, leases, now=NOW, config=config, limit=limit)
        assert answer.options == options
        assert answer.explanation == explanation


def _summary(nodes: list[NodeState], width: int) -> tuple[list[int], int, int, int]:
    """A partition's summary of one pool's free capacity, node by node."""
    counts = [0] * width
    largest = cpu = memory = 0
    for node in nodes:
        if node.free_milli:
            counts[min(node.free_milli.count(1000), width - 1)] += 1
            largest = max(largest, *node.free_milli)
        else:
            counts[0] += 1
        cpu, memory = max(cpu, node.free_cpu_milli), max(memory, node.free_memory_mib)
    at_least = [sum(counts[k:]) for k in range(width)]
    return at_least, largest, cpu, memory


@PROPERTY
@given(
    scenario=markets(),
    few=st.sampled_from([0, 2, 10**6]),
    offsets=st.lists(st.integers(-3, 3), min_size=1, max_size=8),
    data=st.data(),
)
def test_free_capacity_as_arrays_and_per_window_is_the_least_free_capacity_of_each_node(scenario, few, offsets, data):
    market, leases, asked = scenario
    with patch.object(matching, "_FEW_NODES", few):  # pools read node by node, as arrays, or either by size
        engine = _Market(market, now=NOW, config=MatchingConfig(), leases=leases)
        for pool_id, state in engine.states.items():
            n = len(state.base)
            now_nodes = [state.state_between(i, engine.now, engine.now + 1) for i in range(n)]
            # the filter's summary, brought up to date when asked
            stack, i = engine.where[pool_id]
            part = engine.partitions[stack]
            part._sync()
            summary = (part.nodes_with[i].tolist(), part.largest_share[i], part.most_cpu[i], part.most_memory[i])
            assert summary == _summary(now_nodes, part.nodes_with.shape[1])
            assert state.now_nodes() == now_nodes
            assert [a.tolist() for a in state.free_now()] == [
                [node.free_cpu_milli for node in now_nodes],
                [node.free_memory_mib for node in now_nodes],
                [node.free_milli for node in now_nodes],
            ]
            # windows starting and ending at, just before and just after the commitments' starts and ends
            events = sorted({t for held in state.commitments for c in held for t in (c.start, c.end)} | {engine.now})
            for _ in range(len(offsets)):
                start = data.draw(st.sampled_from(events)) + data.draw(st.sampled_from(offsets))
                end = start + data.draw(st.sampled_from([1, 2, 3_600_000_000, 3 * 3_600_000_000, 10**12]))
                expected = [state.state_between(node, start, end) for node in range(n)]
                window = state.window(start, end)
                assert window.cluster(state.facts.node_shape).nodes == expected
                for job in asked:
                    demand = SliceDemand(
                        job.cpu_milli_per_node,
                        job.memory_mib_per_node,
                        accelerators=job.accelerators_per_node if state.facts.accelerated else 0,
                        accelerator_milli=job.accelerator_milli if state.facts.accelerated else 0,
                    )
                    fitting = sum(1 for node in expected if node.fits(demand))
                    for count in (1, 2, 3):
                        assert state.feasible(demand, count, start, end) == (fitting >= count)


@PROPERTY
@given(scenario=markets(), data=st.data())
def test_a_market_answering_many_quotes_keeps_each_demand_apart(scenario, data):
    market, leases, asked = scenario
    # variants of the same jobs: the same demand with another duration, objective, tolerance of latency, caps
    variants = list(asked)
    for job in asked:
        for _ in range(3):
            changes = {}
            if data.draw(st.booleans()):
                changes["duration"] = job.duration + timedelta(hours=data.draw(st.integers(-1, 5)))
            if data.draw(st.booleans()):
                changes["objective"] = data.draw(st.sampled_from(["cheapest", "earliest", "greenest"]))
            if data.draw(st.booleans()):
                changes["latency_tolerant"] = data.draw(st.sampled_from([None, True, False]))
            if data.draw(st.booleans()):
                changes["max_total_price"] = D(data.draw(st.integers(1, 500)))
            if data.draw(st.booleans()):
                changes["storage_gib_per_node"] = data.draw(st.sampled_from([0, 1000]))
            if data.draw(st.booleans()):
                changes["memory_mib_per_node"] = data.draw(st.sampled_from([0, 1024, 64 * 1024]))
            if data.draw(st.booleans()) and (job.cpu_milli_per_node or job.stack is not SoftwareStack.CPU):
                changes["cpu_milli_per_node"] = data.draw(st.sampled_from([1000, 8000, 32_000]))
            if job.accelerators_per_node and data.draw(st.booleans()):
                changes["accelerators_per_node"] = data.draw(st.sampled_from([1, 2, 4, 8]))
            if changes.get("duration", job.duration) <= timedelta(0) or job.deadline is not None:
                changes.pop("duration", None)
            variants.append(replace(job, **changes))
    prepared = QuoteMarket(market, leases, now=NOW)
    for job in data.draw(st.permutations(variants)):
        assert prepared.quote(job, now=NOW) == quote(job, market, leases, now=NOW)
