import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.domain.packing import (
    POLICIES,
    STRANDING_WEIGHT,
    WHOLE_DEVICE_MILLI,
    Cluster,
    NodeShape,
    NodeState,
    Placement,
    SliceDemand,
    WorkloadMix,
    fragmentation,
    place,
    place_gang,
    scarcity_weighted,
    stranding,
)

PROPERTY = settings(max_examples=200, deadline=None)
MODELS = ("A100", "T4", "V100")


@st.composite
def shapes(draw):
    accelerators = draw(st.integers(min_value=0, max_value=8))
    return NodeShape(
        cpu_milli=draw(st.integers(min_value=0, max_value=64)) * 1000,
        memory_mib=draw(st.integers(min_value=0, max_value=64)) * 4096,
        accelerators=accelerators,
        accelerator_model=draw(st.sampled_from(MODELS)) if accelerators else None,
    )


@st.composite
def node_states(draw):
    shape = draw(shapes())
    return NodeState(
        shape,
        draw(st.integers(min_value=0, max_value=shape.cpu_milli)),
        draw(st.integers(min_value=0, max_value=shape.memory_mib)),
        draw(
            st.lists(
                st.sampled_from([0, 50, 190, 300, 500, 530, 810, 1000]),
                min_size=shape.accelerators,
                max_size=shape.accelerators,
            )
        ),
    )


@st.composite
def demands(draw):
    kind = draw(st.sampled_from(["cpu", "share", "whole"]))
    allowed = frozenset(draw(st.lists(st.sampled_from(MODELS), max_size=2))) if kind != "cpu" else frozenset()
    return SliceDemand(
        cpu_milli=draw(st.integers(min_value=0, max_value=24)) * 1000,
        memory_mib=draw(st.integers(min_value=0, max_value=24)) * 4096,
        accelerators=draw(st.integers(min_value=1, max_value=8)) if kind == "whole" else 0,
        accelerator_milli=draw(st.sampled_from([50, 190, 250, 470, 500, 810])) if kind == "share" else 0,
        allowed_models=allowed,
    )


@st.composite
def mixes(draw):
    chosen = draw(st.lists(demands(), min_size=1, max_size=6))
    weights = draw(st.lists(st.integers(min_value=1, max_value=9), min_size=len(chosen), max_size=len(chosen)))
    total = sum(weights)
    return WorkloadMix(tuple((d, w / total) for d, w in zip(chosen, weights, strict=True)))


clusters = st.lists(node_states(), min_size=1, max_size=6)


def snapshot(node: NodeState) -> tuple:
    return (node.free_cpu_milli, node.free_memory_mib, tuple(node.free_milli))


def within_shape(node: NodeState) -> bool:
    shape = node.shape
    return (
        0 <= node.free_cpu_milli <= shape.cpu_milli
        and 0 <= node.free_memory_mib <= shape.memory_mib
        and len(node.free_milli) == shape.accelerators
        and all(0 <= f <= WHOLE_DEVICE_MILLI for f in node.free_milli)
    )


def objective(node: NodeState, mix: WorkloadMix, weighted: WorkloadMix) -> float:
    """What the default policy minimises the growth of."""
    return fragmentation(node, weighted) + STRANDING_WEIGHT * stranding(node, mix)


def every_placement(nodes, demand):
    """All placements of the demand that fit, with whole devices taken lowest index first."""
    for i, node in enumerate(nodes):
        if not node.fits(demand):
            continue
        if demand.accelerator_milli:
            for d, f in enumerate(node.free_milli):
                if f >= demand.accelerator_milli:
                    yield Placement(i, (d,), demand.accelerator_milli)
        elif demand.accelerators:
            whole = [d for d, f in enumerate(node.free_milli) if f == WHOLE_DEVICE_MILLI]
            yield Placement(i, tuple(whole[: demand.accelerators]), WHOLE_DEVICE_MILLI)
        else:
            yield Placement(i, (), 0)


def growth(nodes, placement, demand, mix) -> float:
    weighted = scarcity_weighted(mix, [node.shape for node in nodes])
    node = nodes[placement.node]
    after = node.copy()
    after.allocate(placement, demand)
    return objective(after, mix, weighted) - objective(node, mix, weighted)


# -- NodeState: no overbooking ---------------------------------------------------------------------------


@PROPERTY
@given(
    node=node_states(),
    attempts=st.lists(
        st.tuples(demands(), st.lists(st.integers(min_value=0, max_value=8), max_size=8, unique=True)),
        max_size=12,
    ),
)
def test_allocate_never_overbooks_and_release_restores_exactly(node, attempts):
    start = snapshot(node)
    taken = []
    for demand, devices in attempts:
        milli = demand.accelerator_milli or (WHOLE_DEVICE_MILLI if demand.accelerators else 0)
        placement = Placement(0, tuple(devices) if milli else (), milli)
        before = snapshot(node)
        try:
            node.allocate(placement, demand)
        except ValueError:
            assert snapshot(node) == before  # a refused allocation changes nothing
        else:
            taken.append((placement, demand))
        assert within_shape(node)
    for placement, demand in reversed(taken):
        node.release(placement, demand)
        assert within_shape(node)
    assert snapshot(node) == start


@PROPERTY
@given(node=node_states(), demand=demands())
def test_allocate_accepts_exactly_what_fits(node, demand):
    options = list(every_placement([node], demand))
    assert bool(options) == node.fits(demand)
    for placement in options:
        trial = node.copy()
        trial.allocate(placement, demand)
        assert within_shape(trial)


def test_release_of_capacity_never_allocated_is_refused():
    node = NodeState.empty(NodeShape(8000, 16384, 2, "T4"))
    demand = SliceDemand(1000, 1024, accelerator_milli=300)
    with pytest.raises(ValueError, match="exceed"):
        node.release(Placement(0, (0,), 300), demand)
    assert node == NodeState.empty(node.shape)


def test_allocate_refuses_a_model_the_demand_does_not_allow():
    node = NodeState.empty(NodeShape(8000, 16384, 2, "T4"))
    demand = SliceDemand(1000, 1024, accelerators=1, allowed_models=frozenset({"A100"}))
    assert not node.fits(demand)
    with pytest.raises(ValueError, match="not allowed"):
        node.allocate(Placement(0, (0,), WHOLE_DEVICE_MILLI), demand)


def test_demand_rejects_a_whole_device_written_as_a_share():
    with pytest.raises(ValueError, match="whole devices"):
        SliceDemand(1000, 1024, accelerator_milli=1000)
    with pytest.raises(ValueError, match="not both"):
        SliceDemand(1000, 1024, accelerators=1, accelerator_milli=500)


# -- place / place_gang: hard constraints under every policy ---------------------------------------------


@PROPERTY
@given(
    nodes=clusters,
    demand=demands(),
    mix=st.none() | mixes(),
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 1000),
)
def test_place_returns_a_fitting_placement_or_none_only_when_nothing_fits(nodes, demand, mix, policy, seed):
    before = [snapshot(node) for node in nodes]
    placement = place(nodes, demand, policy=policy, mix=mix, rng=random.Random(seed))
    assert [snapshot(node) for node in nodes] == before  # place() does not mutate
    if placement is None:
        assert not any(node.fits(demand) for node in nodes)
        return
    node = nodes[placement.node]
    assert node.fits(demand)
    assert demand.allows(node.shape.accelerator_model)
    trial = node.copy()
    trial.allocate(placement, demand)  # raises if it did not fit
    assert within_shape(trial)


@PROPERTY
@given(
    nodes=clusters,
    demand=demands(),
    count=st.integers(min_value=1, max_value=4),
    mix=st.none() | mixes(),
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 1000),
)
def test_place_gang_returns_count_distinct_fitting_nodes_or_none(nodes, demand, count, mix, policy, seed):
    gang = place_gang(nodes, demand, count, policy=policy, mix=mix, rng=random.Random(seed))
    fitting = sum(node.fits(demand) for node in nodes)
    if gang is None:
        assert fitting < count
        return
    assert len(gang) == count
    assert len({p.node for p in gang}) == count
    for placement in gang:
        trial = nodes[placement.node].copy()
        trial.allocate(placement, demand)


@PROPERTY
@given(nodes=clusters, demand=demands(), mix=mixes())
def test_default_policy_takes_the_smallest_growth_of_weighted_fragmentation_and_stranding(nodes, demand, mix):
    placement = place(nodes, demand, mix=mix)
    options = list(every_placement(nodes, demand))
    if not options:
        assert placement is None
        return
    chosen = growth(nodes, placement, demand, mix)
    assert chosen <= min(growth(nodes, option, demand, mix) for option in options) + 1e-6


@PROPERTY
@given(nodes=clusters, mix=mixes())
def test_cluster_fragmentation_matches_the_definition(nodes, mix):
    vectorised = Cluster(nodes).fragmentation(mix)
    assert vectorised.tolist() == pytest.approx([fragmentation(node, mix) for node in nodes], abs=1e-6)


@PROPERTY
@given(
    nodes=clusters,
    pool=st.lists(demands(), min_size=1, max_size=3),
    steps=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(POLICIES)), max_size=12),
    mix=mixes(),
)
def test_a_cluster_answers_like_place_on_the_same_nodes_after_every_change(nodes, pool, steps, mix):
    cluster = Cluster([node.copy() for node in nodes])
    for index, policy in steps:
        demand = pool[index % len(pool)]  # the same demands come back, so cached scores are reused
        if policy == "random":
            continue  # same policy, different random draws
        expected = place([node.copy() for node in cluster.nodes], demand, policy=policy, mix=mix)
        placement = cluster.place(demand, policy=policy, mix=mix)
        assert placement == expected
        if placement is not None:
            cluster.allocate(placement, demand)
            assert all(within_shape(node) for node in cluster.nodes)


def test_unknown_policy_is_refused():
    nodes = [NodeState.empty(NodeShape(8000, 16384, 1, "T4"))]
    with pytest.raises(ValueError, match="unknown policy"):
        place(nodes, SliceDemand(1000, 1024), policy="worst-fit")


# -- the default policy avoids stranding -----------------------------------------------------------------

EIGHT_GPU = SliceDemand(64000, 262144, accelerators=8)
HALF_GPU = SliceDemand(4000, 16384, accelerator_milli=500)


def test_half_gpu_goes_to_an_already_shared_gpu_not_to_a_whole_free_node():
    shape = NodeShape(96000, 393216, 8, "G2")
    whole_free = NodeState.empty(shape)
    shared = NodeState(shape, 80000, 300000, [500, 0, 0, 0, 0, 0, 0, 0])
    nodes = [whole_free, shared]
    mix = WorkloadMix(((EIGHT_GPU, 0.5), (HALF_GPU, 0.5)))

    placement = place(nodes, HALF_GPU, mix=mix)

    assert placement == Placement(1, (0,), 500)
    nodes[1].allocate(placement, HALF_GPU)
    assert place(nodes, EIGHT_GPU, mix=mix) == Placement(0, tuple(range(8)), WHOLE_DEVICE_MILLI)
    # first fit breaks the free node, and the later 8-GPU task no longer fits anywhere
    naive = [whole_free.copy(), NodeState(shape, 80000, 300000, [500, 0, 0, 0, 0, 0, 0, 0])]
    naive[0].allocate(place(naive, HALF_GPU, policy="first-fit"), HALF_GPU)
    assert place(naive, EIGHT_GPU, mix=mix) is None


def test_slice_goes_on_the_device_it_fills_rather_than_a_fresh_one():
    node = NodeState(NodeShape(32000, 131072, 4, "V100"), 32000, 131072, [1000, 1000, 190, 530])
    mix = WorkloadMix(
        ((SliceDemand(4000, 8192, accelerator_milli=470), 0.5), (SliceDemand(8000, 32768, accelerators=1), 0.5))
    )

    placement = place([node], SliceDemand(4000, 8192, accelerator_milli=470), mix=mix)

    assert placement == Placement(0, (3,), 470)  # 530 -> 60, both whole devices stay whole


def test_cpu_hungry_task_goes_where_cpu_is_plentiful_and_a_light_one_where_it_is_short():
    lean = NodeState.empty(NodeShape(96000, 393216, 8, "G2"))  # 12 cores per device
    rich = NodeState.empty(NodeShape(160000, 393216, 8, "G2"))  # 20 cores per device
    light = SliceDemand(3000, 8192, accelerators=1)
    hungry = SliceDemand(24000, 8192, accelerators=1)
    mix = WorkloadMix(((light, 0.5), (hungry, 0.5)))  # 13.5 cores per device on average

    assert place([lean, rich], hungry, mix=mix).node == 1
    assert place([rich, lean], hungry, mix=mix).node == 0
    assert place([lean, rich], light, mix=mix).node == 0
    # best fit looks at what is left, not at what the node will lack: it squeezes the lean node
    assert place([lean, rich], hungry, policy="best-fit").node == 0


def test_the_only_nodes_a_big_task_fits_are_kept_for_it():
    large = NodeShape(128000, 786432, 8, "G3")
    common = NodeShape(96000, 393216, 8, "G2")
    big = SliceDemand(120000, 737280, accelerators=8)  # only the large node has 120 cores
    four = SliceDemand(60200, 320512, accelerators=4)  # fits both, and strands memory on the common one
    one = SliceDemand(12000, 49152, accelerators=1)
    mix = WorkloadMix(((big, 0.1), (four, 0.1), (one, 0.8)))
    nodes = [NodeState.empty(large), NodeState.empty(common), NodeState.empty(common)]

    placement = place(nodes, four, mix=mix)

    assert placement.node != 0
    nodes[placement.node].allocate(placement, four)
    assert place(nodes, big, mix=mix).node == 0
    # the big task can use a third of the capacity, so it weighs (3 / 1)^2 = 9 times its share
    weighted = dict(scarcity_weighted(mix, [n.shape for n in nodes]).demands)
    assert weighted[big] / weighted[one] == pytest.approx(9 * 0.1 / 0.8)
    assert weighted[four] / weighted[one] == pytest.approx(0.1 / 0.8)


def test_cpu_only_task_stays_off_accelerator_nodes_that_need_their_cpu():
    gpu_node = NodeState.empty(NodeShape(32000, 131072, 4, "V100"))
    cpu_node = NodeState.empty(NodeShape(32000, 131072, 0, None))
    one_gpu = SliceDemand(8000, 16384, accelerators=1)
    batch = SliceDemand(16000, 32768)
    mix = WorkloadMix(((one_gpu, 0.7), (batch, 0.3)))

    assert place([gpu_node, cpu_node], batch, mix=mix).node == 1


def test_default_without_a_mix_is_best_fit():
    shape = NodeShape(32000, 131072, 4, "T4")
    nodes = [NodeState.empty(shape), NodeState(shape, 16000, 65536, [1000, 1000, 0, 0])]
    demand = SliceDemand(4000, 8192, accelerators=1)
    assert place(nodes, demand) == place(nodes, demand, policy="best-fit") == Placement(1, (0,), 1000)


def test_random_policy_is_reproducible_with_a_seeded_rng():
    nodes = [NodeState.empty(NodeShape(32000, 131072, 4, "T4")) for _ in range(20)]
    demand = SliceDemand(1000, 1024, accelerator_milli=250)
    first = [place(nodes, demand, policy="random", rng=random.Random(7)) for _ in range(3)]
    again = [place(nodes, demand, policy="random", rng=random.Random(7)) for _ in range(3)]
    assert first == again
    spread = {place(nodes, demand, policy="random", rng=random.Random(seed)).node for seed in range(20)}
    assert len(spread) > 1


def test_mix_from_demands_counts_frequencies():
    a, b = SliceDemand(1000, 1024), SliceDemand(2000, 2048, accelerators=1)
    mix = WorkloadMix.from_demands([a, b, b, b])
    assert dict(mix.demands) == {a: 0.25, b: 0.75}
    with pytest.raises(ValueError, match="sum to 1"):
        WorkloadMix(((a, 0.5),))


def test_fragmentation_counts_what_the_mix_cannot_use():
    node = NodeState(NodeShape(16000, 65536, 2, "T4"), 16000, 65536, [1000, 190])
    whole = SliceDemand(8000, 8192, accelerators=1)
    slice_ = SliceDemand(1000, 1024, accelerator_milli=250)
    mix = WorkloadMix(((whole, 0.5), (slice_, 0.5)))
    # the 190 left on device 1 is too small for both; nothing else is stranded
    assert fragmentation(node, mix) == pytest.approx(190)
    starved = NodeState(node.shape, 500, 65536, [1000, 190])
    assert fragmentation(starved, mix) == pytest.approx(1190)  # too little CPU for either: all of it


# -- the replay on a sample of the real trace ------------------------------------------------------------

TRACE = Path("/work/shared/data/alibaba-gpu-v2023")


@pytest.fixture(scope="module")
def trace_sample():
    replay = pytest.importorskip("bench.trace_replay")
    if not (TRACE / "openb_node_list_all_node.csv").exists():
        pytest.skip("the Alibaba trace is not on this machine")
    shapes = replay.node_shapes(replay.load_pools(TRACE / "openb_node_list_all_node.csv"))[::8]
    tasks = replay.load_tasks(TRACE / "openb_pod_list_default.csv")
    return replay, shapes, tasks


def test_pod_rows_become_demands_with_their_allowed_models(tmp_path):
    replay = pytest.importorskip("bench.trace_replay")
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "p0,12000,16384,1,1000,\n"
        "p1,6000,12288,1,460,V100M16|V100M32\n"
        "p2,88000,327680,8,1000,G2\n"
        "p3,32000,49152,0,0,\n"
    )
    tasks = replay.load_tasks(pods)
    assert [t.demand for t in tasks] == [
        SliceDemand(12000, 16384, accelerators=1),
        SliceDemand(6000, 12288, accelerator_milli=460, allowed_models=frozenset({"V100M16", "V100M32"})),
        SliceDemand(88000, 327680, accelerators=8, allowed_models=frozenset({"G2"})),
        SliceDemand(32000, 49152),
    ]
    assert tasks[0].duration is None  # no time columns in this file
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(
        "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,262144,0,\nn1,96000,393216,8,G2\nn2,96000,393216,8,G2\n"
    )
    pools = replay.load_pools(nodes)
    assert [(p.shape, len(p.nodes)) for p in pools] == [
        (NodeShape(32000, 262144, 0, None), 1),
        (NodeShape(96000, 393216, 8, "G2"), 2),
    ]
    run = replay.replay_arrivals(replay.node_shapes(pools), tasks, seed=3)
    assert run.capacity_milli == 16000
    assert run.requested_milli >= run.capacity_milli >= run.allocated_milli
    with pytest.raises(ValueError, match="ask for them"):
        replay.replay_arrivals(replay.node_shapes(pools), tasks[3:])  # CPU-only tasks would never reach 100%


def test_replay_of_a_trace_sample_beats_random(trace_sample):
    replay, shapes, tasks = trace_sample
    results = replay.experiment(shapes, tasks, seeds=2, policies=("default", "random"))
    default = [run.unallocated_pct for run in results["default"]]
    scattered = [run.unallocated_pct for run in results["random"]]
    assert all(0 <= value <= 100 for value in default + scattered)
    assert sum(default) <= sum(scattered)
    for run in results["default"]:
        assert run.requested_milli >= run.capacity_milli
        assert run.allocated_milli <= run.capacity_milli


def test_timed_replay_of_a_trace_sample(trace_sample):
    replay, shapes, tasks = trace_sample
    run = replay.replay_timed(shapes[::4], tasks[::8], copies=4)
    assert run.tasks == 4 * len(tasks[::8])
    assert 0 <= run.never_placed <= run.waited <= run.tasks
    assert run.median_wait_s >= 0
    assert all(0 <= utilisation <= 100 for _, utilisation in run.samples)
    assert run.peak_utilisation_pct > 0
