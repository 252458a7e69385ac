"""The order a cycle considers queued jobs in: fair share between organisations, priority and ageing."""

from __future__ import annotations

from datetime import timedelta
from itertools import islice

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.domain.units import ComputeClass
from scheduler.domain.demand import MatchingConfig
from scheduler.domain.queueing import FairShareQueue, age_factor
from tests.scheduler.domain.test_matching import NOW, make_job

CAPACITY = {ComputeClass.INTELLIGENT: 10_000.0, ComputeClass.GENERAL: 1_000.0}


def drain(queue: FairShareQueue, ncu: float = 100.0) -> list[str]:
    """Hand out every job, each one charged ``ncu`` as if it had been placed."""
    order = []
    for job in queue:
        order.append(job.job_id)
        queue.charge(job.org_id, ComputeClass.INTELLIGENT, ncu)
    return order


def test_an_organisation_with_no_share_goes_before_a_flood_from_another():
    flood = [make_job(f"big-{i:04d}", org="big", submitted=NOW - timedelta(hours=3)) for i in range(1000)]
    lone = make_job("lone", org="small", submitted=NOW)
    order = drain(FairShareQueue([*flood, lone], now=NOW, capacity=CAPACITY))
    assert order.index("lone") == 1  # right after the flood's first (older) job raised its share


def test_the_organisation_holding_least_goes_first():
    usage = {"heavy": {ComputeClass.INTELLIGENT: 5_000.0}, "light": {ComputeClass.GENERAL: 100.0}}
    jobs = [make_job("h", org="heavy"), make_job("l", org="light"), make_job("n", org="new")]
    queue = FairShareQueue(jobs, now=NOW, capacity=CAPACITY, usage=usage)
    # dominant shares: new 0, light 100/1000 = 0.1 (general), heavy 5000/10000 = 0.5
    assert [job.job_id for job in queue] == ["n", "l", "h"]


def test_within_an_organisation_priority_then_age_decide_and_old_jobs_rise():
    config = MatchingConfig(ageing_horizon=timedelta(hours=10), ageing_priority_points=10)
    fresh_urgent = make_job("fresh-p5", priority=5, submitted=NOW - timedelta(minutes=1))
    old_plain = make_job("old-p0", priority=0, submitted=NOW - timedelta(hours=8))  # 0 + 8 points
    older_plain = make_job("older-p0", priority=0, submitted=NOW - timedelta(hours=30))  # 0 + 10 points (capped)
    queue = FairShareQueue([fresh_urgent, old_plain, older_plain], now=NOW, capacity=CAPACITY, config=config)
    assert [job.job_id for job in queue] == ["older-p0", "old-p0", "fresh-p5"]
    assert age_factor(older_plain, NOW, config) == 1.0


def test_ageing_discounts_the_share_of_an_organisation_whose_job_has_waited():
    usage = {"waited": {ComputeClass.INTELLIGENT: 1_000.0}, "fresh": {ComputeClass.INTELLIGENT: 700.0}}
    jobs = [
        make_job("w", org="waited", submitted=NOW - timedelta(hours=24)),  # share 0.1 × (1 − 0.5) = 0.05
        make_job("f", org="fresh", submitted=NOW),  # share 0.07
    ]
    assert [job.job_id for job in FairShareQueue(jobs, now=NOW, capacity=CAPACITY, usage=usage)] == ["w", "f"]


def test_a_refund_after_preemption_moves_an_organisation_forward():
    jobs = [make_job(f"a{i}", org="a") for i in range(3)] + [make_job(f"b{i}", org="b") for i in range(3)]
    queue = FairShareQueue(jobs, now=NOW, capacity=CAPACITY, usage={"b": {ComputeClass.INTELLIGENT: 5_000.0}})
    it = iter(queue)
    first = next(it)
    assert first.org_id == "a"
    queue.charge("a", ComputeClass.INTELLIGENT, 6_000.0)  # a now holds more than b
    queue.refund("b", ComputeClass.INTELLIGENT, 4_000.0)
    assert next(it).org_id == "b"


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=2, max_size=6),
    ncu=st.floats(1.0, 500.0),
)
def test_with_equal_charges_no_organisation_gets_two_jobs_ahead_of_another(sizes, ncu):
    jobs = [
        make_job(f"o{o}-{i}", org=f"o{o}", submitted=NOW - timedelta(minutes=i + o))
        for o, n in enumerate(sizes)
        for i in range(n)
    ]
    order = drain(FairShareQueue(jobs, now=NOW, capacity=CAPACITY, config=MatchingConfig(ageing_share_discount=0)), ncu)
    assert sorted(order) == sorted(j.job_id for j in jobs)
    # in every prefix, organisations that still have jobs differ by at most one placement
    rounds = min(sizes)
    placed: dict[str, int] = {}
    for job_id in islice(order, rounds * len(sizes)):
        org = job_id.split("-")[0]
        placed[org] = placed.get(org, 0) + 1
        assert max(placed.values()) - min(placed.get(f"o{o}", 0) for o in range(len(sizes))) <= 1
