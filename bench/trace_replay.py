"""Replay the Alibaba GPU cluster trace (cluster-trace-gpu-v2023) through the packing engine.

Arrival replay (the experiment of Weng et al., USENIX ATC 2023): tasks arrive
one at a time, drawn with replacement from the pod file with a seed; each is
placed on arrival or dropped, nothing leaves, until the accelerator
thousandths requested reach the cluster's capacity. Figure of merit: the
share of accelerator capacity left unallocated at that point
(100% − allocated / capacity). The chosen policy, best fit and random all run
through ``scheduler.domain.packing.Cluster`` (the engine behind
``packing.place``) with the same arrival sequences.

Time replay (``--timed``): tasks arrive at their creation time and leave when
done (their trace duration after they start); a task that does not fit waits
in a queue and is retried, oldest first, whenever capacity is released.

    .venv/bin/python -m bench.trace_replay
    .venv/bin/python -m bench.trace_replay --pods shared/data/.../openb_pod_list_multigpu50.csv
    .venv/bin/python -m bench.trace_replay --timed --plot var/bench/utilisation.png

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scheduler.domain.packing import (
    WHOLE_DEVICE_MILLI,
    Cluster,
    NodeShape,
    NodeState,
    Placement,
    SliceDemand,
    WorkloadMix,
)

DATA = Path("/work/shared/data/alibaba-gpu-v2023")
DEFAULT_NODES = DATA / "openb_node_list_all_node.csv"
DEFAULT_PODS = DATA / "openb_pod_list_default.csv"
BASELINES = ("best-fit", "random")


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    demand: SliceDemand
    created: int | None = None  # seconds, when the file has creation/deletion times
    deleted: int | None = None

    @property
    def duration(self) -> int | None:
        if self.created is None or self.deleted is None:
            return None
        return max(0, self.deleted - self.created)


@dataclass(frozen=True, slots=True)
class Pool:
    """Identical nodes of the trace grouped as one resource pool of the provider (capacity stays per node)."""

    name: str
    shape: NodeShape
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArrivalRun:
    policy: str
    seed: int
    arrivals: int
    placed: int
    requested_milli: int
    allocated_milli: int
    capacity_milli: int

    @property
    def unallocated_pct(self) -> float:
        return 100.0 * (1.0 - self.allocated_milli / self.capacity_milli)


# -- loading -----------------------------------------------------------------------------------------


def load_pools(path: Path | str = DEFAULT_NODES) -> list[Pool]:
    """The node list as pools of identical nodes, in file order of their first node."""
    groups: dict[NodeShape, list[str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            accelerators = int(row.get("gpu") or 0)
            model = (row.get("model") or "").strip() or None
            model = model if accelerators else None
            shape = NodeShape(int(row["cpu_milli"]), int(row["memory_mib"]), accelerators, model)
            groups.setdefault(shape, []).append(row["sn"])
    pools = []
    for shape, names in groups.items():
        label = f"{shape.accelerators}x{shape.accelerator_model}" if shape.accelerators else "cpu"
        pools.append(Pool(f"{label}-{shape.cpu_milli // 1000}c-{shape.memory_mib // 1024}g", shape, tuple(names)))
    return pools


def node_shapes(pools: Sequence[Pool]) -> list[NodeShape]:
    return [pool.shape for pool in pools for _ in pool.nodes]


def load_tasks(path: Path | str = DEFAULT_PODS) -> list[Task]:
    """Pod rows as tasks. num_gpu 0: CPU only; num_gpu 1 with gpu_milli < 1000: a shared slice;
    otherwise num_gpu whole devices. gpu_spec ("A|B", empty = any) and the time columns are optional."""
    tasks = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            count = int(row.get("num_gpu") or 0)
            milli = int(row.get("gpu_milli") or 0)
            spec = (row.get("gpu_spec") or "").strip()
            allowed = frozenset(part.strip() for part in spec.split("|") if part.strip())
            if count == 0 or milli == 0:
                accelerators, share = 0, 0
            elif count == 1 and milli < WHOLE_DEVICE_MILLI:
                accelerators, share = 0, milli
            else:
                accelerators, share = count, 0
            demand = SliceDemand(
                int(row["cpu_milli"]),
                int(row["memory_mib"]),
                accelerators=accelerators,
                accelerator_milli=share,
                allowed_models=allowed if accelerators or share else frozenset(),
            )
            created = row.get("creation_time") or None
            deleted = row.get("deletion_time") or None
            tasks.append(
                Task(row["name"], demand, int(created) if created else None, int(deleted) if deleted else None)
            )
    return tasks


def workload_mix(tasks: Sequence[Task]) -> WorkloadMix:
    return WorkloadMix.from_demands(task.demand for task in tasks)


def fresh_cluster(shapes: Sequence[NodeShape]) -> Cluster:
    return Cluster([NodeState.empty(shape) for shape in shapes])


def capacity_milli(shapes: Sequence[NodeShape]) -> int:
    return sum(shape.accelerators for shape in shapes) * WHOLE_DEVICE_MILLI


# -- the arrival experiment ----------------------------------------------------------------------------


def replay_arrivals(
    shapes: Sequence[NodeShape],
    tasks: Sequence[Task],
    *,
    policy: str = "default",
    seed: int = 0,
    mix: WorkloadMix | None = None,
    load: float = 1.0,
) -> ArrivalRun:
    """Draw tasks with replacement until the requested accelerator thousandths reach ``load`` × capacity."""
    cluster = fresh_cluster(shapes)
    capacity = capacity_milli(shapes)
    if capacity == 0 or not any(task.demand.accelerator_thousandths for task in tasks):
        raise ValueError("the arrival replay needs accelerators in the cluster and tasks that ask for them")
    mix = mix if mix is not None else workload_mix(tasks)
    draw = random.Random(seed)
    spread = random.Random(seed + 1_000_003)
    requested = allocated = arrivals = placed = 0
    while requested < load * capacity:
        demand = tasks[draw.randrange(len(tasks))].demand
        arrivals += 1
        requested += demand.accelerator_thousandths
        placement = cluster.place(demand, policy=policy, mix=mix, rng=spread)
        if placement is not None:
            cluster.allocate(placement, demand)
            placed += 1
            allocated += demand.accelerator_thousandths
    return ArrivalRun(policy, seed, arrivals, placed, requested, allocated, capacity)


def experiment(
    shapes: Sequence[NodeShape],
    tasks: Sequence[Task],
    *,
    seeds: int = 10,
    policies: Sequence[str] = ("default", *BASELINES),
) -> dict[str, list[ArrivalRun]]:
    mix = workload_mix(tasks)
    return {
        policy: [replay_arrivals(shapes, tasks, policy=policy, seed=seed, mix=mix) for seed in range(seeds)]
        for policy in policies
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# -- the timed replay --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimedRun:
    policy: str
    tasks: int
    never_placed: int
    waited: int  # tasks that did not start on arrival (placed later, or never)
    median_wait_s: float  # over the tasks that started
    p95_wait_s: float
    mean_utilisation_pct: float  # over the arrival window (first to last creation time)
    samples: tuple[tuple[int, float], ...]  # (time s, accelerator capacity allocated %)

    @property
    def never_placed_pct(self) -> float:
        return 100.0 * self.never_placed / self.tasks if self.tasks else 0.0

    @property
    def waited_pct(self) -> float:
        return 100.0 * self.waited / self.tasks if self.tasks else 0.0

    @property
    def peak_utilisation_pct(self) -> float:
        return max((u for _, u in self.samples), default=0.0)


def replay_timed(
    shapes: Sequence[NodeShape],
    tasks: Sequence[Task],
    *,
    policy: str = "default",
    mix: WorkloadMix | None = None,
    copies: int = 1,
    seed: int = 0,
) -> TimedRun:
    """Tasks arrive at their creation time and, once started, hold their capacity for their trace duration.

    A task that fits nowhere waits; when capacity is released on a node, the waiting tasks that now fit
    there start, oldest first (a younger task may start before an older one that still does not fit).
    ``copies`` replays every pod that many times (the trace alone keeps the cluster nearly idle).
    """
    timed = sorted(
        ((t.created, i, t) for i, t in enumerate(tasks) if t.duration is not None for _ in range(copies)),
        key=lambda item: (item[0], item[1]),
    )
    if not timed:
        raise ValueError("the pod file has no creation_time/deletion_time columns")
    cluster = fresh_cluster(shapes)
    capacity = capacity_milli(shapes)
    mix = mix if mix is not None else workload_mix(tasks)
    spread = random.Random(seed)
    departures: list[tuple[int, int, Placement, SliceDemand]] = []
    waiting: list[Task] = []
    waits: list[int] = []
    samples: list[tuple[int, float]] = []
    allocated = area = 0.0
    first, last = timed[0][0] or 0, timed[-1][0] or 0
    clock = first
    started = 0

    def advance(now: int) -> None:
        nonlocal area, clock
        if now > clock:
            window = max(0, min(now, last) - min(clock, last))
            area += window * allocated / capacity
            clock = now
        samples.append((now, 100.0 * allocated / capacity))

    def start(task: Task, now: int, placement: Placement | None) -> bool:
        nonlocal allocated, started
        if placement is None:
            return False
        cluster.allocate(placement, task.demand)
        allocated += task.demand.accelerator_thousandths
        waits.append(now - (task.created or 0))
        started += 1
        heapq.heappush(departures, (now + (task.duration or 0), started, placement, task.demand))
        return True

    def depart(until: int) -> None:
        nonlocal allocated
        while departures and departures[0][0] <= until:
            now, _, placement, demand = heapq.heappop(departures)
            advance(now)
            cluster.release(placement, demand)
            allocated -= demand.accelerator_thousandths
            if not waiting:
                continue
            # only this node gained capacity since the waiting tasks last failed to fit anywhere
            node = cluster.nodes[placement.node]
            still, stuck = [], set()
            for task in waiting:
                if task.demand in stuck or not node.fits(task.demand):
                    stuck.add(task.demand)
                    still.append(task)
                elif not start(task, now, cluster.place(task.demand, policy=policy, mix=mix, rng=spread)):
                    still.append(task)
            waiting[:] = still
            advance(now)

    for created, _, task in timed:
        depart(created)
        advance(created)
        if not start(task, created, cluster.place(task.demand, policy=policy, mix=mix, rng=spread)):
            waiting.append(task)
        advance(created)
    while waiting and departures:
        depart(departures[0][0])
    waits.sort()
    return TimedRun(
        policy=policy,
        tasks=len(timed),
        never_placed=len(waiting),
        waited=sum(1 for w in waits if w > 0) + len(waiting),
        median_wait_s=float(statistics.median(waits)) if waits else 0.0,
        p95_wait_s=float(waits[int(0.95 * (len(waits) - 1))]) if waits else 0.0,
        mean_utilisation_pct=100.0 * area / max(1, last - first),
        samples=tuple(samples),
    )


def plot_utilisation(runs: Sequence[TimedRun], path: Path | str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 4))
    start = min((run.samples[0][0] for run in runs if run.samples), default=0)
    for run in reversed(runs):  # the policy under test (first) drawn last, on top
        xs = [(t - start) / 86400 for t, _ in run.samples]
        ys = [u for _, u in run.samples]
        label = f"{run.policy} (mean {run.mean_utilisation_pct:.1f}%)"
        ax.step(xs, ys, where="post", linewidth=0.8, alpha=0.85, label=label)
    ax.set_xlabel("trace time (days)")
    ax.set_ylabel("accelerator capacity allocated (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default=str(DEFAULT_NODES), help="node list CSV (sn, cpu_milli, ...)")
    parser.add_argument("--pods", default=str(DEFAULT_PODS), help="pod list CSV (openb_pod_list_*.csv columns)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--policy", default="default", help="policy under test (default, best-fit, random, first-fit)")
    parser.add_argument("--timed", action="store_true", help="also replay with creation/deletion times")
    parser.add_argument("--copies", type=int, default=1, help="timed replay: replay every pod this many times")
    parser.add_argument("--node-stride", type=int, default=1, help="timed replay: keep every n-th node only")
    parser.add_argument("--plot", default="var/bench/utilisation.png", help="PNG for the timed replay")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    began_cpu = time.process_time()
    pools = load_pools(args.nodes)
    shapes = node_shapes(pools)
    tasks = load_tasks(args.pods)
    capacity = capacity_milli(shapes)
    kinds = Counter(
        "cpu-only"
        if t.demand.accelerator_thousandths == 0
        else "shared"
        if t.demand.shared
        else f"{t.demand.accelerators}-device"
        for t in tasks
    )
    print(f"cluster: {len(shapes)} nodes in {len(pools)} pools, {capacity // WHOLE_DEVICE_MILLI} accelerators")
    print(f"pods:    {len(tasks)} tasks from {args.pods}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    policies = [args.policy, *[b for b in BASELINES if b != args.policy]]
    results = experiment(shapes, tasks, seeds=args.seeds, policies=policies)
    print(f"\narrival replay, {args.seeds} seeds, until requests reach 100% of accelerator capacity")
    print(f"{'policy':<10} {'unallocated %':>14} {'std':>6} {'min':>6} {'max':>6} {'placed/arrived':>16}")
    summary = {}
    for policy, runs in results.items():
        values = [run.unallocated_pct for run in runs]
        mean, std = _mean_std(values)
        summary[policy] = (mean, std)
        placed = sum(run.placed for run in runs)
        arrived = sum(run.arrivals for run in runs)
        spread = f"{std:>6.2f} {min(values):>6.2f} {max(values):>6.2f}"
        print(f"{policy:<10} {mean:>14.2f} {spread} {placed:>8}/{arrived:<7}")
    seconds = time.perf_counter() - began
    cpu_seconds = time.process_time() - began_cpu
    print(
        f"\n{seconds:.1f} s for the arrival replay ({len(policies)} policies x {args.seeds} seeds, "
        f"{cpu_seconds:.1f} s of CPU)"
    )

    report = {
        "trace": Path(args.pods).name,
        "policy": args.policy,
        "seeds": args.seeds,
        "unallocated_pct_mean": round(summary[args.policy][0], 3),
        "unallocated_pct_std": round(summary[args.policy][1], 3),
        "bestfit_unallocated_pct_mean": round(summary["best-fit"][0], 3),
        "bestfit_unallocated_pct_std": round(summary["best-fit"][1], 3),
        "random_unallocated_pct_mean": round(summary["random"][0], 3),
        "random_unallocated_pct_std": round(summary["random"][1], 3),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
    }
    if args.timed:
        timed_began = time.perf_counter()
        timed_shapes = shapes[:: args.node_stride]
        mix = workload_mix(tasks)
        runs = [replay_timed(timed_shapes, tasks, policy=p, mix=mix, copies=args.copies) for p in policies]
        print(
            f"\ntimed replay: creation/deletion times, {args.copies} cop{'y' if args.copies == 1 else 'ies'} of each "
            f"pod, {len(timed_shapes)} nodes ({capacity_milli(timed_shapes) // WHOLE_DEVICE_MILLI} accelerators); "
            "waiting tasks start when capacity is released"
        )
        print(
            f"{'policy':<10} {'mean util %':>11} {'peak util %':>11} {'waited %':>9} {'median wait s':>13} "
            f"{'p95 wait s':>10} {'never placed %':>14}"
        )
        for run in runs:
            print(
                f"{run.policy:<10} {run.mean_utilisation_pct:>11.2f} {run.peak_utilisation_pct:>11.2f} "
                f"{run.waited_pct:>9.2f} {run.median_wait_s:>13.1f} {run.p95_wait_s:>10.1f} "
                f"{run.never_placed_pct:>14.2f}"
            )
        plot = plot_utilisation(runs, args.plot)
        print(f"utilisation over time: {plot}  ({time.perf_counter() - timed_began:.1f} s)")
        report["timed"] = {
            "copies": args.copies,
            "nodes": len(timed_shapes),
            **{
                run.policy: {
                    "mean_utilisation_pct": round(run.mean_utilisation_pct, 3),
                    "peak_utilisation_pct": round(run.peak_utilisation_pct, 3),
                    "waited_pct": round(run.waited_pct, 3),
                    "median_wait_s": run.median_wait_s,
                    "p95_wait_s": run.p95_wait_s,
                    "never_placed_pct": round(run.never_placed_pct, 3),
                }
                for run in runs
            },
        }
        report["plot"] = str(plot)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
