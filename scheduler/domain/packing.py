"""Per-node packing: which node, and which accelerators on it, a task goes to.

Capacity is tracked per node, as in the Alibaba GPU cluster trace the policy is
measured on: CPU in thousandths of a core, memory in MiB, and for every
accelerator its free thousandths (0..1000). A task asks for CPU, memory and
either whole accelerators or a share of one accelerator (1..999 thousandths),
optionally restricted to some accelerator models.

Policies (``place(..., policy=...)``):

* ``"default"`` — the scheduler's policy. For every node (and every device of
  it, for a shared slice) that fits, it measures how much the placement would
  grow two quantities, and takes the smallest growth of
  ``fragmentation + STRANDING_WEIGHT × stranding``:

  - ``fragmentation(node, mix)`` — the measure of Weng et al., "Beware of
    Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation
    Gradient Descent" (USENIX ATC 2023): the accelerator thousandths on the
    node that a task drawn from the expected workload mix could not use
    (no device with enough free share, too little CPU or memory, a model the
    task does not allow). The policy measures it against
    ``scarcity_weighted(mix, shapes)``: demands that few nodes of the cluster
    can host weigh more, so those nodes are kept for them;
  - ``stranding(node, mix)`` — the free accelerator share the node's free CPU
    or memory could not feed at the mix's average CPU and memory per
    accelerator thousandth. Fragmentation only sees CPU once it is already
    too short for some task; stranding steers CPU- and memory-hungry tasks
    to nodes that have CPU and memory to spare.

  Ties go to the fullest node (best fit), then the lowest index; within a
  node, to the device left with the least free share. Without a mix (or an
  empty one) the default policy is best fit. On the Alibaba trace
  (``bench/trace_replay.py``) it leaves about 4.1% of the GPU capacity
  unallocated where FGD alone leaves about 5.3% (the paper reports 4.77%).
* ``"best-fit"`` — the node left with the least free CPU and accelerator
  capacity (half weight each), the tightest device for a shared slice.
* ``"random"`` — a uniformly random node that fits (``rng=random.Random(seed)``).
* ``"first-fit"`` — the first node that fits, the first devices that fit.

Every policy only returns placements that fit; none mutates the nodes: the
caller calls ``NodeState.allocate`` (or ``Cluster.allocate``).

``Cluster`` keeps the same nodes indexed (numpy arrays and per-node cached
scores, refreshed only for nodes that changed) so that thousands of
placements on thousands of nodes stay fast; ``place`` and ``place_gang`` are
thin wrappers around it, so the scheduler and the trace replay run exactly the
same policy.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

WHOLE_DEVICE_MILLI = 1000
POLICIES = ("default", "best-fit", "random", "first-fit")

_INF = float("inf")
_TIE = 1e-6  # fragmentation deltas closer than this are equal


@dataclass(frozen=True, slots=True)
class NodeShape:
    cpu_milli: int  # total CPU of the node, thousandths of a core
    memory_mib: int
    accelerators: int  # whole devices on the node (0 = CPU-only)
    accelerator_model: str | None  # device catalogue code (or trace model name), None for CPU-only

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.accelerators < 0:
            raise ValueError("a node shape cannot have negative capacity")


@dataclass(frozen=True, slots=True)
class SliceDemand:
    """What a task (or one member of a gang) needs on ONE node.

    ``allowed_models`` only restricts demands that use accelerators: a
    CPU-only demand may run on any node with enough CPU and memory.
    """

    cpu_milli: int
    memory_mib: int
    accelerators: int = 0  # whole devices (>= 1) ...
    accelerator_milli: int = 0  # ... or a share of ONE device in thousandths (1..999); then accelerators == 0
    allowed_models: frozenset[str] = frozenset()  # empty = any model

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.accelerators < 0:
            raise ValueError("a demand cannot be negative")
        if not 0 <= self.accelerator_milli < WHOLE_DEVICE_MILLI:
            raise ValueError("a shared slice is 1..999 thousandths of one device; ask for whole devices otherwise")
        if self.accelerators and self.accelerator_milli:
            raise ValueError("a demand asks for whole devices or a share of one device, not both")
        if not isinstance(self.allowed_models, frozenset):
            raise TypeError("allowed_models must be a frozenset")

    @property
    def accelerator_thousandths(self) -> int:
        """Accelerator capacity asked for, in thousandths of one device."""
        return self.accelerators * WHOLE_DEVICE_MILLI + self.accelerator_milli

    @property
    def shared(self) -> bool:
        return self.accelerator_milli > 0

    def allows(self, model: str | None) -> bool:
        """Whether a node of this accelerator model may host the demand."""
        if self.accelerator_thousandths == 0 or not self.allowed_models:
            return True
        return model is not None and model in self.allowed_models


@dataclass(frozen=True, slots=True)
class Placement:
    node: int  # index into the node sequence given to place()
    devices: tuple[int, ...]  # accelerator indices used (whole devices, or the one shared device)
    accelerator_milli: int  # thousandths taken on each listed device (1000 for whole devices)


@dataclass(frozen=True, slots=True)
class WorkloadMix:
    """The distribution of demands the scheduler expects (for the fragmentation measure)."""

    demands: tuple[tuple[SliceDemand, float], ...]  # (demand, probability), probabilities sum to 1

    def __post_init__(self) -> None:
        if any(p < 0 for _, p in self.demands):
            raise ValueError("probabilities cannot be negative")
        if self.demands and abs(sum(p for _, p in self.demands) - 1.0) > 1e-6:
            raise ValueError("probabilities must sum to 1")

    @classmethod
    def from_demands(cls, demands: Iterable[SliceDemand]) -> WorkloadMix:
        """The empirical mix of observed demands (each distinct demand with its frequency)."""
        counts: dict[SliceDemand, int] = {}
        for demand in demands:
            counts[demand] = counts.get(demand, 0) + 1
        total = sum(counts.values())
        return cls(tuple((demand, n / total) for demand, n in counts.items()))


class NodeState:
    """Mutable free capacity of one node."""

    __slots__ = ("free_cpu_milli", "free_memory_mib", "free_milli", "shape")

    def __init__(self, shape: NodeShape, free_cpu_milli: int, free_memory_mib: int, free_milli: list[int]) -> None:
        if not 0 <= free_cpu_milli <= shape.cpu_milli or not 0 <= free_memory_mib <= shape.memory_mib:
            raise ValueError("free CPU and memory must lie between 0 and the node's shape")
        if len(free_milli) != shape.accelerators or any(not 0 <= f <= WHOLE_DEVICE_MILLI for f in free_milli):
            raise ValueError("one free share (0..1000) per accelerator of the node")
        self.shape = shape
        self.free_cpu_milli = free_cpu_milli
        self.free_memory_mib = free_memory_mib
        self.free_milli = list(free_milli)

    @classmethod
    def empty(cls, shape: NodeShape) -> NodeState:
        return cls._trusted(shape, shape.cpu_milli, shape.memory_mib, [WHOLE_DEVICE_MILLI] * shape.accelerators)

    def copy(self) -> NodeState:
        return NodeState._trusted(self.shape, self.free_cpu_milli, self.free_memory_mib, list(self.free_milli))

    @classmethod
    def many(
        cls,
        shape: NodeShape,
        free_cpu_milli: Sequence[int],
        free_memory_mib: Sequence[int],
        free_milli: Sequence[list[int]],
    ) -> list[NodeState]:
        """Nodes of one shape from columns of free capacity (one entry per node) that the caller derived from
        valid states (no checks: it is on the engine's hot path). The lists of ``free_milli`` are taken over."""
        trusted = cls._trusted
        return [
            trusted(shape, cpu, memory, free)
            for cpu, memory, free in zip(free_cpu_milli, free_memory_mib, free_milli, strict=True)
        ]

    def less(self, cpu_milli: int, memory_mib: int, used_milli: Sequence[int]) -> NodeState:
        """A new state: this free capacity less what is used (CPU, memory and each device's share; never below
        0). Always valid, so it skips the checks of the constructor (it is on the engine's hot path)."""
        return NodeState._trusted(
            self.shape,
            max(0, self.free_cpu_milli - cpu_milli),
            max(0, self.free_memory_mib - memory_mib),
            [max(0, f - u) for f, u in zip(self.free_milli, used_milli, strict=True)],
        )

    @classmethod
    def _trusted(cls, shape: NodeShape, free_cpu_milli: int, free_memory_mib: int, free_milli: list[int]) -> NodeState:
        """A state from values already known to be valid (a whole node, a copy): no checks, it is on every
        quote's and cycle's hot path."""
        state = cls.__new__(cls)
        state.shape = shape
        state.free_cpu_milli = free_cpu_milli
        state.free_memory_mib = free_memory_mib
        state.free_milli = free_milli
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeState):
            return NotImplemented
        return (self.shape, self.free_cpu_milli, self.free_memory_mib, self.free_milli) == (
            other.shape,
            other.free_cpu_milli,
            other.free_memory_mib,
            other.free_milli,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"NodeState({self.shape!r}, free_cpu_milli={self.free_cpu_milli}, "
            f"free_memory_mib={self.free_memory_mib}, free_milli={self.free_milli})"
        )

    @property
    def free_accelerator_milli(self) -> int:
        return sum(self.free_milli)

    def fits(self, demand: SliceDemand) -> bool:
        if demand.cpu_milli > self.free_cpu_milli or demand.memory_mib > self.free_memory_mib:
            return False
        if not demand.allows(self.shape.accelerator_model):
            return False
        if demand.accelerator_milli:
            return any(f >= demand.accelerator_milli for f in self.free_milli)
        if demand.accelerators:
            return sum(1 for f in self.free_milli if f == WHOLE_DEVICE_MILLI) >= demand.accelerators
        return True

    def _check_devices(self, placement: Placement, demand: SliceDemand) -> None:
        devices = placement.devices
        if len(set(devices)) != len(devices) or any(not 0 <= d < self.shape.accelerators for d in devices):
            raise ValueError(f"devices {devices} are not distinct devices of this node")
        if demand.accelerator_milli:
            if len(devices) != 1 or placement.accelerator_milli != demand.accelerator_milli:
                raise ValueError("a shared slice takes its share on exactly one device")
        elif demand.accelerators:
            if len(devices) != demand.accelerators or placement.accelerator_milli != WHOLE_DEVICE_MILLI:
                raise ValueError("whole devices are taken whole, as many as the demand asks")
        elif devices or placement.accelerator_milli:
            raise ValueError("a CPU-only demand takes no accelerator")

    def allocate(self, placement: Placement, demand: SliceDemand) -> None:
        """Take the demand's capacity; raises ValueError (and changes nothing) if it does not fit."""
        self._check_devices(placement, demand)
        if not demand.allows(self.shape.accelerator_model):
            raise ValueError(f"model {self.shape.accelerator_model} is not allowed by the demand")
        if demand.cpu_milli > self.free_cpu_milli or demand.memory_mib > self.free_memory_mib:
            raise ValueError("not enough free CPU or memory on the node")
        if any(self.free_milli[d] < placement.accelerator_milli for d in placement.devices):
            raise ValueError("not enough free share on the chosen devices")
        self.free_cpu_milli -= demand.cpu_milli
        self.free_memory_mib -= demand.memory_mib
        for d in placement.devices:
            self.free_milli[d] -= placement.accelerator_milli

    def release(self, placement: Placement, demand: SliceDemand) -> None:
        """Give back what ``allocate`` took; raises ValueError (and changes nothing) if more than the shape."""
        self._check_devices(placement, demand)
        if (
            self.free_cpu_milli + demand.cpu_milli > self.shape.cpu_milli
            or self.free_memory_mib + demand.memory_mib > self.shape.memory_mib
            or any(self.free_milli[d] + placement.accelerator_milli > WHOLE_DEVICE_MILLI for d in placement.devices)
        ):
            raise ValueError("release would exceed the node's shape: it was not allocated")
        self.free_cpu_milli += demand.cpu_milli
        self.free_memory_mib += demand.memory_mib
        for d in placement.devices:
            self.free_milli[d] += placement.accelerator_milli


def fragmentation(node: NodeState, mix: WorkloadMix) -> float:
    """Expected accelerator thousandths on the node that a task drawn from the mix cannot use.

    For each demand of the mix: if the node cannot host it at all (CPU, memory,
    model, or not enough free device share), every free thousandth is
    stranded for it; if it can, the free share of the devices too small for
    its per-device need is. CPU-only demands use no accelerator, so every free
    thousandth counts for them. Weighted by the demands' probabilities.
    """
    free_total = sum(node.free_milli)
    if free_total == 0:
        return 0.0
    stranded = 0.0
    for demand, probability in mix.demands:
        if demand.accelerator_thousandths == 0 or not node.fits(demand):
            stranded += probability * free_total
        else:
            per_device = demand.accelerator_milli or WHOLE_DEVICE_MILLI
            stranded += probability * sum(f for f in node.free_milli if f < per_device)
    return stranded


def stranding(node: NodeState, mix: WorkloadMix) -> float:
    """Free accelerator thousandths the node's free CPU or memory could not feed.

    Measured at the mix's average CPU and memory per accelerator thousandth
    (over the demands that use accelerators): when a node's free CPU is below
    that ratio times its free accelerator share, average tasks would leave the
    difference unused. 0 when the mix asks for no accelerators.
    """
    cpu_per_milli, memory_per_milli = _average_ratios(mix)
    if cpu_per_milli is None:
        return 0.0
    free_total = sum(node.free_milli)
    by_cpu = free_total - node.free_cpu_milli / cpu_per_milli if cpu_per_milli else 0.0
    by_memory = free_total - node.free_memory_mib / memory_per_milli if memory_per_milli else 0.0
    return max(0.0, by_cpu, by_memory)


def _average_ratios(mix: WorkloadMix) -> tuple[float | None, float]:
    """The mix's CPU milli and memory MiB per accelerator thousandth asked (None, 0 without accelerator demand)."""
    accelerator = sum(p * d.accelerator_thousandths for d, p in mix.demands)
    if accelerator <= 0:
        return None, 0.0
    cpu = sum(p * d.cpu_milli for d, p in mix.demands if d.accelerator_thousandths)
    memory = sum(p * d.memory_mib for d, p in mix.demands if d.accelerator_thousandths)
    return cpu / accelerator, memory / accelerator


def scarcity_weighted(mix: WorkloadMix, shapes: Iterable[NodeShape]) -> WorkloadMix:
    """The mix as the default policy weighs it on a cluster of these node shapes.

    Each accelerator demand's probability is multiplied by (C / H)^SCARCITY_EXPONENT, where C is the
    accelerator capacity of the cluster and H that of the nodes able to host the demand when empty, then
    the mix is normalised again. A demand only a few nodes can host (say 8 devices with 120 cores, which
    only the largest nodes have) then weighs on those nodes as much as the common demands weigh
    everywhere, so the policy keeps those nodes for it instead of spending them on tasks that fit anywhere.
    """
    counts: dict[NodeShape, int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    capacity = sum(shape.accelerators * n for shape, n in counts.items())
    weights = []
    for demand, probability in mix.demands:
        factor = 1.0
        if demand.accelerator_thousandths and capacity:
            hosts = sum(s.accelerators * n for s, n in counts.items() if NodeState.empty(s).fits(demand))
            if hosts:
                factor = (capacity / hosts) ** SCARCITY_EXPONENT
        weights.append((demand, probability * factor))
    total = sum(w for _, w in weights)
    if total <= 0:
        return mix
    return WorkloadMix(tuple((demand, w / total) for demand, w in weights))


# The default policy minimises the growth of fragmentation (against the scarcity-weighted mix) plus
# STRANDING_WEIGHT x stranding. Measured on the Alibaba trace (bench/trace_replay.py, 10-30 seeds per
# setting): without stranding (FGD alone) about one point more of the accelerator capacity is left
# unallocated; stranding weights from 1 to 16 do about equally well. Without scarcity weighting
# (exponent 0) the largest nodes go to tasks that fit anywhere, and on the multi-GPU trace up to a
# point more is lost on some seeds; exponents 2 and 3 do equally well, 1 is in between.
STRANDING_WEIGHT = 2.0
SCARCITY_EXPONENT = 2.0

_SCORES_KEPT = 1024  # cached (mix, demand) score vectors per cluster
_TABLE_CELLS = 2_000_000  # largest cumulative weight table kept per mix (else weights are summed per node)


class _MixTable:
    """A mix compiled against the accelerator models of a cluster, for vectorised fragmentation.

    fragmentation(node) = free_total - sum_g ok_g * usable_g * weight_g over the
    classes g of accelerator demand in the mix (a per-device share threshold, or
    k whole devices): usable_g is the free share on the node's devices with at
    least the class's per-device need, ok_g whether that is enough for one
    task of the class, weight_g the probability of the class's demands whose
    CPU, memory and model the node can host. (CPU-only demands count every
    free thousandth as stranded, so they only appear through free_total.)

    It also holds the mix's average CPU and memory per accelerator thousandth,
    for the stranding measure of the default policy.
    """

    def __init__(
        self, mix: WorkloadMix, models: Sequence[str | None], ratios: tuple[float | None, float] | None = None
    ) -> None:
        classes: dict[tuple[int, int], int] = {}
        rows: list[tuple[int, int, int, float, SliceDemand]] = []
        for demand, probability in mix.demands:
            if probability <= 0 or demand.accelerator_thousandths == 0:
                continue
            if demand.accelerator_milli:
                key = (demand.accelerator_milli, 1)
            else:
                key = (WHOLE_DEVICE_MILLI, WHOLE_DEVICE_MILLI * demand.accelerators)
            index = classes.setdefault(key, len(classes))
            rows.append((index, demand.cpu_milli, demand.memory_mib, probability, demand))
        thresholds = sorted({threshold for threshold, _ in classes})
        self.thresholds = np.array(thresholds or [WHOLE_DEVICE_MILLI], dtype=np.int64)
        ordered = sorted(classes, key=classes.__getitem__)
        self.class_threshold = np.array([thresholds.index(t) for t, _ in ordered], dtype=np.intp)
        self.class_need = np.array([need for _, need in ordered], dtype=np.int64)
        self.row_cpu = np.array([row[1] for row in rows], dtype=np.int64)
        self.row_memory = np.array([row[2] for row in rows], dtype=np.int64)
        self.row_allowed = np.array([[row[4].allows(model) for row in rows] for model in models], dtype=bool)
        self.row_class = np.zeros((len(rows), len(classes)))
        for r, row in enumerate(rows):
            self.row_class[r, row[0]] = row[3]
        # weight by (model, CPU rank, memory rank) as a 2-D cumulative table, when that stays small
        self.cpu_values = np.unique(self.row_cpu)
        self.memory_values = np.unique(self.row_memory)
        size = len(models) * (len(self.cpu_values) + 1) * (len(self.memory_values) + 1) * len(classes)
        self.cumulative: np.ndarray | None = None
        if size <= _TABLE_CELLS:
            table = np.zeros((len(models), len(self.cpu_values) + 1, len(self.memory_values) + 1, len(classes)))
            a = np.searchsorted(self.cpu_values, self.row_cpu) + 1
            b = np.searchsorted(self.memory_values, self.row_memory) + 1
            for model_id in range(len(models)):
                np.add.at(table[model_id], (a, b), self.row_class * self.row_allowed[model_id][:, None])
            self.cumulative = table.cumsum(axis=1).cumsum(axis=2)
        cpu_per_milli, self.memory_per_milli = ratios if ratios is not None else _average_ratios(mix)
        self.stranding = cpu_per_milli is not None
        self.cpu_per_milli = cpu_per_milli or 0.0

    def class_weights(self, model_ids: np.ndarray, cpu: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """(nodes, classes): probability of each class's demands the nodes' CPU, memory and model can host."""
        if self.cumulative is not None:
            a = np.searchsorted(self.cpu_values, cpu, side="right")
            b = np.searchsorted(self.memory_values, memory, side="right")
            return self.cumulative[model_ids, a, b]
        hosts = (self.row_cpu <= cpu[:, None]) & (self.row_memory <= memory[:, None]) & self.row_allowed[model_ids]
        return hosts @ self.row_class

    def usable(self, free: np.ndarray) -> np.ndarray:
        """Free share on devices at or above each threshold: (..., devices) -> (..., thresholds)."""
        expanded = free[..., None]
        return (expanded * (expanded >= self.thresholds)).sum(axis=-2)

    def term(self, usable: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
        """Expected usable free share: free_total minus this is the fragmentation."""
        per_class = usable[..., self.class_threshold]
        return (per_class * (per_class >= self.class_need) * class_weights).sum(axis=-1)

    def stranded(self, total: np.ndarray, cpu: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """Free accelerator share the node's free CPU or memory could not feed at the mix's average ratios."""
        stranded = np.zeros(total.shape)
        if self.cpu_per_milli:
            stranded = np.maximum(stranded, total - cpu / self.cpu_per_milli)
        if self.memory_per_milli:
            stranded = np.maximum(stranded, total - memory / self.memory_per_milli)
        return stranded


class _Scores:
    """Cached per-node answer of the default policy for one demand, valid while the node's version holds.

    ``device_free`` is, for a shared slice, the free share of the device to put it on (any device of the
    node with that free share is equivalent; the lowest index is used).
    """

    __slots__ = ("delta", "device_free", "secondary", "stamp")

    def __init__(self, n: int) -> None:
        self.stamp = np.full(n, -1, dtype=np.int64)
        self.delta = np.full(n, _INF)
        self.secondary = np.zeros(n)
        self.device_free = np.zeros(n, dtype=np.int64)


class _NodeTerms:
    """Per node, for one mix: usable share per threshold and the expected usable share (cached by version)."""

    __slots__ = ("stamp", "term", "usable")

    def __init__(self, n: int, thresholds: int) -> None:
        self.stamp = np.full(n, -1, dtype=np.int64)
        self.usable = np.zeros((n, thresholds), dtype=np.int64)
        self.term = np.zeros(n)


_Ratios = tuple[float | None, float]
_TABLES_BY_ID: dict[tuple[int, tuple[str | None, ...], _Ratios | None], tuple[WorkloadMix, _MixTable]] = {}
_TABLES: dict[tuple[WorkloadMix, tuple[str | None, ...], _Ratios | None], _MixTable] = {}
_TABLES_KEPT = 32


def _table_for(mix: WorkloadMix, models: tuple[str | None, ...], ratios: _Ratios | None = None) -> _MixTable:
    """The compiled mix: by identity first (cheap, and the cache keeps the object alive so its id stays
    unique), then by value, so that equal mixes built afresh by every caller share one table and its caches.
    ``ratios`` (CPU and memory per accelerator thousandth) default to the mix's own."""
    cached = _TABLES_BY_ID.get((id(mix), models, ratios))
    if cached is not None and cached[0] is mix:
        return cached[1]
    table = _TABLES.get((mix, models, ratios))
    if table is None:
        if len(_TABLES) >= _TABLES_KEPT:
            _TABLES.clear()
        table = _TABLES[(mix, models, ratios)] = _MixTable(mix, models, ratios)
    if len(_TABLES_BY_ID) >= _TABLES_KEPT:
        _TABLES_BY_ID.clear()
    _TABLES_BY_ID[(id(mix), models, ratios)] = (mix, table)
    return table


_WEIGHTED: dict[tuple[WorkloadMix, frozenset[tuple[NodeShape, int]]], WorkloadMix] = {}
_POLICY_BY_ID: dict[
    tuple[int, frozenset[tuple[NodeShape, int]], tuple[str | None, ...]], tuple[WorkloadMix, _MixTable]
] = {}


def _policy_table(
    mix: WorkloadMix, shapes: frozenset[tuple[NodeShape, int]], models: tuple[str | None, ...]
) -> _MixTable:
    """The table the default policy scores with: scarcity-weighted fragmentation, the mix's own ratios."""
    known = _POLICY_BY_ID.get((id(mix), shapes, models))
    if known is not None and known[0] is mix:
        return known[1]  # the same mix object: no hashing of its demands
    key = (mix, shapes)
    weighted = _WEIGHTED.get(key)
    if weighted is None:
        if len(_WEIGHTED) >= _TABLES_KEPT:
            _WEIGHTED.clear()
        weighted = _WEIGHTED[key] = scarcity_weighted(mix, (shape for shape, n in shapes for _ in range(n)))
    table = _table_for(weighted, models, _average_ratios(mix))
    if len(_POLICY_BY_ID) >= _TABLES_KEPT:
        _POLICY_BY_ID.clear()
    _POLICY_BY_ID[(id(mix), shapes, models)] = (mix, table)
    return table


class Cluster:
    """Nodes indexed for fast placement. Change them only through ``allocate`` and ``release``.

    Not safe to share between threads; each scheduler worker builds its own from the nodes it read.
    """

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        self.nodes = list(nodes)
        n = len(self.nodes)
        self._devices = max([node.shape.accelerators for node in self.nodes] + [1])
        models = sorted({node.shape.accelerator_model for node in self.nodes if node.shape.accelerator_model})
        self.models: tuple[str | None, ...] = (None, *models)
        model_index = {model: i for i, model in enumerate(self.models)}
        self._model = np.array([model_index[node.shape.accelerator_model] for node in self.nodes], dtype=np.intp)
        self._cpu = np.array([node.free_cpu_milli for node in self.nodes], dtype=np.int64)
        self._memory = np.array([node.free_memory_mib for node in self.nodes], dtype=np.int64)
        self._free = np.zeros((n, self._devices), dtype=np.int64)
        for i, node in enumerate(self.nodes):
            self._free[i, : node.shape.accelerators] = node.free_milli
        self._whole = (self._free == WHOLE_DEVICE_MILLI).sum(axis=1)
        self._largest = self._free.max(axis=1)
        self._total = self._free.sum(axis=1)
        self._version = np.zeros(n, dtype=np.int64)
        self._scores: dict[tuple[int, SliceDemand], tuple[_MixTable, _Scores]] = {}
        self._terms: dict[int, tuple[_MixTable, _NodeTerms]] = {}
        self._policy: dict[int, tuple[WorkloadMix, _MixTable]] = {}
        counts: dict[NodeShape, int] = {}
        for node in self.nodes:
            counts[node.shape] = counts.get(node.shape, 0) + 1
        self._shapes = frozenset(counts.items())
        self._cpu_scale = float(max([node.shape.cpu_milli for node in self.nodes] + [1]))
        self._accelerator_scale = float(self._devices * WHOLE_DEVICE_MILLI)

    def __len__(self) -> int:
        return len(self.nodes)

    # -- state changes -------------------------------------------------------------------------------

    def allocate(self, placement: Placement, demand: SliceDemand) -> None:
        """Take the placement's capacity on its node (ValueError, nothing changed, if it does not fit)."""
        self.nodes[placement.node].allocate(placement, demand)
        self._refresh(placement.node)

    def release(self, placement: Placement, demand: SliceDemand) -> None:
        self.nodes[placement.node].release(placement, demand)
        self._refresh(placement.node)

    def _refresh(self, i: int) -> None:
        node = self.nodes[i]
        free = node.free_milli
        self._cpu[i] = node.free_cpu_milli
        self._memory[i] = node.free_memory_mib
        self._free[i, : len(free)] = free
        self._whole[i] = free.count(WHOLE_DEVICE_MILLI)
        self._largest[i] = max(free, default=0)
        self._total[i] = sum(free)
        self._version[i] += 1

    # -- queries -------------------------------------------------------------------------------------

    def feasible(self, demand: SliceDemand) -> np.ndarray:
        """Boolean mask of the nodes that can host the demand now."""
        mask = (self._cpu >= demand.cpu_milli) & (self._memory >= demand.memory_mib)
        if demand.accelerator_milli:
            mask &= self._largest >= demand.accelerator_milli
        elif demand.accelerators:
            mask &= self._whole >= demand.accelerators
        if demand.accelerator_thousandths and demand.allowed_models:
            mask &= self._allowed(demand)[self._model]
        return mask

    def _allowed(self, demand: SliceDemand) -> np.ndarray:
        return np.array([model is not None and demand.allows(model) for model in self.models])

    def fragmentation(self, mix: WorkloadMix) -> np.ndarray:
        """Every node's ``fragmentation(node, mix)``, vectorised."""
        table = _table_for(mix, self.models)
        weights = table.class_weights(self._model, self._cpu, self._memory)
        return self._total - table.term(table.usable(self._free), weights)

    def place(
        self,
        demand: SliceDemand,
        *,
        policy: str = "default",
        mix: WorkloadMix | None = None,
        rng: random.Random | None = None,
    ) -> Placement | None:
        """The node and devices for the demand under the policy; None when no node fits. Does not mutate."""
        chosen = self.place_gang(demand, 1, policy=policy, mix=mix, rng=rng)
        return chosen[0] if chosen else None

    def place_gang(
        self,
        demand: SliceDemand,
        count: int,
        *,
        policy: str = "default",
        mix: WorkloadMix | None = None,
        rng: random.Random | None = None,
    ) -> tuple[Placement, ...] | None:
        """``count`` distinct nodes for the demand (best first), or None when fewer than ``count`` fit."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if count < 1:
            raise ValueError("a gang has at least one member")
        if policy == "default" and mix is not None and mix.demands:
            return self._place_default(demand, count, mix)
        feasible = np.flatnonzero(self.feasible(demand))
        if feasible.size < count:
            return None
        if policy == "random":
            rng = rng if rng is not None else random.Random()  # noqa: S311 - spreading load, not security
            picked = rng.sample(range(feasible.size), count)
            return tuple(self._placement(int(feasible[i]), demand, rng=rng) for i in picked)
        if policy == "first-fit":
            return tuple(self._placement(int(i), demand, tightest=False) for i in feasible[:count])
        # best-fit, and the default policy when there is no mix to measure fragmentation against
        leftover = self._leftover(feasible, demand)
        if count == 1:
            order = feasible[[int(np.argmin(leftover))]]
        else:
            order = feasible[np.argsort(leftover, kind="stable")[:count]]
        return tuple(self._placement(int(i), demand) for i in order)

    # -- policies ------------------------------------------------------------------------------------

    def _leftover(self, nodes: np.ndarray, demand: SliceDemand) -> np.ndarray:
        """Best-fit measure: CPU and accelerator capacity left after placing, normalised, half weight each."""
        cpu_left = (self._cpu[nodes] - demand.cpu_milli) / self._cpu_scale
        accelerator_left = (self._total[nodes] - demand.accelerator_thousandths) / self._accelerator_scale
        return 0.5 * cpu_left + 0.5 * accelerator_left

    def _placement(
        self, i: int, demand: SliceDemand, *, tightest: bool = True, rng: random.Random | None = None
    ) -> Placement:
        free = self.nodes[i].free_milli
        if demand.accelerator_milli:
            fitting = [d for d, f in enumerate(free) if f >= demand.accelerator_milli]
            if rng is not None:
                device = rng.choice(fitting)
            elif tightest:
                device = min(fitting, key=lambda d: (free[d], d))
            else:
                device = fitting[0]
            return Placement(i, (device,), demand.accelerator_milli)
        if demand.accelerators:
            whole = [d for d, f in enumerate(free) if f == WHOLE_DEVICE_MILLI]
            return Placement(i, tuple(whole[: demand.accelerators]), WHOLE_DEVICE_MILLI)
        return Placement(i, (), 0)

    def _place_default(self, demand: SliceDemand, count: int, mix: WorkloadMix) -> tuple[Placement, ...] | None:
        scores = self._default_scores(demand, self._policy_table(mix))
        delta = scores.delta
        if count == 1:
            best = float(delta.min()) if delta.size else _INF
            if best == _INF:
                return None
            tied = np.flatnonzero(delta <= best + _TIE)
            order = [int(tied[int(np.argmin(scores.secondary[tied]))])]
        else:
            candidates = np.flatnonzero(np.isfinite(delta))
            if candidates.size < count:
                return None
            steps = np.floor(delta[candidates] / _TIE)
            order = candidates[np.lexsort((candidates, scores.secondary[candidates], steps))[:count]].tolist()
        if demand.accelerator_milli:
            chosen = []
            for i in order:
                device = self.nodes[i].free_milli.index(int(scores.device_free[i]))
                chosen.append(Placement(i, (device,), demand.accelerator_milli))
            return tuple(chosen)
        return tuple(self._placement(i, demand) for i in order)

    def _policy_table(self, mix: WorkloadMix) -> _MixTable:
        cached = self._policy.get(id(mix))
        if cached is not None and cached[0] is mix:
            return cached[1]
        if len(self._policy) >= _TABLES_KEPT:
            self._policy.clear()
        table = _policy_table(mix, self._shapes, self.models)
        self._policy[id(mix)] = (mix, table)
        return table

    def _default_scores(self, demand: SliceDemand, table: _MixTable) -> _Scores:
        key = (id(table), demand)
        cached = self._scores.get(key)
        if cached is not None and cached[0] is table:
            scores = cached[1]
        else:
            if len(self._scores) >= _SCORES_KEPT:
                self._scores.clear()
            scores = _Scores(len(self.nodes))
            self._scores[key] = (table, scores)
        stale = np.flatnonzero(scores.stamp != self._version)
        if stale.size:
            scores.stamp[stale] = self._version[stale]
            fits = self.feasible_among(stale, demand)
            scores.delta[stale[~fits]] = _INF
            if fits.any():
                self._score_default(stale[fits], demand, table, scores)
        return scores

    def feasible_among(self, nodes: np.ndarray, demand: SliceDemand) -> np.ndarray:
        """``feasible(demand)`` restricted to the given node indices."""
        mask = (self._cpu[nodes] >= demand.cpu_milli) & (self._memory[nodes] >= demand.memory_mib)
        if demand.accelerator_milli:
            mask &= self._largest[nodes] >= demand.accelerator_milli
        elif demand.accelerators:
            mask &= self._whole[nodes] >= demand.accelerators
        if demand.accelerator_thousandths and demand.allowed_models:
            mask &= self._allowed(demand)[self._model[nodes]]
        return mask

    def _node_terms(self, table: _MixTable, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Usable share per threshold and expected usable share of the given nodes, from the per-mix cache."""
        cached = self._terms.get(id(table))
        if cached is None or cached[0] is not table:
            if len(self._terms) >= _TABLES_KEPT:
                self._terms.clear()
            cached = self._terms[id(table)] = (table, _NodeTerms(len(self.nodes), len(table.thresholds)))
        terms = cached[1]
        stale = nodes[terms.stamp[nodes] != self._version[nodes]]
        if stale.size:
            usable = table.usable(self._free[stale])
            weights = table.class_weights(self._model[stale], self._cpu[stale], self._memory[stale])
            terms.usable[stale] = usable
            terms.term[stale] = table.term(usable, weights)
            terms.stamp[stale] = self._version[stale]
        return terms.usable[nodes], terms.term[nodes]

    def _score_default(self, nodes: np.ndarray, demand: SliceDemand, table: _MixTable, scores: _Scores) -> None:
        """Growth of fragmentation plus weighted growth of stranding if the demand went to each of the nodes
        (all of which fit it); for a shared slice, also the free share of the best device of each node."""
        cpu = self._cpu[nodes]
        memory = self._memory[nodes]
        total = self._total[nodes]
        taken = demand.accelerator_thousandths
        cpu_after = cpu - demand.cpu_milli
        memory_after = memory - demand.memory_mib
        usable, before = self._node_terms(table, nodes)
        weights_after = table.class_weights(self._model[nodes], cpu_after, memory_after)
        # fragmentation = total - term, so its growth is (term before - term after) - taken
        base = before - taken
        if table.stranding:
            base += STRANDING_WEIGHT * (
                table.stranded(total - taken, cpu_after, memory_after) - table.stranded(total, cpu, memory)
            )
        scores.secondary[nodes] = 0.5 * cpu_after / self._cpu_scale + 0.5 * (total - taken) / self._accelerator_scale
        if not demand.accelerator_milli:
            if demand.accelerators:
                usable = usable - taken  # whole devices count at every threshold
            scores.delta[nodes] = base - table.term(usable, weights_after)
            return
        # a shared slice: one candidate per distinct free share (>= the slice) among each node's devices
        share = demand.accelerator_milli
        ordered = np.sort(self._free[nodes], axis=1)
        distinct = np.ones(ordered.shape, dtype=bool)
        distinct[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        rows, columns = np.nonzero(distinct & (ordered >= share))  # row-major: each node's candidates ascending
        free = ordered[rows, columns]
        left = free - share
        thresholds = table.thresholds
        change = left[:, None] * (left[:, None] >= thresholds) - free[:, None] * (free[:, None] >= thresholds)
        delta = base[rows] - table.term(usable[rows] + change, weights_after[rows])
        # every node has a candidate (it fits), so ``rows`` numbers the nodes 0..n-1 in order
        best = np.minimum.reduceat(delta, np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]))
        # within the node: the smallest growth, then the device left with the least free share (the first tied)
        tied = np.flatnonzero(delta <= best[rows] + _TIE)
        first = tied[np.r_[True, rows[tied][1:] != rows[tied][:-1]]]
        scores.delta[nodes] = best
        scores.device_free[nodes] = free[first]


def place(
    nodes: Sequence[NodeState],
    demand: SliceDemand,
    *,
    policy: str = "default",
    mix: WorkloadMix | None = None,
    rng: random.Random | None = None,
) -> Placement | None:
    """Choose the node and devices for the demand; None when nothing fits. Does not mutate."""
    return Cluster(nodes).place(demand, policy=policy, mix=mix, rng=rng)


def place_gang(
    nodes: Sequence[NodeState],
    demand: SliceDemand,
    count: int,
    *,
    policy: str = "default",
    mix: WorkloadMix | None = None,
    rng: random.Random | None = None,
) -> tuple[Placement, ...] | None:
    """``count`` distinct nodes for the demand, all or none (gang). Does not mutate."""
    return Cluster(nodes).place_gang(demand, count, policy=policy, mix=mix, rng=rng)
