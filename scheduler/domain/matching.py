"""The matching engine: filter → score → assign, with a reason for every pool refused.

Pure Python over the frozen dataclasses of :mod:`scheduler.domain.demand`
(numpy for the vectorised filter; no Django). Entry points:

* :func:`schedule_cycle` — one batch cycle: queued jobs, offers and current
  leases in; assignments, preemptions, one backfill reservation and a reason
  for every job left pending out;
* :func:`quote` — the best few placements for a job spec without submitting;
* :func:`explain` / :func:`check_submission` — why a job fits nowhere
  (``0/120 pools fit: 71 wrong software stack, 30 over price cap, 19 outside
  allowed hubs``); a job that fits no pool even in an empty market is refused
  at submission (:class:`JobNeverFits`).

**Filter.** Pools are partitioned by software stack and kept as numpy arrays
(one entry per pool), so the hard constraints of one job are checked against
thousands of pools in a few dozen array operations instead of a Python loop:
stack, CPU architecture, device model or capacity, domestic chips, verified
provider, allowed hubs, latency from the buyer's city, interruptible-only
offers, accelerator sharing, node size, memory, gang size against the nodes
offered, lease length, offer window and deadline, price caps — each pool
refused for the first failing one (:class:`~scheduler.domain.demand.Reason`).
Then, per pool, a summary of free capacity *now* (how many nodes have at
least k whole free devices, the largest free share of any device, the most
free CPU and memory on a node) rejects pools that cannot possibly take the job
in O(1). The masks of single constraints (a hub set, a latency limit from a city, a
demand resolved on every pool, ...) are cached per cycle, so most jobs cost
the AND of a dozen cached arrays. The survivors are tried in score order with
the exact checks:
:func:`~scheduler.domain.demand.static_reason` again (Decimal, no float) and
the per-node packing of :mod:`scheduler.domain.packing` (all nodes of a gang
or none). Every assignment therefore satisfies every hard constraint exactly.

**Time.** Each node keeps its commitments (leases, this cycle's assignments,
backfill reservations) as [start, end) windows. A placement over [s, e) must
fit the *least* free capacity of the node over [s, e), computed per resource
and per accelerator (the demand is constant over the window, so this is exact:
it fits at every instant iff it fits the minimum). So capacity is never
overbooked in any time slot, on any node, on any accelerator. Starting now
with no later commitment ahead, the node's current free state is that
minimum (fast path); otherwise it is swept from the commitments. The earliest
start on a pool is its ready time or the end of one of its commitments
(free capacity only grows when a commitment ends).

**Score** (deterministic; ties broken by pool id):

* *cheapest*: the estimated cost of the whole job — locked unit price × NCU
  held × hours — rounded to the fen. Only among placements of the same cost
  in fen: latency-tolerant jobs prefer western hubs (东数西算), then the
  placement that grows fragmentation least, then provider reliability, then
  carbon. So "cheapest" never takes a costlier pool than a feasible one.
* *earliest*: the expected start, then the *adjusted cost*: cost × (1 −
  ``west_price_tolerance``) on a western hub for a latency-tolerant job (a
  western pool wins while it is at most ~5% dearer: "when the price is
  close"), × (1 + ``reliability_weight`` × (1 − reliability)); then
  fragmentation, reliability, carbon.
* *greenest*: the estimated carbon — device power × devices × hours × PUE ×
  grid factor × (1 − green share), to the gram — then the adjusted cost, then
  fragmentation, then start.

Fragmentation is the growth of the nodes' fragmentation
(:func:`scheduler.domain.packing.fragmentation`, the measure of Weng et al.,
USENIX ATC 2023: expected accelerator capacity a task of the workload mix
cannot use) caused by the placement; it is computed only for the (at most
``max_tie_candidates``) placements tied on the objective's first keys. Inside
a pool the nodes and devices are chosen by the packing policy (``"default"``,
fragmentation-aware, through ``packing.Cluster``, kept per pool for the whole
cycle), so partial-node and shared-accelerator jobs fill partly used nodes and
devices first. The workload mix is ``MatchingConfig.mix``, or else the queued
jobs' per-node demands plus whole-node demands (``WHOLE_NODE_SHARE`` of the
mix, one per node size of the market), so breaking a whole node always counts
as fragmentation: placements leave nodes either full or whole. On a pool
where nothing is committed every node is whole and identical, and the first
nodes and devices are taken without asking the packer.

**Quotes** (:func:`quote`, :class:`QuoteMarket`): of the pools that pass the
filter, up to ``quote_pool_limit`` in the objective's order each get their
earliest feasible start, and the best ``limit`` options by the objective's
keys are offered. A pool's first two keys are known before it is packed (the
cost in fen and the western preference; the carbon and the adjusted cost; or
the adjusted cost and a lower bound of the start, the later of the job's
ready time and the offer's opening), so pools are packed in that order and,
once ``limit`` options are found, the pools whose first keys come after the
``limit``-th best's are not packed: they could not be offered.

**Cycle** (:func:`schedule_cycle`): jobs come in fair-share order
(:mod:`scheduler.domain.queueing`: lowest dominant share first, priority and
ageing). A cycle places a job at its ready time (now, or its earliest start if
that is within ``lookahead``). A job that cannot be placed now:

1. if it is on-demand (not interruptible), ready now, and blocked by
   capacity, it may preempt interruptible leases of earlier cycles: on up to
   ``preemption_pool_limit`` pools it could use that hold such leases, the
   fewest leases whose removal lets it fit (tried most recently started
   first), then the least work lost (NCU × time already run), then the
   objective's order. The preempted lease ids are returned with the job that
   took the capacity; the caller ends those leases and re-queues their jobs
   (they keep their submission time, so ageing lifts them);
2. otherwise the first blocked job (``max_reservations`` of them) gets a
   reservation at its earliest feasible start (EASY backfilling, Lifka 1995):
   later, smaller jobs still take gaps now, but only if they end before the
   reservation starts or leave it the capacity it needs;
3. and it stays pending with its explanation.

**Stakes and repacking** (``MatchingConfig.repack``, on by default). A
cycle first places every job in order of its stakes — the cost of its
cheapest pool that passes the static checks, highest first. If every job it
cannot place can never run in this market (no pool passes the static
checks), nobody had to wait for capacity: the fair-share pass could not have
placed any job this plan leaves out, so fair share had nothing to decide and
this plan stands. As soon as a job ready now is blocked by capacity (or by an
offer not open yet) the queue is contested: the fair-share pass
decides which jobs get capacity this cycle (it runs without the fragmentation
tie-breaks, for speed); then the jobs it placed are placed again on the same
market in order of their stakes — the cost the first pass found, highest
first — each on its best placement for its objective, and the backfill
reservations are made again. A greedy pass in fair-share order lets a short
job take the cheap capacity that a long 8-device job then misses, though the
saving of a cheaper pool grows with size × duration; placing large demands
first also packs nodes better (first fit decreasing). The repacked plan is
kept only if it places every job the first pass placed, remakes every
reservation no later than the first pass did (backfill never delays the
reserved job), and costs less in total; otherwise (and whenever the first
pass preempted) the fair-share pass is run again in full and its plan is the
cycle's. A single job is placed as before, so "cheapest" still never takes a
costlier pool for a job on its own; in a batch a job may pay a little more
than its cheapest free pool so that the batch pays less.

Limits, by design: ``max_exact_checks`` pools are tried in full per job after
the vectorised filter (it almost always passes the first); local storage is
checked per node against the job's need but not shared out between jobs on
one node; price caps are compared in float by the filter with a 1e-9
relative margin and then exactly before any assignment is made.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import TypeVar

import numpy as np

from billing.domain.money import to_fen
from core.errors import ApplicationError
from marketplace.domain.geography import CITIES, HUBS
from marketplace.domain.units import ComputeClass, CpuArchitecture, Precision, SoftwareStack, ncu_hours
from scheduler.domain.demand import (
    REASON_ORDER,
    JobSpec,
    Lease,
    MatchingConfig,
    NodeAllocation,
    Objective,
    PoolFacts,
    PoolOffer,
    PricingType,
    Reason,
    Resolved,
    duration_hours,
    estimated_cost,
    pool_facts,
    resolve,
    site_latency_ms,
    static_reason,
)
from scheduler.domain.packing import (
    WHOLE_DEVICE_MILLI,
    Cluster,
    NodeShape,
    NodeState,
    Placement,
    SliceDemand,
    WorkloadMix,
    fragmentation,
    place_gang,
)
from scheduler.domain.queueing import FairShareQueue

__all__ = [
    "Assignment",
    "CycleResult",
    "Explanation",
    "JobNeverFits",
    "Preemption",
    "QuoteMarket",
    "QuoteResult",
    "Reservation",
    "check_submission",
    "explain",
    "quote",
    "schedule_cycle",
]

ENERGY_PLACES = Decimal("0.001")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NEVER = 2**62  # "no end" in microseconds
_T = TypeVar("_T")
_EPS = 1e-12  # float ceil guard: q × (1 − ε) so that an exact integer quotient does not round up
_CAP_MARGIN = 1e-9  # the float price filter lets through pools within this relative margin; checked exactly after
_FEN = 0.01
WHOLE_NODE_SHARE = 0.2  # of the workload mix: whole-node demands, one per node size
_CHUNK = 64  # pools listed for the exact checks at first (then all the rest), best first
_ZERO = Decimal(0)
_ONE = Decimal(1)
_DEMANDS_KEPT = 256  # distinct demands whose resolution on the pools a market keeps (see _Market._resolutions)
_FEW_NODES = 16  # a pool of at most this many nodes is read node by node (see _PoolState.few)
_WINDOWS_KEPT = 64  # windows of one pool kept indexed (see _PoolState.window)

_ARCH_IDS = {arch: i for i, arch in enumerate(CpuArchitecture)}
_HUB_IDS = {code: i for i, code in enumerate(HUBS)}
_CITY_CODES = list(CITIES)
_CITY_IDS = {code: i for i, code in enumerate(_CITY_CODES)}
_HUB_COLUMN = {code: len(_CITY_CODES) + i for i, code in enumerate(HUBS)}  # a site known only by its hub
_UNKNOWN_CITY = len(_CITY_CODES) + len(HUBS)
_LATENCY: np.ndarray | None = None


def _latency_table() -> np.ndarray:
    """Latency (ms) from each known city (rows) to each known city, each hub (for a site whose city is not
    known) and an unknown place (+inf), from :func:`scheduler.domain.demand.site_latency_ms`."""
    global _LATENCY
    if _LATENCY is None:
        table = np.full((len(_CITY_CODES), _UNKNOWN_CITY + 1), np.inf)
        for i, a in enumerate(_CITY_CODES):
            for j, b in enumerate(_CITY_CODES):
                table[i, j] = site_latency_ms(a, b, "")
            for hub, j in _HUB_COLUMN.items():
                table[i, j] = site_latency_ms(a, "", hub)
        _LATENCY = table
    return _LATENCY


def _site_column(pool: PoolOffer) -> int:
    if pool.city in _CITY_IDS:
        return _CITY_IDS[pool.city]
    return _HUB_COLUMN.get(pool.hub, _UNKNOWN_CITY)


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# --- answers ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a job fits ``fit`` of ``total`` pools: each refused pool counted once, under its first failing check."""

    total: int
    fit: int
    counts: tuple[tuple[Reason, int], ...]  # most common first, then in check order
    note: str = ""

    @property
    def never_fits(self) -> bool:
        """No pool passes the static checks: the job cannot run in this market whatever is leased."""
        return self.fit == 0 and all(reason.static for reason, _ in self.counts)

    @property
    def message(self) -> str:
        text = f"{self.fit}/{self.total} pools fit"
        if self.counts:
            text += ": " + ", ".join(f"{n} {reason.label}" for reason, n in self.counts)
        if self.note:
            text += f"; {self.note}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "fit": self.fit,
            "reasons": {reason.value: n for reason, n in self.counts},
            "never_fits": self.never_fits,
            "message": self.message,
        }

    @classmethod
    def from_counts(cls, total: int, fit: int, counts: Mapping[Reason, int], note: str = "") -> Explanation:
        ordered = sorted(((r, n) for r, n in counts.items() if n), key=lambda item: (-item[1], REASON_ORDER[item[0]]))
        return cls(total=total, fit=fit, counts=tuple(ordered), note=note)


class JobNeverFits(ApplicationError):
    """Raised at submission for a job that no pool of the market could ever take."""

    code = "job_never_fits"
    status = 422

    def __init__(self, explanation: Explanation) -> None:
        super().__init__(
            f"No pool can run this job: {explanation.message}.", extra={"explanation": explanation.as_dict()}
        )
        self.explanation = explanation


@dataclass(frozen=True, slots=True)
class Assignment:
    """A job placed on a pool over [start, end): what a lease is made from (and what a quote offers)."""

    job_id: str
    org_id: str
    pool_id: str
    pool_identifier: str
    provider_id: str
    hub: str
    city: str
    compute_class: ComputeClass
    start: datetime
    end: datetime
    allocations: tuple[NodeAllocation, ...]
    unit_price: Decimal  # locked, CNY per NCU-hour
    ncu: Decimal  # NCU held by the job
    ncu_hours: Decimal  # to 4 decimals
    estimated_cost: Decimal  # unit price × NCU × hours, to the fen
    energy_kwh: Decimal
    carbon_kg: Decimal
    interruptible: bool
    pricing_type: PricingType

    @property
    def nodes(self) -> int:
        return len(self.allocations)


@dataclass(frozen=True, slots=True)
class Preemption:
    lease_id: str
    pool_id: str
    preempted_job_id: str
    preempted_org_id: str
    by_job_id: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """Capacity held for a blocked job from its earliest feasible start (EASY backfilling)."""

    job_id: str
    pool_id: str
    start: datetime
    end: datetime
    allocations: tuple[NodeAllocation, ...]


@dataclass(frozen=True, slots=True)
class CycleResult:
    assignments: tuple[Assignment, ...]
    pending: Mapping[str, Explanation]  # job id → why it waits
    preemptions: tuple[Preemption, ...] = ()
    reservations: tuple[Reservation, ...] = ()

    @property
    def never_fit(self) -> tuple[str, ...]:
        """Pending jobs that no pool of the market could ever take (the offers changed since they were submitted)."""
        return tuple(job_id for job_id, why in self.pending.items() if why.never_fits)


@dataclass(frozen=True, slots=True)
class QuoteResult:
    options: tuple[Assignment, ...]  # best first; ``start`` is the expected start
    explanation: Explanation  # over the static checks: how many pools could ever take the job


# --- capacity over time -----------------------------------------------------------------------------------------------


class _Commitment:
    __slots__ = ("demand", "end", "interruptible", "job_id", "kind", "lease_id", "org_id", "placement", "start")

    def __init__(
        self,
        start: int,
        end: int,
        placement: Placement,
        demand: SliceDemand,
        kind: str,
        lease_id: str | None = None,
        job_id: str = "",
        org_id: str = "",
        interruptible: bool = False,
    ) -> None:
        self.start = start
        self.end = end
        self.placement = placement
        self.demand = demand
        self.kind = kind  # "lease", "assignment" or "reservation"
        self.lease_id = lease_id
        self.job_id = job_id
        self.org_id = org_id
        self.interruptible = interruptible


class _Window:
    """The nodes' least free capacity over one window, as arrays (CPU and memory per node, share per node and
    device), and the packing module's index of those nodes once a placement needs it. Never changed."""

    __slots__ = ("_cluster", "cpu", "fitting", "free", "memory")

    def __init__(self, cpu: np.ndarray, memory: np.ndarray, free: np.ndarray) -> None:
        self.cpu, self.memory, self.free = cpu, memory, free
        self.fitting: dict[SliceDemand, int] = {}  # nodes that could hold a demand, as asked
        self._cluster: Cluster | None = None

    def cluster(self, shape: NodeShape) -> Cluster:
        """The nodes (of this shape) indexed by the packing module, built when first asked for."""
        if self._cluster is None:
            self._cluster = Cluster(NodeState.many(shape, self.cpu.tolist(), self.memory.tolist(), self.free.tolist()))
        return self._cluster


class _PoolState:
    """The nodes of one pool: free capacity outside the market, and the market's commitments on each node.

    What depends only on the commitments is kept until they change: the commitments as arrays, the free
    capacity now (as arrays, and as nodes once a placement needs them), the distinct ends of the commitments,
    and the nodes' least free capacity over the windows asked for (:meth:`window`)."""

    __slots__ = (
        "_arrays",
        "_base_arrays",
        "_cluster",
        "_ends",
        "_events",
        "_held",
        "_now",
        "_now_fitting",
        "_windows",
        "base",
        "commitments",
        "facts",
        "future_start",
        "interruptible",
        "now",
        "pristine",
    )

    def __init__(self, facts: PoolFacts, now: int) -> None:
        self.facts = facts
        self.now = now
        given = facts.pool.nodes
        # never changed in place (states derived from them are copies), so whole nodes share one object
        self.base = (
            [node.copy() for node in given]
            if given is not None
            else [NodeState.empty(facts.node_shape)] * facts.nodes_offered
        )
        self.commitments: list[list[_Commitment]] = [[] for _ in self.base]
        self.future_start = _NEVER  # earliest start of a commitment that starts after now
        self._cluster: Cluster | None = None
        self._now: list[NodeState] | None = None  # free capacity now (the cluster's nodes, once it exists)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # free capacity now, see free_now
        self._now_fitting: dict[SliceDemand, int] = {}  # nodes that could hold a demand now (with _arrays)
        self._base_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # ``base`` as arrays
        self._held: tuple[np.ndarray, ...] | None = None  # the commitments as arrays, see _held_arrays
        self._ends: list[int] | None = None  # distinct ends of the commitments, ascending
        self._events: list[int] | None = None  # distinct starts and ends of the commitments, ascending
        self._windows: dict[tuple[int, int], _Window] = {}  # see window()
        self.pristine = given is None  # every node whole and nothing committed
        self.interruptible = 0  # interruptible lease commitments held (candidates for preemption)

    def add(self, node: int, commitment: _Commitment) -> None:
        if not 0 <= node < len(self.base):
            raise ValueError(f"pool {self.facts.pool.pool_id} has no node {node}")
        self.commitments[node].append(commitment)
        self.pristine = False
        self._arrays = self._held = self._ends = self._events = None
        if self._windows:
            self._windows = {}
        if commitment.interruptible and commitment.kind == "lease":
            self.interruptible += 1
        if commitment.start > self.now:
            self.future_start = min(self.future_start, commitment.start)
        elif self._cluster is not None:
            self._cluster.allocate(commitment.placement, commitment.demand)
        elif self._now is not None:
            self._now[node].allocate(commitment.placement, commitment.demand)

    def remove_leases(self, lease_ids: set[str]) -> list[_Commitment]:
        removed = []
        for node, held in enumerate(self.commitments):
            keep = [c for c in held if c.lease_id not in lease_ids]
            removed.extend(c for c in held if c.lease_id in lease_ids)
            self.commitments[node] = keep
        self.interruptible = sum(1 for held in self.commitments for c in held if c.interruptible and c.kind == "lease")
        self.future_start = min(
            (c.start for held in self.commitments for c in held if c.start > self.now), default=_NEVER
        )
        self._cluster = None
        self._now = None
        self._arrays = self._held = self._ends = self._events = None
        self._windows = {}
        return removed

    def state_between(self, node: int, start: int, end: int, exclude: frozenset[str] = frozenset()) -> NodeState:
        """The least free capacity of the node over [start, end), per resource and per accelerator."""
        base = self.base[node]
        active = [
            c
            for c in self.commitments[node]
            if c.start < end and c.end > start and (c.lease_id is None or c.lease_id not in exclude)
        ]
        if not active:
            return base.copy()
        devices = len(base.free_milli)
        if all(c.start <= start for c in active):
            cpu, memory, used = _usage(active, devices)
        else:
            cpu = memory = 0
            used = [0] * devices
            for point in sorted({start} | {c.start for c in active if c.start > start}):
                at = [c for c in active if c.start <= point < c.end]
                c_cpu, c_memory, c_used = _usage(at, devices)
                cpu, memory = max(cpu, c_cpu), max(memory, c_memory)
                used = [max(a, b) for a, b in zip(used, c_used, strict=True)]
        return base.less(cpu, memory, used)

    def free_between(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`state_between` of every node as (new) arrays: free CPU and memory per node, free share per
        node and device. The usage of a node only grows when one of its commitments starts, so its most over
        the window is its usage at ``start`` or at a start inside the window (at the starts of other nodes'
        commitments it is no more than that)."""
        node, starts, ends, cpu, memory, share = self._held_arrays()
        base_cpu, base_memory, base_free = self._base()
        active = (starts < end) & (ends > start)
        if not active.any():
            return base_cpu.copy(), base_memory.copy(), base_free.copy()
        n, devices = base_free.shape

        def usage_at(moment: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            at = active & (starts <= moment) & (ends > moment)
            on = node[at]
            shares = np.zeros((n, devices), dtype=np.int64)
            np.add.at(shares, on, share[at])
            cpu_at = np.bincount(on, weights=cpu[at], minlength=n)  # sums of small integers: exact in float64
            return cpu_at, np.bincount(on, weights=memory[at], minlength=n), shares

        cpu_used, memory_used, share_used = usage_at(start)
        later = active & (starts > start)
        if later.any():
            for moment in sorted(set(starts[later].tolist())):
                cpu_at, memory_at, share_at = usage_at(moment)
                cpu_used = np.maximum(cpu_used, cpu_at)
                memory_used = np.maximum(memory_used, memory_at)
                share_used = np.maximum(share_used, share_at)
        return (
            np.maximum(base_cpu - cpu_used.astype(np.int64), 0),
            np.maximum(base_memory - memory_used.astype(np.int64), 0),
            np.maximum(base_free - share_used, 0),
        )

    def _base(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``base`` as arrays (never changed)."""
        if self._base_arrays is None:
            shape = self.facts.node_shape
            n = len(self.base)
            if self.facts.pool.nodes is None:
                self._base_arrays = (
                    np.full(n, shape.cpu_milli, dtype=np.int64),
                    np.full(n, shape.memory_mib, dtype=np.int64),
                    np.full((n, shape.accelerators), WHOLE_DEVICE_MILLI, dtype=np.int64),
                )
            else:
                self._base_arrays = _free_arrays(self.base, shape.accelerators)
        return self._base_arrays

    def _held_arrays(self) -> tuple[np.ndarray, ...]:
        """The commitments as arrays, one entry per commitment: node, start, end, CPU, memory, and the share
        taken on each device of the node (devices the node does not have are ignored)."""
        if self._held is None:
            devices = self.facts.node_shape.accelerators
            node: list[int] = []
            start: list[int] = []
            end: list[int] = []
            cpu: list[int] = []
            memory: list[int] = []
            taken: dict[tuple[tuple[int, ...], int], list[int]] = {}  # (devices, share on each) -> commitments
            for i, held in enumerate(self.commitments):
                for c in held:
                    if c.placement.devices:
                        taken.setdefault((c.placement.devices, c.placement.accelerator_milli), []).append(len(node))
                    node.append(i)
                    start.append(c.start)
                    end.append(c.end)
                    cpu.append(c.demand.cpu_milli)
                    memory.append(c.demand.memory_mib)
            share = np.zeros((len(node), devices), dtype=np.int64)
            for (on, milli), rows in taken.items():
                columns = [d for d in on if 0 <= d < devices]
                if columns:
                    np.add.at(share, (np.array(rows)[:, None], np.array(columns)[None, :]), milli)
            self._held = (
                np.array(node, dtype=np.intp),
                np.array(start, dtype=np.int64),
                np.array(end, dtype=np.int64),
                np.array(cpu, dtype=np.int64),
                np.array(memory, dtype=np.int64),
                share,
            )
        return self._held

    def free_now(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nodes' free capacity now as arrays (the state :meth:`now_nodes` holds, without building the
        nodes): ``free_between(now, now + 1)``, or read from the nodes once they exist."""
        if self._arrays is None:
            if self._now is not None:
                self._arrays = _free_arrays(self._now, self.facts.node_shape.accelerators)
            else:
                self._arrays = self.free_between(self.now, self.now + 1)
            self._now_fitting = {}
        return self._arrays

    def cluster(self) -> Cluster:
        """The nodes' free capacity now, indexed by the packing module (built when first needed)."""
        if self._cluster is None:
            self._cluster = Cluster(self.now_nodes())
            self._now = self._cluster.nodes
        return self._cluster

    def now_nodes(self) -> list[NodeState]:
        """Each node's free capacity now: ``state_between(node, now, now + 1)`` (from :meth:`free_now` on a
        pool of more than a few nodes)."""
        if self._now is None:
            if self.few():
                self._now = [self.state_between(i, self.now, self.now + 1) for i in range(len(self.base))]
            else:
                cpu, memory, free = self.free_now()
                self._now = NodeState.many(self.facts.node_shape, cpu.tolist(), memory.tolist(), free.tolist())
        return self._now

    def few(self) -> bool:
        """Whether the pool has so few nodes that reading them one by one costs less than numpy's arrays."""
        return len(self.base) <= _FEW_NODES

    def window(self, start: int, end: int) -> _Window:
        """The nodes' least free capacity over [start, end) (:meth:`free_between`). It depends only on which
        commitments start or end before ``start`` and before ``end``, so it is kept by those two counts until
        the commitments change."""
        events = self._events
        if events is None:
            events = self._events = sorted({t for held in self.commitments for c in held for t in (c.start, c.end)})
        key = (bisect_right(events, start), bisect_left(events, end))
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= _WINDOWS_KEPT:
                self._windows = {}
            window = self._windows[key] = _Window(*self.free_between(start, end))
        return window

    def place(
        self,
        demand: SliceDemand,
        count: int,
        start: int,
        end: int,
        *,
        policy: str,
        mix: WorkloadMix | None,
        exclude: frozenset[str] = frozenset(),
    ) -> tuple[tuple[Placement, ...], list[NodeState]] | None:
        if self.pristine:
            # identical whole nodes: every policy's choice is equivalent to the first nodes and devices
            if count > len(self.base) or not self.base[0].fits(demand):
                return None
            devices = (0,) if demand.accelerator_milli else tuple(range(demand.accelerators))
            milli = demand.accelerator_milli or (1000 if demand.accelerators else 0)
            return tuple(Placement(i, devices, milli) for i in range(count)), self.base
        if exclude:
            nodes = [self.state_between(i, start, end, exclude) for i in range(len(self.base))]
            placed = place_gang(nodes, demand, count, policy=policy, mix=mix)
            return None if placed is None else (placed, nodes)
        if start == self.now and end <= self.future_start:
            cluster = self.cluster()
        else:
            cluster = self.window(start, end).cluster(self.facts.node_shape)
        placed = cluster.place_gang(demand, count, policy=policy, mix=mix)
        return None if placed is None else (placed, cluster.nodes)

    def feasible(
        self, demand: SliceDemand, count: int, start: int, end: int, exclude: frozenset[str] = frozenset()
    ) -> bool:
        """Whether ``count`` distinct nodes could each hold the demand over [start, end) (what a gang needs)."""
        if self.pristine:
            return count <= len(self.base) and self.base[0].fits(demand)
        if exclude:
            fitting = 0
            for i in range(len(self.base)):
                if self.state_between(i, start, end, exclude).fits(demand):
                    fitting += 1
                    if fitting >= count:
                        return True
            return False
        if start == self.now and end <= self.future_start:
            if self.few():
                fitting = 0
                for node in self.now_nodes():
                    if node.fits(demand):
                        fitting += 1
                        if fitting >= count:
                            return True
                return False
            cpu, memory, free = self.free_now()
            known = self._now_fitting
        else:
            window = self.window(start, end)
            cpu, memory, free, known = window.cpu, window.memory, window.free, window.fitting
        fitting = known.get(demand)
        if fitting is None:
            fitting = known[demand] = _fitting(self.facts.node_shape, demand, cpu, memory, free)
        return fitting >= count

    def earliest(
        self,
        demand: SliceDemand,
        count: int,
        ready: int,
        duration: int,
        limit: int,
        *,
        policy: str,
        mix: WorkloadMix | None,
    ) -> tuple[int, tuple[Placement, ...], list[NodeState]] | None:
        """The earliest start >= ready (ending by ``limit``) at which the gang fits, with its placement:
        ``ready`` or the end of a commitment (free capacity only grows when a commitment ends)."""
        ends = self._ends
        if ends is None:
            ends = self._ends = sorted({c.end for held in self.commitments for c in held})
        for start in [ready, *ends[bisect_right(ends, ready) :]]:
            if start + duration > limit:
                break
            if not self.feasible(demand, count, start, start + duration):
                continue
            placed = self.place(demand, count, start, start + duration, policy=policy, mix=mix)
            if placed is not None:
                return start, placed[0], placed[1]
        return None

    def interruptible_leases(self, start: int, end: int) -> dict[str, list[_Commitment]]:
        found: dict[str, list[_Commitment]] = {}
        if not self.interruptible:
            return found
        for held in self.commitments:
            for c in held:
                if c.kind == "lease" and c.interruptible and c.lease_id and c.start < end and c.end > start:
                    found.setdefault(c.lease_id, []).append(c)
        return found


def _fitting(shape: NodeShape, demand: SliceDemand, cpu: np.ndarray, memory: np.ndarray, free: np.ndarray) -> int:
    """How many of the nodes (of one shape; free capacity as arrays) could hold the demand: ``NodeState.fits``."""
    if not demand.allows(shape.accelerator_model):
        return 0
    ok = (cpu >= demand.cpu_milli) & (memory >= demand.memory_mib)
    if demand.accelerator_milli:
        ok &= free.max(axis=1, initial=0) >= demand.accelerator_milli
    elif demand.accelerators:
        ok &= np.count_nonzero(free == WHOLE_DEVICE_MILLI, axis=1) >= demand.accelerators
    return int(np.count_nonzero(ok))


def _free_arrays(nodes: Sequence[NodeState], devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free CPU and memory per node and free share per node and device, as (new) arrays."""
    return (
        np.array([node.free_cpu_milli for node in nodes], dtype=np.int64),
        np.array([node.free_memory_mib for node in nodes], dtype=np.int64),
        np.array([node.free_milli for node in nodes], dtype=np.int64).reshape(len(nodes), devices),
    )


def _usage(commitments: Iterable[_Commitment], devices: int) -> tuple[int, int, list[int]]:
    cpu = memory = 0
    used = [0] * devices
    for c in commitments:
        cpu += c.demand.cpu_milli
        memory += c.demand.memory_mib
        for d in c.placement.devices:
            if 0 <= d < devices:
                used[d] += c.placement.accelerator_milli
    return cpu, memory, used


# --- the vectorised view of the offers --------------------------------------------------------------------------------


class _DemandView:
    """A job's demand resolved on every pool of a partition (cached per distinct demand).

    ``rate`` is the cost per hour (unit price × NCU), ``carbon_rate`` the kg of
    CO2 per hour; the orders rank the partition's pools for each objective."""

    __slots__ = (
        "adjusted_rate",
        "adjusted_rate_west",
        "carbon_rate",
        "count",
        "cpu",
        "device_ok",
        "memory",
        "memory_ok",
        "milli",
        "nodes_ok",
        "orders",
        "rate",
        "room",
        "sharing_ok",
        "size_ok",
        "synced",
        "whole",
    )

    def __init__(self, part: _Partition, job: JobSpec, config: MatchingConfig) -> None:
        n = part.n
        units = part.units
        storage_ok = part.storage >= job.storage_gib_per_node
        device_ok: np.ndarray = units > 0
        sharing_ok: np.ndarray | None = None
        memory_ok: np.ndarray | None = None
        capacity = job.capacity
        if job.stack is SoftwareStack.CPU:
            if capacity is not None:
                per_core = part.tflops[capacity.precision]
                device_ok = device_ok & (per_core > 0)
                cores = np.maximum(
                    np.ceil(float(capacity.tflops) / np.where(per_core > 0, per_core, 1.0) * (1 - _EPS)), 1
                )
                cores = cores.astype(np.int64)
                count = -(-cores // part.units_safe)
                cpu = -(-cores // count) * 1000
            else:
                count = np.full(n, job.nodes, dtype=np.int64)
                cpu = np.full(n, job.cpu_milli_per_node, dtype=np.int64)
            memory = (
                np.full(n, job.memory_mib_per_node, dtype=np.int64)
                if job.memory_mib_per_node
                else part.node_memory * cpu // part.node_cpu_safe
            )
            milli = np.zeros(n, dtype=np.int64)
            whole = np.zeros(n, dtype=np.int64)
            size_ok = (cpu <= part.node_cpu) & storage_ok
            per_node_units = cpu / 1000
        else:
            if capacity is not None:
                per_device = part.tflops[capacity.precision]
                device_ok = device_ok & (per_device > 0)
                need = float(capacity.tflops) / np.where(per_device > 0, per_device, 1.0)
                wanted_memory = float(capacity.accelerator_memory_gib)
                if wanted_memory > 0:
                    known = part.device_memory > 0
                    need = np.where(
                        known, np.maximum(need, wanted_memory / np.where(known, part.device_memory, 1)), need
                    )
                    memory_ok = known
                slice_milli = np.ceil(need * 1000 * (1 - _EPS))
                shared = part.sharing & (slice_milli < 1000)
                milli = np.where(shared, np.maximum(slice_milli, 1), 0).astype(np.int64)
                total = np.maximum(np.ceil(need * (1 - _EPS)), 1).astype(np.int64)
                count = np.where(shared, 1, -(-total // part.units_safe))
                whole = np.where(shared, 0, -(-total // count))
            elif job.accelerator_milli:
                milli = np.full(n, job.accelerator_milli, dtype=np.int64)
                whole = np.zeros(n, dtype=np.int64)
                count = np.ones(n, dtype=np.int64)
                sharing_ok = part.sharing
                wanted = float(job.accelerator_memory_gib) * (1 - _EPS)
                memory_ok = part.device_memory * job.accelerator_milli / 1000 >= wanted
            else:
                milli = np.zeros(n, dtype=np.int64)
                whole = np.full(n, job.accelerators_per_node, dtype=np.int64)
                count = np.full(n, job.nodes, dtype=np.int64)
                if job.accelerator_memory_gib:
                    memory_ok = part.device_memory >= float(job.accelerator_memory_gib) * (1 - _EPS)
            thousandths = whole * 1000 + milli
            cpu = (
                np.full(n, job.cpu_milli_per_node, dtype=np.int64)
                if job.cpu_milli_per_node
                else part.node_cpu * thousandths // (part.units_safe * 1000)
            )
            memory = (
                np.full(n, job.memory_mib_per_node, dtype=np.int64)
                if job.memory_mib_per_node
                else part.node_memory * thousandths // (part.units_safe * 1000)
            )
            size_ok = (whole <= units) & (cpu <= part.node_cpu) & storage_ok
            per_node_units = thousandths / 1000
        fits_memory = memory <= part.node_memory
        self.device_ok = device_ok
        self.sharing_ok = sharing_ok
        self.size_ok = size_ok
        self.memory_ok = fits_memory if memory_ok is None else memory_ok & fits_memory
        self.nodes_ok = count <= part.offered
        self.count, self.whole, self.milli, self.cpu, self.memory = count, whole, milli, cpu, memory
        held = count * per_node_units
        self.rate = part.price * held * part.ncu_unit
        self.carbon_rate = part.power_kw * held * part.carbon_per_kwh
        self.adjusted_rate = self.rate * part.cost_factor
        self.adjusted_rate_west = np.where(
            part.west, self.adjusted_rate * (1 - float(config.west_price_tolerance)), self.adjusted_rate
        )
        self.orders: dict[tuple[Objective, bool], np.ndarray] = {}
        self.room: np.ndarray | None = None  # see _Partition.room
        self.synced = 0

    def order(self, objective: Objective, west: bool) -> np.ndarray:
        """All pools of the partition, best first for the objective (stable: ties keep pool-id order)."""
        key = (objective, west)
        order = self.orders.get(key)
        if order is None:
            adjusted = self.adjusted_rate_west if west else self.adjusted_rate
            if objective is Objective.CHEAPEST:
                order = np.argsort(self.rate, kind="stable")
            elif objective is Objective.EARLIEST:
                order = np.argsort(adjusted, kind="stable")
            else:
                order = np.lexsort((adjusted, self.carbon_rate))
            self.orders[key] = order
        return order


class _Partition:
    """The offers of one software stack as arrays, one entry per pool (sorted by pool id).

    The masks of single constraints are cached by the constraint's value, so a
    job's filter is mostly the AND of a dozen cached boolean arrays."""

    def __init__(self, facts: list[PoolFacts], model_ids: dict[str, int], config: MatchingConfig) -> None:
        self.facts = facts
        self.config = config
        n = self.n = len(facts)
        self.position = {f.pool.pool_id: i for i, f in enumerate(facts)}

        rows = [_pool_row(f) for f in facts]
        ints = np.array([row[0] for row in rows], dtype=np.int64).reshape(n, -1).T
        floats = np.array([row[1] for row in rows], dtype=float).reshape(n, -1).T
        self.model_ids = model_ids
        self.arch = ints[0].astype(np.int8)
        self.model = np.fromiter((model_ids.get(f.model or "", 0) for f in facts), dtype=np.int32, count=n)
        self.domestic = ints[1].astype(bool)
        self.verified = ints[2].astype(bool)
        self.hub = ints[3].astype(np.int16)
        self.city = ints[4].astype(np.int16)
        self.for_on_demand = ints[5].astype(bool)
        self.sharing = ints[6].astype(bool)
        self.units = ints[7].copy()
        self.units_safe = np.maximum(self.units, 1)
        self.node_cpu = ints[8].copy()
        self.node_cpu_safe = np.maximum(self.node_cpu, 1)
        self.node_memory = ints[9].copy()
        self.storage = ints[10].copy()
        self.offered = ints[11].copy()
        self.min_lease = ints[12].copy()
        self.max_lease = ints[13].copy()
        self.window_start = ints[14].copy()
        self.window_end = ints[15].copy()
        self.west = ints[16].astype(bool)
        self.device_memory = floats[0].copy()
        self.ncu_unit = floats[1].copy()
        self.price = floats[2].copy()
        self.reliability = floats[3].copy()
        self.power_kw = floats[4].copy()
        self.carbon_per_kwh = floats[5].copy()
        self.tflops = {precision: floats[6 + k].copy() for k, precision in enumerate(Precision)}
        self.cost_factor = 1.0 + float(config.reliability_weight) * (1.0 - self.reliability)
        self.all_verified = bool(self.verified.all())
        self.all_on_demand = bool(self.for_on_demand.all())
        self._cache: dict[tuple, object] = {}
        # free capacity now, per pool (refreshed whenever a pool changes)
        width = int(self.units.max(initial=0)) + 2
        columns = np.arange(width)
        self.nodes_with = np.where(columns[None, :] <= self.units[:, None], self.offered[:, None], 0).astype(np.int64)
        self.largest_share = np.where(self.units > 0, 1000, 0).astype(np.int64)
        self.most_cpu = self.node_cpu.copy()
        self.most_memory = self.node_memory.copy()
        self.changed: list[int] = []  # pools refreshed, in order (for the demands' cached room, see room())
        self.stale: dict[int, _PoolState] = {}  # pools whose free capacity changed since, see update()
        for i, f in enumerate(facts):
            if f.pool.nodes is not None:
                self.refresh_nodes(i, f.pool.nodes)

    def update(self, i: int, state: _PoolState) -> None:
        """Pool i's free capacity changed: its summary is refreshed from the state when next asked for (a
        market built for quotes of the cheapest or greenest objective never asks)."""
        self.stale[i] = state

    def _sync(self) -> None:
        if self.stale:
            stale, self.stale = self.stale, {}
            for i, state in stale.items():
                if state.few():
                    self.refresh_nodes(i, state.now_nodes())
                else:
                    self.refresh(i, *state.free_now())

    def refresh(self, i: int, cpu: np.ndarray, memory: np.ndarray, free: np.ndarray) -> None:
        """Pool i's summary of free capacity now, from its nodes' free CPU, memory and device shares
        (:meth:`_PoolState.free_now`)."""
        width = self.nodes_with.shape[1]
        if free.size:
            whole = np.count_nonzero(free == WHOLE_DEVICE_MILLI, axis=1)
            counts = np.bincount(np.minimum(whole, width - 1), minlength=width)
            self.largest_share[i] = free.max()
        else:  # no node, or nodes without accelerators
            counts = np.zeros(width, dtype=np.int64)
            counts[0] = len(cpu)
            self.largest_share[i] = 0
        self.nodes_with[i] = counts[::-1].cumsum()[::-1]  # nodes with at least k whole free devices
        self.most_cpu[i] = cpu.max(initial=0)
        self.most_memory[i] = memory.max(initial=0)
        self.changed.append(i)

    def refresh_nodes(self, i: int, nodes: Sequence[NodeState]) -> None:
        """:meth:`refresh` from the nodes themselves."""
        width = self.nodes_with.shape[1]
        counts = [0] * width
        largest = cpu = memory = 0
        for node in nodes:
            free = node.free_milli
            if free:
                counts[min(free.count(WHOLE_DEVICE_MILLI), width - 1)] += 1
                largest = max(largest, max(free))
            else:
                counts[0] += 1
            cpu = max(cpu, node.free_cpu_milli)
            memory = max(memory, node.free_memory_mib)
        running = 0
        for k in range(width - 1, -1, -1):
            running += counts[k]
            counts[k] = running
        self.nodes_with[i] = counts
        self.largest_share[i] = largest
        self.most_cpu[i] = cpu
        self.most_memory[i] = memory
        self.changed.append(i)

    # -- cached masks ---------------------------------------------------------------------------------------------

    def _cached(self, key: tuple, make):  # type: ignore[no-untyped-def]
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value

    def demand(self, job: JobSpec) -> _DemandView:
        return self._cached(("demand", *_view_key(job)), lambda: _DemandView(self, job, self.config))

    def device_mask(self, job: JobSpec, view: _DemandView) -> np.ndarray:
        if not job.device_models:
            return view.device_ok

        def make() -> np.ndarray:
            allowed = np.zeros(len(self.model_ids) + 1, dtype=bool)
            for code in job.device_models:
                if code in self.model_ids:
                    allowed[self.model_ids[code]] = True
            return view.device_ok & allowed[self.model]

        return self._cached(("device", job.device_models, id(view)), make)

    def arch_mask(self, arch: CpuArchitecture) -> np.ndarray:
        return self._cached(("arch", arch), lambda: self.arch == _ARCH_IDS[arch])

    def hub_mask(self, hubs: frozenset[str]) -> np.ndarray:
        def make() -> np.ndarray:
            allowed = np.zeros(len(_HUB_IDS) + 1, dtype=bool)
            for code in hubs:
                allowed[_HUB_IDS[code]] = True
            return allowed[self.hub]

        return self._cached(("hubs", hubs), make)

    def latency_mask(self, city: str, limit: float) -> np.ndarray:
        return self._cached(("latency", city, limit), lambda: _latency_table()[_CITY_IDS[city]][self.city] <= limit)

    def lease_mask(self, duration: int) -> np.ndarray:
        return self._cached(("lease", duration), lambda: (self.min_lease <= duration) & (duration <= self.max_lease))

    def window_mask(self, ready: int, duration: int, deadline: int) -> np.ndarray:
        def make() -> np.ndarray:
            end_by = self.window_end if deadline >= _NEVER else np.minimum(self.window_end, deadline)
            return np.maximum(self.window_start, ready) + duration <= end_by

        return self._cached(("window", ready, duration, deadline), make)

    def price_mask(self, cap: Decimal) -> np.ndarray:
        return self._cached(("price", cap), lambda: self.price <= float(cap))

    def open_mask(self, ready: int) -> np.ndarray:
        return self._cached(("open", ready), lambda: self.window_start <= ready)

    def room(self, view: _DemandView) -> np.ndarray:
        """``has_room`` of every pool for the demand, kept per demand and brought up to date only for the pools
        whose free capacity changed since it was last asked (the partition logs them)."""
        self._sync()
        if view.room is None:
            view.room = self.has_room(view, np.arange(self.n))
        elif view.synced < len(self.changed):
            changed = np.unique(np.fromiter(self.changed[view.synced :], dtype=np.intp))
            view.room[changed] = self.has_room(view, changed)
        view.synced = len(self.changed)
        return view.room

    def has_room(self, view: _DemandView, idx: np.ndarray) -> np.ndarray:
        """For pools ``idx``: whether their free capacity now could hold the demand (a necessary condition)."""
        self._sync()
        milli = view.milli[idx]
        width = self.nodes_with.shape[1]
        whole_ok = self.nodes_with[idx, np.minimum(view.whole[idx], width - 1)] >= view.count[idx]
        enough = np.where(milli > 0, self.largest_share[idx] >= milli, whole_ok)
        return enough & (self.most_cpu[idx] >= view.cpu[idx]) & (self.most_memory[idx] >= view.memory[idx])


_ROWS: dict[int, tuple[PoolFacts, tuple[int, ...], tuple[float, ...]]] = {}
_ROWS_KEPT = 8192


def _pool_row(facts: PoolFacts) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The pool's entries in the arrays of a partition (all but its model id, numbered per market): integers
    (and flags) and floats. Kept by the identity of the facts: an unchanged offer has the same facts in every
    market (:func:`~scheduler.domain.demand.pool_facts` is memoised), so a market built again reuses them."""
    cached = _ROWS.get(id(facts))
    if cached is not None and cached[0] is facts:
        return cached[1], cached[2]
    p = facts.pool
    ints = (
        _ARCH_IDS[p.cpu_architecture],
        p.domestic,
        p.provider_verified,
        _HUB_IDS.get(p.hub, len(_HUB_IDS)),
        _site_column(p),
        p.pricing_type is not PricingType.INTERRUPTIBLE,
        p.sharing_allowed,
        facts.units_per_node,
        facts.node_shape.cpu_milli,
        facts.node_shape.memory_mib,
        p.node_storage_gib,
        facts.nodes_offered,
        p.min_lease // _US,
        _NEVER if p.max_lease is None else p.max_lease // _US,
        _us(p.window_start),
        _NEVER if p.window_end is None else _us(p.window_end),
        facts.west,
    )
    floats = (
        float(p.accelerator_memory_gib),
        float(facts.ncu_per_unit),
        float(p.unit_price),
        float(p.provider_reliability),
        float(p.unit_power_w) / 1000,
        float(p.pue) * float(p.grid_carbon_kg_per_kwh) * (1 - float(p.green_share)),
        *(float(facts.tflops(precision)) for precision in Precision),
    )
    if len(_ROWS) >= _ROWS_KEPT:
        _ROWS.clear()
    _ROWS[id(facts)] = (facts, ints, floats)
    return ints, floats


@dataclass(slots=True)
class _Evaluation:
    alive: np.ndarray  # passes every static check (and is open at the start, when asked)
    counts: dict[Reason, int] | None
    view: _DemandView | None
    hours: float
    west: bool

    def cost(self, j: int) -> float:
        assert self.view is not None  # noqa: S101 - only asked of a pool that passed
        return float(self.view.rate[j]) * self.hours

    def carbon(self, j: int) -> float:
        assert self.view is not None  # noqa: S101
        return float(self.view.carbon_rate[j]) * self.hours

    def adjusted(self, j: int) -> float:
        assert self.view is not None  # noqa: S101
        rate = self.view.adjusted_rate_west if self.west else self.view.adjusted_rate
        return float(rate[j]) * self.hours


_Costs = tuple[Decimal, float, bool]  # estimated cost, adjusted cost, western-preferred
_Footprint = tuple[Decimal, Decimal]  # energy (kWh), carbon (kg)


@dataclass(slots=True)
class _Option:
    facts: PoolFacts
    resolved: Resolved
    start: int
    end: int
    placements: tuple[Placement, ...]
    nodes_used: list[NodeState]
    cost: Decimal
    energy_kwh: Decimal
    carbon_kg: Decimal
    adjusted: float
    west_preferred: bool
    frag: float = 0.0
    rank: int = 0
    victims: tuple[str, ...] = field(default_factory=tuple)


class _Market:
    """The offers of one cycle, their commitments, and the filter/score/assign steps."""

    def __init__(
        self,
        pools: Sequence[PoolOffer],
        *,
        now: datetime,
        config: MatchingConfig,
        leases: Iterable[Lease] = (),
        jobs: Iterable[JobSpec] = (),
        donor: _Market | None = None,
        donor_holds: bool = False,
    ) -> None:
        """``donor``: a market built earlier of the same config (see :class:`QuoteMarket`), whose
        lease-independent memos are kept for the pools whose facts are the same objects, and, when
        ``donor_holds`` (no lease started or ended between its moment and ``now``), whose pool states
        (commitments and what is derived from them) are kept for the pools whose facts and leases are
        the same. The caller makes sure nothing uses the donor while this market is built or used."""
        self.now_dt = now
        self.now = _us(now)
        self.config = config
        seen: set[str] = set()
        facts = []
        for pool in pools:
            if pool.pool_id in seen:
                raise ValueError(f"pool {pool.pool_id} is offered twice")
            seen.add(pool.pool_id)
            facts.append(pool_facts(pool))
        facts.sort(key=lambda f: f.pool.pool_id)
        self.total = len(facts)
        models = sorted({f.model for f in facts if f.model})
        self.model_ids = {code: i + 1 for i, code in enumerate(models)}  # 0 = no accelerator
        by_stack: dict[SoftwareStack, list[PoolFacts]] = {}
        for f in facts:
            by_stack.setdefault(f.pool.stack, []).append(f)
        self.partitions = {stack: _Partition(members, self.model_ids, config) for stack, members in by_stack.items()}
        self.where = {
            f.pool.pool_id: (stack, i) for stack, part in self.partitions.items() for i, f in enumerate(part.facts)
        }
        self.facts = facts
        self.states: dict[str, _PoolState] = {}
        self.next_change = _NEVER  # the first start or end of a lease after now (offered pool or not)
        self._changes: dict[str, int] = {}  # the same, per pool id
        self._held: list[tuple[Lease, PoolFacts, int]] = []  # leases loaded, with their thousandths of units
        self.pool_leases: dict[str, list[Lease]] = {}  # the leases given, by pool id, in the order given
        leases = list(leases)
        for lease in leases:
            self.pool_leases.setdefault(lease.pool_id, []).append(lease)
        before = {} if donor is None else donor._facts_by_id
        same = {f.pool.pool_id for f in facts if before.get(f.pool.pool_id) is f}  # the same offers, unchanged
        kept: set[str] = set()
        if donor is not None and donor_holds:
            for pool_id, state in donor.states.items():
                if pool_id in same and donor.pool_leases.get(pool_id, []) == self.pool_leases.get(pool_id, []):
                    state.now = self.now
                    self.states[pool_id] = state
                    kept.add(pool_id)
        # a kept pool's leases were loaded by the donor as this market would load them (none started or ended
        # since): their entries and the pool's next change are taken over, in the order the leases are given
        loaded = {entry[0].lease_id: entry for entry in donor._held if entry[0].pool_id in kept} if kept else {}
        for lease in leases:
            if lease.pool_id not in kept:
                self._load(lease)
            elif lease.lease_id in loaded:  # not there: over before the donor's moment, as before this one's
                self._held.append(loaded[lease.lease_id])
        for pool_id in kept:
            change = donor._changes.get(pool_id)  # type: ignore[union-attr]  # kept only with a donor
            if change is not None:
                self._changes[pool_id] = change
                self.next_change = min(self.next_change, change)
        for pool_id, state in self.states.items():
            if pool_id not in kept or not state.pristine:
                stack, i = self.where[pool_id]
                self.partitions[stack].update(i, state)
        self.mix = config.mix if config.mix is not None else _queue_mix(jobs, config.mix_size, facts)
        self._frag_cache: dict[tuple[NodeShape, int, int, tuple[int, ...]], float] = {}
        self._resolutions_kept: dict[tuple, dict[str, Resolved | Reason]] = {}  # see _resolutions
        self._prices_kept: dict[tuple, dict[str, tuple[_Costs, Decimal]]] = {}  # see _prices
        if donor is not None:  # both read only a pool's facts
            self._resolutions_kept = _kept_for(donor._resolutions_kept, same)
            self._prices_kept = _kept_for(donor._prices_kept, same)

    @cached_property
    def _facts_by_id(self) -> dict[str, PoolFacts]:
        return {f.pool.pool_id: f for f in self.facts}

    # -- loading --------------------------------------------------------------------------------------------------

    def facts_of(self, pool_id: str) -> PoolFacts:
        stack, i = self.where[pool_id]
        return self.partitions[stack].facts[i]

    def state(self, facts: PoolFacts) -> _PoolState:
        state = self.states.get(facts.pool.pool_id)
        if state is None:
            state = self.states[facts.pool.pool_id] = _PoolState(facts, self.now)
        return state

    def _load(self, lease: Lease) -> None:
        """Count the lease in: its commitments on its pool's nodes, and when it next starts or ends."""
        start, end = _us(lease.start), _us(lease.end)
        now = self.now
        known = change = self._changes.get(lease.pool_id, _NEVER)
        if now < start < change:
            change = start
        if now < end < change:
            change = end
        if change != known:
            self._changes[lease.pool_id] = change
            if change < self.next_change:
                self.next_change = change
        if end <= now or lease.pool_id not in self.where:
            return  # over, or on a pool no longer offered: it holds nothing the cycle can give
        facts = self.facts_of(lease.pool_id)
        state = self.state(facts)
        nodes, accelerated = len(state.base), facts.accelerated
        lease_id, job_id, org_id, interruptible = lease.lease_id, lease.job_id, lease.org_id, lease.interruptible
        thousandths = 0  # of a device or of a core, summed exactly (units = thousandths / 1000)
        for allocation in lease.allocations:
            placement, demand = allocation.placement, allocation.demand
            if not 0 <= placement.node < nodes:
                continue  # a node no longer offered: nothing the cycle could give
            thousandths += demand.accelerator_thousandths if accelerated else demand.cpu_milli
            state.add(
                placement.node,
                _Commitment(start, end, placement, demand, "lease", lease_id, job_id, org_id, interruptible),
            )
        self._held.append((lease, facts, thousandths))

    @cached_property
    def class_capacity(self) -> dict[ComputeClass, float]:
        """NCU offered per compute class (for fair share; computed when a cycle first asks)."""
        capacity: dict[ComputeClass, float] = {}
        for f in self.facts:
            units = f.nodes_offered * f.units_per_node * f.ncu_per_unit
            capacity[f.compute_class] = capacity.get(f.compute_class, 0.0) + float(units)
        return capacity

    @cached_property
    def lease_ncu(self) -> dict[str, tuple[str, ComputeClass, float, str]]:
        """Per lease loaded: its organisation, compute class, NCU held and job."""
        return {
            lease.lease_id: (lease.org_id, facts.compute_class, _ncu(facts, thousandths), lease.job_id)
            for lease, facts, thousandths in self._held
        }

    @cached_property
    def usage(self) -> dict[str, dict[ComputeClass, float]]:
        """NCU held now per organisation and compute class, by the leases loaded (for fair share)."""
        usage: dict[str, dict[ComputeClass, float]] = {}
        for lease, facts, thousandths in self._held:
            if _us(lease.start) <= self.now:
                held = usage.setdefault(lease.org_id, {})
                held[facts.compute_class] = held.get(facts.compute_class, 0.0) + _ncu(facts, thousandths)
        return usage

    # -- filter -----------------------------------------------------------------------------------------------------

    def evaluate(self, part: _Partition, job: JobSpec, ready: int, *, counts: bool, open_now: bool) -> _Evaluation:
        """The hard constraints of ``job`` on every pool of the partition, in :class:`Reason` order."""
        view = part.demand(job)
        duration = job.duration // _US
        hours = duration / 3_600_000_000
        steps: list[tuple[Reason, np.ndarray]] = []
        if job.cpu_architecture is not None:
            steps.append((Reason.WRONG_ARCHITECTURE, part.arch_mask(job.cpu_architecture)))
        steps.append((Reason.WRONG_DEVICE, part.device_mask(job, view)))
        if job.domestic_only:
            steps.append((Reason.NOT_DOMESTIC, part.domestic))
        if not part.all_verified:
            steps.append((Reason.PROVIDER_UNVERIFIED, part.verified))
        if job.allowed_hubs:
            steps.append((Reason.OUTSIDE_HUBS, part.hub_mask(job.allowed_hubs)))
        if job.max_latency_ms is not None:
            steps.append((Reason.OVER_LATENCY, part.latency_mask(job.buyer_city or "", job.max_latency_ms)))
        if not job.interruptible and not part.all_on_demand:
            steps.append((Reason.INTERRUPTIBLE_ONLY, part.for_on_demand))
        if view.sharing_ok is not None:
            steps.append((Reason.NO_SHARING, view.sharing_ok))
        steps.append((Reason.NODE_TOO_SMALL, view.size_ok))
        steps.append((Reason.NOT_ENOUGH_MEMORY, view.memory_ok))
        steps.append((Reason.TOO_FEW_NODES, view.nodes_ok))
        steps.append((Reason.LEASE_LENGTH, part.lease_mask(duration)))
        deadline = _NEVER if job.deadline is None else _us(job.deadline)
        steps.append((Reason.OUTSIDE_WINDOW, part.window_mask(ready, duration, deadline)))
        if job.max_price_per_ncu_hour is not None:
            steps.append((Reason.OVER_PRICE_CAP, part.price_mask(job.max_price_per_ncu_hour)))
        if job.max_total_price is not None:
            cap = float(job.max_total_price) * (1 + _CAP_MARGIN)
            steps.append((Reason.OVER_PRICE_CAP, view.rate * hours <= cap))
        if open_now:
            steps.append((Reason.NOT_OPEN_YET, part.open_mask(ready)))
        tally: dict[Reason, int] | None = None
        if counts:
            tally = {}
            alive = np.ones(part.n, dtype=bool)
            for reason, ok in steps:
                refused = int(np.count_nonzero(alive & ~ok))
                if refused:
                    tally[reason] = tally.get(reason, 0) + refused
                alive &= ok
        else:
            alive = steps[0][1] & steps[1][1] if len(steps) > 1 else steps[0][1].copy()
            for _, ok in steps[2:]:
                np.logical_and(alive, ok, out=alive)
        west = job.tolerates_latency(self.config.latency_tolerant_ms)
        return _Evaluation(alive=alive, counts=tally, view=view, hours=hours, west=west)

    def ranked(self, part: _Partition, job: JobSpec, evaluation: _Evaluation, *, capacity_now: bool) -> np.ndarray:
        """Indices of the surviving pools, best first for the job's objective; with ``capacity_now``
        only those whose free capacity now could hold the job."""
        assert evaluation.view is not None  # noqa: S101 - set by evaluate
        order = evaluation.view.order(job.objective, evaluation.west)
        ranked = order[evaluation.alive[order]]
        if capacity_now and ranked.size:
            ranked = ranked[part.has_room(evaluation.view, ranked)]
        return ranked

    # -- exact check and score ---------------------------------------------------------------------------------------

    def option(
        self,
        job: JobSpec,
        facts: PoolFacts,
        ready: datetime,
        start: int,
        *,
        exclude: frozenset[str] = frozenset(),
    ) -> _Option | None:
        """The job on this pool from ``start``, exactly checked; None if it does not fit."""
        if start < _us(facts.pool.window_start) or job.stack is not facts.pool.stack:
            return None
        resolved = resolve(job, facts)
        if not isinstance(resolved, Resolved) or static_reason(job, facts, ready, resolved) is not None:
            return None
        return self._packed(job, facts, resolved, start, exclude=exclude)

    def _priced(
        self, job: JobSpec, facts: PoolFacts, ready: datetime, start: int
    ) -> tuple[Resolved, Decimal, bool] | None:
        """The job's exact demand and cost on this pool, and whether the pool is western-preferred for it;
        None if a hard constraint fails (as :meth:`option`, without packing)."""
        if start < _us(facts.pool.window_start) or job.stack is not facts.pool.stack:
            return None
        resolved = resolve(job, facts)
        if not isinstance(resolved, Resolved) or static_reason(job, facts, ready, resolved) is not None:
            return None
        west = facts.west and job.tolerates_latency(self.config.latency_tolerant_ms)
        return resolved, estimated_cost(facts.pool, resolved, job), west

    def _packed(
        self, job: JobSpec, facts: PoolFacts, resolved: Resolved, start: int, *, exclude: frozenset[str] = frozenset()
    ) -> _Option | None:
        end = start + job.duration // _US
        placed = self.state(facts).place(
            resolved.demand, resolved.nodes, start, end, policy=self.config.policy, mix=self.mix, exclude=exclude
        )
        if placed is None:
            return None
        return self._make_option(job, facts, resolved, start, end, placed[0], placed[1])

    def _make_option(
        self,
        job: JobSpec,
        facts: PoolFacts,
        resolved: Resolved,
        start: int,
        end: int,
        placements: tuple[Placement, ...],
        nodes_used: list[NodeState],
        costs: _Costs | None = None,
        footprint: _Footprint | None = None,
    ) -> _Option:
        cost, adjusted, west = costs or self._costs(job, facts, resolved)
        energy, carbon = footprint or self._footprint(job, facts, resolved)
        return _Option(
            facts=facts,
            resolved=resolved,
            start=start,
            end=end,
            placements=placements,
            nodes_used=nodes_used,
            cost=cost,
            energy_kwh=energy,
            carbon_kg=carbon,
            adjusted=adjusted,
            west_preferred=west,
        )

    def _costs(self, job: JobSpec, facts: PoolFacts, resolved: Resolved) -> _Costs:
        """The estimated cost of the job on this pool, its adjusted cost, and whether the pool is
        western-preferred for the job (whatever the placement)."""
        pool = facts.pool
        cost = estimated_cost(pool, resolved, job)
        west = facts.west and job.tolerates_latency(self.config.latency_tolerant_ms)
        factor = 1.0 + float(self.config.reliability_weight) * (1.0 - float(pool.provider_reliability))
        adjusted = float(cost) * factor * ((1.0 - float(self.config.west_price_tolerance)) if west else 1.0)
        return cost, adjusted, west

    def _footprint(self, job: JobSpec, facts: PoolFacts, resolved: Resolved) -> _Footprint:
        """The estimated energy (kWh) and carbon (kg) of the job on this pool."""
        pool = facts.pool
        hours = duration_hours(job.duration)
        energy = pool.unit_power_w * resolved.units * hours * Decimal(pool.pue) / 1000
        carbon = energy * Decimal(pool.grid_carbon_kg_per_kwh) * (_ONE - Decimal(pool.green_share))
        return (
            energy.quantize(ENERGY_PLACES, rounding=ROUND_HALF_UP),
            carbon.quantize(ENERGY_PLACES, rounding=ROUND_HALF_UP),
        )

    def key(self, job: JobSpec, option: _Option) -> tuple:
        pool = option.facts.pool
        reliability = -float(pool.provider_reliability)
        if job.objective is Objective.CHEAPEST:
            return (
                to_fen(option.cost),
                not option.west_preferred,
                option.frag,
                reliability,
                option.carbon_kg,
                pool.pool_id,
            )
        if job.objective is Objective.EARLIEST:
            return (option.start, option.adjusted, option.frag, reliability, option.carbon_kg, pool.pool_id)
        return (option.carbon_kg, option.adjusted, option.frag, option.start, pool.pool_id)

    def fragmentation_growth(self, option: _Option) -> float:
        if self.mix is None:
            return 0.0
        growth = 0.0
        demand = option.resolved.demand
        for placement in option.placements:
            node = option.nodes_used[placement.node]
            free = node.free_milli
            after = list(free)
            for d in placement.devices:
                after[d] -= placement.accelerator_milli
            growth += self._fragmentation(
                node.shape, node.free_cpu_milli - demand.cpu_milli, node.free_memory_mib - demand.memory_mib, after
            ) - self._fragmentation(node.shape, node.free_cpu_milli, node.free_memory_mib, free)
        return growth

    def _fragmentation(self, shape: NodeShape, cpu: int, memory: int, free: list[int]) -> float:
        """``packing.fragmentation`` of a node in this state against the cycle's mix, memoised: most nodes the
        cycle looks at are in one of a few states (whole, or one common task short of whole)."""
        key = (shape, cpu, memory, tuple(free))
        value = self._frag_cache.get(key)
        if value is None:
            assert self.mix is not None  # noqa: S101 - only asked with a mix
            value = self._frag_cache[key] = fragmentation(NodeState(shape, cpu, memory, free), self.mix)
        return value

    def best(self, job: JobSpec, ready: datetime) -> _Option | None:
        """The best placement of the job starting at ``ready`` (now or within the lookahead)."""
        part = self.partitions.get(job.stack)
        if part is None:
            return None
        start = _us(ready)
        evaluation = self.evaluate(part, job, start, counts=False, open_now=True)
        assert evaluation.view is not None  # noqa: S101 - set by evaluate
        if start == self.now:
            np.logical_and(evaluation.alive, part.room(evaluation.view), out=evaluation.alive)
        ranked = self.ranked(part, job, evaluation, capacity_now=False)
        tied: list[_Option] = []
        bound: tuple[float, float, float] | None = None
        checks = 0
        tried = 0  # options that fit, counted against max_tie_candidates (some are only counted, see below)
        head: tuple[Decimal, bool] | None = None  # the best (cost in fen, not west-preferred) among ``tied``
        cheapest = job.objective is Objective.CHEAPEST
        for chunk in (ranked[:_CHUNK], ranked[_CHUNK:]):
            for j in chunk.tolist():
                if bound is not None:
                    if not self._within(job, evaluation, j, bound):
                        return self._pick(job, tied)
                elif checks >= self.config.max_exact_checks:
                    return None
                checks += 1
                facts = part.facts[j]
                if cheapest and head is not None:
                    # the cheapest objective's first keys are exact before packing: a pool dearer to the fen (or
                    # as dear, without the western preference the best has) cannot be picked, so it is only
                    # checked for fitting (it still counts against max_tie_candidates), not packed and scored
                    found = self._priced(job, facts, ready, start)
                    if found is None:
                        continue
                    resolved, cost, west = found
                    if (to_fen(cost), not west) > head:
                        end = start + job.duration // _US
                        if self.state(facts).feasible(resolved.demand, resolved.nodes, start, end):
                            tried += 1
                            if tried >= self.config.max_tie_candidates:
                                return self._pick(job, tied)
                        continue
                    option = self._packed(job, facts, resolved, start)
                else:
                    option = self.option(job, facts, ready, start)
                if option is None:
                    continue
                if bound is None:
                    bound = (evaluation.cost(j), evaluation.carbon(j), evaluation.adjusted(j))
                tied.append(option)
                if cheapest:
                    first = (to_fen(option.cost), not option.west_preferred)
                    head = first if head is None else min(head, first)
                tried += 1
                if tried >= self.config.max_tie_candidates:
                    return self._pick(job, tied)
        return self._pick(job, tied) if tied else None

    def _within(self, job: JobSpec, evaluation: _Evaluation, j: int, bound: tuple[float, float, float]) -> bool:
        """Whether pool j may tie with the first feasible pool (then the exact keys decide)."""
        cost, carbon, adjusted = bound
        if job.objective is Objective.CHEAPEST:
            return evaluation.cost(j) <= cost + _FEN + cost * _CAP_MARGIN
        if job.objective is Objective.EARLIEST:
            return evaluation.adjusted(j) <= adjusted * (1 + _CAP_MARGIN)
        return round(evaluation.carbon(j), 3) <= round(carbon, 3) and evaluation.adjusted(j) <= adjusted * (
            1 + _CAP_MARGIN
        )

    def _pick(self, job: JobSpec, options: list[_Option]) -> _Option:
        if len(options) > 1:
            keys = [self.key(job, o) for o in options]
            head = min(keys)[:2]
            for option, key in zip(options, keys, strict=True):
                if key[:2] == head:
                    option.frag = self.fragmentation_growth(option)
        return min(options, key=lambda o: self.key(job, o))

    # -- commit -----------------------------------------------------------------------------------------------------

    def commit(self, job: JobSpec, option: _Option, *, kind: str = "assignment") -> tuple[NodeAllocation, ...]:
        facts = option.facts
        state = self.state(facts)
        allocations = []
        for placement in option.placements:
            commitment = _Commitment(
                option.start,
                option.end,
                placement,
                option.resolved.demand,
                kind=kind,
                job_id=job.job_id,
                org_id=job.org_id,
                interruptible=job.interruptible,
            )
            state.add(placement.node, commitment)
            allocations.append(NodeAllocation(placement, option.resolved.demand))
        self._refresh(facts)
        return tuple(allocations)

    def _refresh(self, facts: PoolFacts) -> None:
        stack, i = self.where[facts.pool.pool_id]
        self.partitions[stack].update(i, self.state(facts))

    def assignment(self, job: JobSpec, option: _Option, allocations: tuple[NodeAllocation, ...]) -> Assignment:
        pool = option.facts.pool
        ncu = option.resolved.ncu
        return Assignment(
            job_id=job.job_id,
            org_id=job.org_id,
            pool_id=pool.pool_id,
            pool_identifier=pool.identifier,
            provider_id=pool.provider_id,
            hub=pool.hub,
            city=pool.city,
            compute_class=option.facts.compute_class,
            start=_at(option.start),
            end=_at(option.end),
            allocations=allocations,
            unit_price=pool.unit_price,
            ncu=ncu,
            ncu_hours=ncu_hours(ncu, Decimal(option.end - option.start) / 1_000_000),
            estimated_cost=to_fen(option.cost),
            energy_kwh=option.energy_kwh,
            carbon_kg=option.carbon_kg,
            interruptible=job.interruptible,
            pricing_type=pool.pricing_type,
        )

    # -- explanations -------------------------------------------------------------------------------------------------

    def explain(
        self,
        job: JobSpec,
        ready: datetime,
        *,
        occupancy: bool,
        note: str = "",
        evaluation: _Evaluation | None = None,
    ) -> Explanation:
        """Counts per reason. With ``occupancy`` it is asked after :meth:`best` found nothing, so every
        pool that passes the static checks and is open is counted as having no free capacity.
        ``evaluation``: the partition's evaluation of the job at ``ready`` with counts (and the opening check
        with ``occupancy``), when the caller has it."""
        part = self.partitions.get(job.stack)
        counts: dict[Reason, int] = {}
        if self.total - (part.n if part else 0):
            counts[Reason.WRONG_STACK] = self.total - (part.n if part else 0)
        fit = 0
        if part is not None:
            if evaluation is None:
                evaluation = self.evaluate(part, job, _us(ready), counts=True, open_now=occupancy)
            assert evaluation.counts is not None  # noqa: S101 - asked for counts
            for reason, n in evaluation.counts.items():
                counts[reason] = counts.get(reason, 0) + n
            survivors = int(np.count_nonzero(evaluation.alive))
            if occupancy:
                # every survivor was tried in full and none could take the job now
                counts[Reason.NO_CAPACITY] = counts.get(Reason.NO_CAPACITY, 0) + survivors
            else:
                fit = survivors
        return Explanation.from_counts(self.total, fit, counts, note)

    # -- backfill and preemption ------------------------------------------------------------------------------------

    def static_order(
        self, job: JobSpec, ready: datetime, evaluation: _Evaluation | None = None
    ) -> tuple[_Partition | None, np.ndarray]:
        """The pools that pass the static checks, best first; ``evaluation``: the partition's evaluation of
        the job at ``ready`` without the opening check, when the caller has it."""
        part = self.partitions.get(job.stack)
        if part is None:
            return None, np.zeros(0, dtype=np.intp)
        if evaluation is None:
            evaluation = self.evaluate(part, job, _us(ready), counts=False, open_now=False)
        return part, self.ranked(part, job, evaluation, capacity_now=False)

    def earliest(
        self, job: JobSpec, ready: datetime, limit: int, evaluation: _Evaluation | None = None
    ) -> list[_Option]:
        """Options with their earliest feasible start on up to ``limit`` pools, in the objective's order
        (for the earliest objective, pools that could take the job now first)."""
        options: list[_Option] = []
        resolutions = self._resolutions(job)
        for rank, facts in enumerate(self._earliest_candidates(job, ready, limit, evaluation)):
            resolved = self._exact(job, facts, ready, resolutions)
            if resolved is None:
                continue
            option = self._earliest_on(job, facts, resolved, ready)
            if option is None:
                continue
            option.rank = rank
            options.append(option)
        return options

    def quote_options(
        self, job: JobSpec, ready: datetime, pool_limit: int, limit: int, evaluation: _Evaluation | None = None
    ) -> list[_Option]:
        """Among the options :meth:`earliest` finds on up to ``pool_limit`` pools, enough that the best ``limit``
        of them by :meth:`key` (their fragmentation growth counted) are the best ``limit`` of them all.

        The first two keys of a pool are known before it is packed: the cost in fen and the western preference
        (cheapest), the carbon and the adjusted cost (greenest), and for the earliest objective the adjusted cost
        and a lower bound of the start, the later of ``ready`` and the offer's opening. Pools are packed in the
        order of those keys; once ``limit`` options are found, a pool whose first keys are above the first keys
        of the ``limit``-th best found ranks after ``limit`` options whatever its placement, and so does every
        pool after it. ``evaluation``: as for :meth:`static_order`."""
        if limit < 0:  # a quote of all but the last options: all are needed
            return self.earliest(job, ready, pool_limit, evaluation)
        candidates = self._earliest_candidates(job, ready, pool_limit, evaluation)
        if limit == 0:
            return []
        ready_us = _us(ready)
        objective = job.objective
        ranked: list[tuple[tuple, int, PoolFacts, Resolved, _Costs, _Footprint | None]] = []
        resolutions = self._resolutions(job)
        prices = self._prices(job)
        for rank, facts in enumerate(candidates):
            resolved = self._exact(job, facts, ready, resolutions)
            if resolved is None:
                continue
            pool_id = facts.pool.pool_id
            priced = prices.get(pool_id)
            if priced is None:
                costs = self._costs(job, facts, resolved)
                priced = prices[pool_id] = (costs, to_fen(costs[0]))
            costs, fen = priced
            _, adjusted, west = costs
            footprint = None
            if objective is Objective.CHEAPEST:
                first: tuple = (fen, not west)
            elif objective is Objective.EARLIEST:
                first = (max(ready_us, _us(facts.pool.window_start)), adjusted)
            else:
                footprint = self._footprint(job, facts, resolved)
                first = (footprint[1], adjusted)
            ranked.append((first, rank, facts, resolved, costs, footprint))
        ranked.sort(key=lambda item: (item[0], item[1]))
        options: list[_Option] = []
        found: list[tuple] = []  # the first two keys of the options found, ascending
        for first, rank, facts, resolved, costs, footprint in ranked:
            if len(found) >= limit and first > found[limit - 1]:
                break
            option = self._earliest_on(job, facts, resolved, ready, costs, footprint)
            if option is None:
                continue
            option.rank = rank
            options.append(option)
            insort(found, self.key(job, option)[:2])
        return options

    def _earliest_candidates(
        self, job: JobSpec, ready: datetime, limit: int, evaluation: _Evaluation | None = None
    ) -> list[PoolFacts]:
        """Up to ``limit`` pools that pass the vectorised filter, in the objective's order (for the earliest
        objective, pools that could take the job now first)."""
        part, order = self.static_order(job, ready, evaluation)
        if part is None:
            return []
        start = _us(ready)
        if job.objective is Objective.EARLIEST and start == self.now and order.size:
            room = part.has_room(part.demand(job), order) & (part.window_start[order] <= start)
            order = np.concatenate((order[room], order[~room]))
        return [part.facts[j] for j in order[:limit].tolist()]

    def _exact(
        self, job: JobSpec, facts: PoolFacts, ready: datetime, resolutions: dict[str, Resolved | Reason]
    ) -> Resolved | None:
        """The job's demand on this pool if the pool passes every static check, exactly; else None.
        ``resolutions``: :meth:`_resolutions` of the job."""
        pool_id = facts.pool.pool_id
        resolved = resolutions.get(pool_id)
        if resolved is None:
            resolved = resolutions[pool_id] = resolve(job, facts)
        if not isinstance(resolved, Resolved) or static_reason(job, facts, ready, resolved) is not None:
            return None
        return resolved

    def _resolutions(self, job: JobSpec) -> dict[str, Resolved | Reason]:
        """:func:`~scheduler.domain.demand.resolve` of the job on the pools, by pool id as they are asked for;
        kept per demand (all that resolve reads of a job), so jobs of the same shape share them."""
        found = self._resolutions_kept.get(_demand_key(job))
        if found is None:
            if len(self._resolutions_kept) >= _DEMANDS_KEPT:
                self._resolutions_kept = {}
            found = self._resolutions_kept[_demand_key(job)] = {}
        return found

    def _prices(self, job: JobSpec) -> dict[str, tuple[_Costs, Decimal]]:
        """:meth:`_costs` of the job on the pools (with the cost in fen), by pool id as they are asked for; kept
        per demand, duration and tolerance of latency (all the costs read of a job)."""
        key = (_demand_key(job), job.duration, job.tolerates_latency(self.config.latency_tolerant_ms))
        found = self._prices_kept.get(key)
        if found is None:
            if len(self._prices_kept) >= _DEMANDS_KEPT:
                self._prices_kept = {}
            found = self._prices_kept[key] = {}
        return found

    def _earliest_on(
        self,
        job: JobSpec,
        facts: PoolFacts,
        resolved: Resolved,
        ready: datetime,
        costs: _Costs | None = None,
        footprint: _Footprint | None = None,
    ) -> _Option | None:
        """The job on this pool at its earliest feasible start (within the offer window and the deadline)."""
        pool = facts.pool
        duration = job.duration // _US
        first = max(_us(ready), _us(pool.window_start))
        limit_end = min(
            _NEVER if pool.window_end is None else _us(pool.window_end),
            _NEVER if job.deadline is None else _us(job.deadline),
        )
        found = self.state(facts).earliest(
            resolved.demand, resolved.nodes, first, duration, limit_end, policy=self.config.policy, mix=self.mix
        )
        if found is None:
            return None
        start, placements, nodes = found
        return self._make_option(job, facts, resolved, start, start + duration, placements, nodes, costs, footprint)

    def reserve(self, job: JobSpec, ready: datetime) -> Reservation | None:
        options = self.earliest(job, ready, self.config.reservation_pool_limit)
        if not options:
            return None
        chosen = min(options, key=lambda o: (o.start, o.rank))
        allocations = self.commit(job, chosen, kind="reservation")
        return Reservation(job.job_id, chosen.facts.pool.pool_id, _at(chosen.start), _at(chosen.end), allocations)

    def preempt(self, job: JobSpec) -> tuple[_Option, list[str]] | None:
        """The pool and the fewest interruptible leases to end so that the job fits now.

        The search counts nodes that would fit (a gang fits iff enough nodes do), and asks the packer
        only for the chosen pool."""
        part, order = self.static_order(job, self.now_dt)
        if part is None:
            return None
        start, end = self.now, self.now + job.duration // _US
        best: tuple[tuple[int, int, int, int], PoolFacts, list[str]] | None = None
        tried = 0
        for rank, j in enumerate(order.tolist()):
            if tried >= self.config.preemption_pool_limit:
                break
            facts = part.facts[j]
            state = self.states.get(facts.pool.pool_id)
            if state is None or facts.pool.window_start > self.now_dt:
                continue
            leases = state.interruptible_leases(start, end)
            if not leases:
                continue
            tried += 1
            resolved = resolve(job, facts)
            if not isinstance(resolved, Resolved):
                continue
            demand, count = resolved.demand, resolved.nodes
            if not state.feasible(demand, count, start, end, frozenset(leases)):
                continue  # even with every interruptible lease gone the job does not fit here
            victims = sorted(leases, key=lambda lid: (-leases[lid][0].start, _commitment_units(leases[lid]), lid))
            removed: list[str] = []
            for lease_id in victims:
                removed.append(lease_id)
                if state.feasible(demand, count, start, end, frozenset(removed)):
                    break
            for lease_id in list(reversed(removed[:-1])):  # keep every lease the job does not need gone
                trial = [lid for lid in removed if lid != lease_id]
                if state.feasible(demand, count, start, end, frozenset(trial)):
                    removed = trial
            units = sum(_commitment_units(leases[lid]) for lid in removed)
            lost = sum((self.now - leases[lid][0].start) * _commitment_units(leases[lid]) for lid in removed)
            score = (len(removed), lost, units, rank)
            if best is None or score < best[0]:
                best = (score, facts, removed)
        if best is None:
            return None
        _, facts, removed = best
        if self.option(job, facts, self.now_dt, start, exclude=frozenset(removed)) is None:
            return None  # the packer disagrees with the node count: leave the leases alone
        self.state(facts).remove_leases(set(removed))
        fresh = self.option(job, facts, self.now_dt, start)
        return (fresh, removed) if fresh is not None else None


def _view_key(job: JobSpec) -> tuple:
    """All that a partition's :class:`_DemandView` reads of a job (device models are masked apart)."""
    return (
        job.stack,
        job.capacity,
        job.accelerators_per_node,
        job.accelerator_milli,
        job.nodes,
        job.cpu_milli_per_node,
        job.memory_mib_per_node,
        job.storage_gib_per_node,
        job.accelerator_memory_gib,
    )


def _demand_key(job: JobSpec) -> tuple:
    """All that :func:`~scheduler.domain.demand.resolve` reads of a job: the demand view's, and the device models."""
    return (*_view_key(job), job.device_models)


def _ncu(facts: PoolFacts, thousandths: int) -> float:
    """NCU held by ``thousandths`` of a device (or of a core, on a CPU pool) of the pool."""
    return float(Decimal(thousandths) / 1000 * facts.ncu_per_unit)


def _commitment_units(commitments: list[_Commitment]) -> int:
    return sum(c.demand.accelerator_thousandths or c.demand.cpu_milli for c in commitments)


def _kept_for(memos: dict[tuple, dict[str, _T]], pools: Collection[str]) -> dict[tuple, dict[str, _T]]:
    """Per-pool memos (per demand, by pool id) cut down to the given pools."""
    return {key: {pool_id: v for pool_id, v in memo.items() if pool_id in pools} for key, memo in memos.items()}


def _queue_mix(jobs: Iterable[JobSpec], size: int, facts: Iterable[PoolFacts]) -> WorkloadMix | None:
    """The workload mix the fragmentation measure expects: the most common per-node demands of the queue,
    plus whole-node demands (one per node size of the market) for ``WHOLE_NODE_SHARE`` of the mix, so that
    breaking a whole node always counts as fragmentation: placements leave nodes either full or whole."""
    counts: dict[SliceDemand, int] = {}
    for job in jobs:
        if job.stack is SoftwareStack.CPU or job.capacity is not None:
            continue
        demand = SliceDemand(
            job.cpu_milli_per_node,
            job.memory_mib_per_node,
            accelerators=job.accelerators_per_node,
            accelerator_milli=job.accelerator_milli,
        )
        counts[demand] = counts.get(demand, 0) + 1
    sizes = _node_sizes(facts)
    if not counts and not sizes:
        return None
    common = heapq.nsmallest(size, counts.items(), key=lambda item: (-item[1], _demand_order(item[0])))
    total = sum(n for _, n in common)
    whole_share = (WHOLE_NODE_SHARE if total else 1.0) if sizes else 0.0
    mix: dict[SliceDemand, float] = {demand: (1 - whole_share) * n / total for demand, n in common}
    for units in sizes:
        whole = SliceDemand(0, 0, accelerators=units)
        mix[whole] = mix.get(whole, 0.0) + whole_share / len(sizes)
    return WorkloadMix(tuple(sorted(mix.items(), key=lambda item: _demand_order(item[0]))))


def _node_sizes(facts: Iterable[PoolFacts]) -> list[int]:
    """The accelerators per node of the accelerated pools, each size once, ascending."""
    return sorted({f.units_per_node for f in facts if f.accelerated})


def _demand_order(demand: SliceDemand) -> tuple[int, int, int, int]:
    return (demand.accelerators, demand.accelerator_milli, demand.cpu_milli, demand.memory_mib)


# --- entry points -----------------------------------------------------------------------------------------------------


def schedule_cycle(
    jobs: Sequence[JobSpec],
    pools: Sequence[PoolOffer],
    leases: Sequence[Lease],
    now: datetime,
    config: MatchingConfig | None = None,
) -> CycleResult:
    """One scheduling cycle over the queued ``jobs`` (see the module doc)."""
    config = config or MatchingConfig()
    if len({job.job_id for job in jobs}) != len(jobs):
        raise ValueError("a job is queued twice")
    if not config.repack or len(jobs) < 2:
        return _fair_share_pass(jobs, pools, leases, now, config)
    uncontested = _stakes_pass(jobs, pools, leases, now, config)
    if uncontested is not None:
        return uncontested
    # the fair-share pass decides which jobs get capacity; its placements are only kept if the repacking fails,
    # so it first runs without the fragmentation tie-breaks (the cheapest of its fitting options wins)
    quick = _fair_share_pass(jobs, pools, leases, now, replace(config, max_tie_candidates=1))
    if len(quick.assignments) > 1 and not quick.preemptions:
        repacked = _repack(quick, jobs, pools, leases, now, config)
        if repacked is not None:
            return repacked
    return _fair_share_pass(jobs, pools, leases, now, config)


def _fair_share_pass(
    jobs: Sequence[JobSpec], pools: Sequence[PoolOffer], leases: Sequence[Lease], now: datetime, config: MatchingConfig
) -> CycleResult:
    """Jobs in fair-share order, each on its best placement given the jobs placed before it."""
    market = _Market(pools, now=now, config=config, leases=leases, jobs=jobs)
    queue = FairShareQueue(jobs, now=now, capacity=market.class_capacity, usage=market.usage, config=config)
    assignments: list[Assignment] = []
    pending: dict[str, Explanation] = {}
    preemptions: list[Preemption] = []
    reservations: list[Reservation] = []
    for job in queue:
        ready = job.ready_at(now)
        if ready > now + config.lookahead:
            pending[job.job_id] = market.explain(
                job, ready, occupancy=False, note=f"waits for its earliest start {ready.isoformat()}"
            )
            continue
        option = market.best(job, ready)
        if option is not None:
            assignment = market.assignment(job, option, market.commit(job, option))
            assignments.append(assignment)
            queue.charge(job.org_id, assignment.compute_class, float(assignment.ncu))
            continue
        explanation = market.explain(job, ready, occupancy=True)
        if explanation.never_fits:
            pending[job.job_id] = explanation
            continue
        blocked_by_capacity = any(reason is Reason.NO_CAPACITY for reason, _ in explanation.counts)
        if config.preemption and not job.interruptible and ready == now and blocked_by_capacity:
            found = market.preempt(job)
            if found is not None:
                option, victims = found
                for lease_id in victims:
                    org_id, compute_class, ncu, victim_job = market.lease_ncu[lease_id]
                    preemptions.append(Preemption(lease_id, option.facts.pool.pool_id, victim_job, org_id, job.job_id))
                    queue.refund(org_id, compute_class, ncu)
                assignment = market.assignment(job, option, market.commit(job, option))
                assignments.append(assignment)
                queue.charge(job.org_id, assignment.compute_class, float(assignment.ncu))
                continue
        if len(reservations) < config.max_reservations:
            reservation = market.reserve(job, ready)
            if reservation is not None:
                reservations.append(reservation)
                explanation = replace(
                    explanation,
                    note=f"capacity reserved on pool {reservation.pool_id} from {reservation.start.isoformat()}",
                )
        pending[job.job_id] = explanation
    return CycleResult(
        assignments=tuple(assignments),
        pending=pending,
        preemptions=tuple(preemptions),
        reservations=tuple(reservations),
    )


def _stakes_pass(
    jobs: Sequence[JobSpec], pools: Sequence[PoolOffer], leases: Sequence[Lease], now: datetime, config: MatchingConfig
) -> CycleResult | None:
    """Every job in order of its stakes (the cost of its cheapest pool that passes the static checks, highest
    first), each on its best placement; None as soon as a job ready now cannot be placed though some pool could
    take it (capacity, or an offer not open yet): then the queue is contested and the fair-share pass must decide
    who gets capacity. When it returns a plan, every job it left pending can never run in this market (or waits
    for its own earliest start), so the fair-share pass could not have placed any job this plan leaves out:
    who gets capacity was never at stake, only where, and this is the repacked plan at the price of one pass."""
    market = _Market(pools, now=now, config=config, leases=leases, jobs=jobs)
    later = now + config.lookahead
    stakes: dict[str, float] = {}
    for job in jobs:
        ready = job.ready_at(now)
        part = market.partitions.get(job.stack)
        stake = 0.0
        if part is not None and ready <= later:
            evaluation = market.evaluate(part, job, _us(ready), counts=False, open_now=False)
            assert evaluation.view is not None  # noqa: S101 - set by evaluate
            if evaluation.alive.any():
                stake = float(evaluation.view.rate[evaluation.alive].min()) * evaluation.hours
        stakes[job.job_id] = stake
    assignments: list[Assignment] = []
    pending: dict[str, Explanation] = {}
    for job in sorted(jobs, key=lambda j: (-stakes[j.job_id], j.submitted_at, j.job_id)):
        ready = job.ready_at(now)
        if ready > later:
            pending[job.job_id] = market.explain(
                job, ready, occupancy=False, note=f"waits for its earliest start {ready.isoformat()}"
            )
            continue
        option = market.best(job, ready)
        if option is None:
            explanation = market.explain(job, ready, occupancy=True)
            if not explanation.never_fits:
                return None
            pending[job.job_id] = explanation
            continue
        assignments.append(market.assignment(job, option, market.commit(job, option)))
    return CycleResult(assignments=tuple(assignments), pending=pending)


def _repack(
    first: CycleResult,
    jobs: Sequence[JobSpec],
    pools: Sequence[PoolOffer],
    leases: Sequence[Lease],
    now: datetime,
    config: MatchingConfig,
) -> CycleResult | None:
    """The jobs the fair-share pass placed, placed again on the same market in order of their stakes (the cost
    the first pass found for them, highest first; then the first pass's order), each on its best placement for
    its objective; then the first pass's reservations again. The fair-share pass decides *which* jobs get
    capacity this cycle; this pass only decides *where*: a greedy pass that lets a short slice take the cheap
    capacity a long 8-device job needed costs the batch far more than the reverse (the saving of a cheaper pool
    is proportional to size × duration), and placing large demands first also packs nodes better (first fit
    decreasing). Kept only if every job placed before is placed again, every reservation is made again no later, and
    the batch's total cost is lower; otherwise None (the first pass stands). A single job is placed exactly as
    in the first pass, so "cheapest" still never takes a costlier pool for a job on its own."""
    by_id = {job.job_id: job for job in jobs}
    rank = {a.job_id: i for i, a in enumerate(first.assignments)}
    order = sorted(first.assignments, key=lambda a: (-a.estimated_cost, rank[a.job_id]))
    market = _Market(pools, now=now, config=config, leases=leases, jobs=jobs)
    placed: dict[str, Assignment] = {}
    for previous in order:
        job = by_id[previous.job_id]
        option = market.best(job, job.ready_at(now))
        if option is None:
            return None
        placed[job.job_id] = market.assignment(job, option, market.commit(job, option))
    reservations = []
    for reservation in first.reservations:
        job = by_id[reservation.job_id]
        again = market.reserve(job, job.ready_at(now))
        if again is None or again.start > reservation.start:
            return None  # the repacked plan would delay the job the first pass reserved for (backfill's promise)
        reservations.append(again)
    before = sum((a.estimated_cost for a in first.assignments), _ZERO)
    after = sum((a.estimated_cost for a in placed.values()), _ZERO)
    if after >= before:
        return None
    pending = dict(first.pending)
    for reservation, again in zip(first.reservations, reservations, strict=True):
        explanation = pending.get(reservation.job_id)
        if explanation is not None:
            note = f"capacity reserved on pool {again.pool_id} from {again.start.isoformat()}"
            pending[reservation.job_id] = replace(explanation, note=note)
    return CycleResult(
        assignments=tuple(placed[a.job_id] for a in first.assignments),
        pending=pending,
        preemptions=(),
        reservations=tuple(reservations),
    )


def quote(
    job: JobSpec,
    pools: Sequence[PoolOffer],
    leases: Sequence[Lease] = (),
    *,
    now: datetime,
    config: MatchingConfig | None = None,
    limit: int = 3,
) -> QuoteResult:
    """The best ``limit`` placements of the job (one per pool), each at its expected start, without submitting."""
    config = config or MatchingConfig()
    market = _Market(pools, now=now, config=config, leases=leases, jobs=(job,))
    return _quote_on(market, job, now=now, limit=limit)


def _quote_on(market: _Market, job: JobSpec, *, now: datetime, limit: int) -> QuoteResult:
    ready = job.ready_at(now)
    part = market.partitions.get(job.stack)
    # one evaluation of the static checks serves the ranking of the pools and the explanation
    evaluation = None if part is None else market.evaluate(part, job, _us(ready), counts=True, open_now=False)
    options = market.quote_options(job, ready, market.config.quote_pool_limit, limit, evaluation)
    for option in options:
        if len(options) > 1:
            option.frag = market.fragmentation_growth(option)
    options.sort(key=lambda o: market.key(job, o))
    chosen = tuple(
        market.assignment(job, o, tuple(NodeAllocation(p, o.resolved.demand) for p in o.placements))
        for o in options[:limit]
    )
    return QuoteResult(options=chosen, explanation=market.explain(job, ready, occupancy=False, evaluation=evaluation))


class QuoteMarket:
    """The market prepared once for many quotes and submission checks.

    Building the engine's market (each pool's facts, the per-stack arrays,
    the leases' commitments on every node, the free capacity now) is most of
    the work of a quote, and it is the same for every quote until the market
    changes. A ``QuoteMarket`` keeps it and answers :meth:`quote` and
    :meth:`check_submission` exactly as :func:`quote` and
    :func:`check_submission` would on the same pools and leases at the given
    ``now``, as long as :meth:`usable_at` says so: ``now`` is not before the
    moment it was prepared and no lease started or ended between the two (the
    market a fresh build would load then is the same; only its clock moves). Quotes never
    change it (a quote commits nothing). What differs per job is the
    workload mix of the fragmentation measure (the job's own demand): it is
    set per call, with its fragmentation memo kept per mix.
    Calls are serialised by a lock (processes may serve requests on threads).

    Prepared again after the market changed, it may be given the market it
    replaces (``donor``) to start from what that one worked out and still
    holds, so that the quotes after a change do not start cold:

    - per pool whose facts are the same objects (the same offer, as
      :func:`~scheduler.domain.demand.pool_facts` memoises them), what it
      read of the pool for a job's shape: how the demand resolves and the
      costs;
    - the workload mixes and their fragmentation memos, when the pools'
      node sizes are the same;
    - when no lease started or ended between the donor's moment and ``now``:
      per pool whose facts and leases (the same leases, in the same order)
      are the same, the pool's commitments with the free capacity, windows
      and packing state worked out from them, and what its leases hold and
      when they next start or end (a lease is not loaded again: that was
      three quarters of preparing a market of 2,100 leases after a cycle).

    Everything else is built afresh, and the answers are those of a market
    built without a donor (property-tested). The two share one lock from
    then on: the pool states they share are used by one call at a time."""

    def __init__(
        self,
        pools: Sequence[PoolOffer],
        leases: Sequence[Lease] = (),
        *,
        now: datetime,
        config: MatchingConfig | None = None,
        donor: QuoteMarket | None = None,
    ) -> None:
        self.config = config or MatchingConfig()
        if donor is not None and donor.config != self.config:
            donor = None
        self._lock = donor._lock if donor is not None else threading.Lock()
        with self._lock:  # a donor's pool states become this market's too: no call may use them meanwhile
            self._market = _Market(
                pools,
                now=now,
                config=self.config,
                leases=leases,
                jobs=(),
                donor=donor._market if donor is not None else None,
                donor_holds=donor is not None and donor.usable_at(now),
            )
        self._prepared, self._prepared_at = self._market.now, now
        self._next_change = self._market.next_change  # the first start or end of a lease after it is prepared
        self._facts = self._market.facts
        self._sizes = _node_sizes(self._facts)
        self._mixes: dict[WorkloadMix | None, tuple[WorkloadMix | None, dict]] = {}
        self._job_mixes: dict[tuple[int, int, int, int] | None, tuple[WorkloadMix | None, dict]] = {}
        if donor is not None and donor._sizes == self._sizes:  # a job's mix reads only the node sizes
            self._mixes, self._job_mixes = dict(donor._mixes), dict(donor._job_mixes)

    @property
    def prepared_at(self) -> datetime:
        """The moment the market was prepared at."""
        return self._prepared_at

    def usable_at(self, now: datetime) -> bool:
        """Whether the prepared market is the one a fresh build at ``now`` would make."""
        return self._prepared <= _us(now) < self._next_change

    def _at(self, job: JobSpec, now: datetime) -> _Market:
        if not self.usable_at(now):
            raise ValueError("the prepared market does not hold at this time: prepare it again")
        market = self._market
        moment = _us(now)
        market.now, market.now_dt = moment, now
        for state in market.states.values():  # every time: a market started from this one shares some of them
            state.now = moment
        market.mix, market._frag_cache = self._mix_of(job)
        return market

    def _mix_of(self, job: JobSpec) -> tuple[WorkloadMix | None, dict]:
        """The workload mix the job's quote measures fragmentation against, with its fragmentation memo; kept
        per per-node demand (all that the mix reads of a job)."""
        if job.stack is SoftwareStack.CPU or job.capacity is not None:
            key = None
        else:
            key = (job.cpu_milli_per_node, job.memory_mib_per_node, job.accelerators_per_node, job.accelerator_milli)
        found = self._job_mixes.get(key)
        if found is None:
            mix = self.config.mix
            if mix is None:
                mix = _queue_mix((job,), self.config.mix_size, self._facts)
            # equal mixes share one object (the packing tables are found by identity) and one fragmentation memo
            found = self._job_mixes[key] = self._mixes.setdefault(mix, (mix, {}))
        return found

    def quote(self, job: JobSpec, *, now: datetime, limit: int = 3) -> QuoteResult:
        """:func:`quote` of the job on this market at ``now``."""
        with self._lock:
            return _quote_on(self._at(job, now), job, now=now, limit=limit)

    def check_submission(self, job: JobSpec, *, now: datetime) -> Explanation:
        """:func:`check_submission` of the job on this market at ``now``."""
        with self._lock:
            explanation = self._at(job, now).explain(job, job.ready_at(now), occupancy=False)
        if explanation.never_fits:
            raise JobNeverFits(explanation)
        return explanation


def explain(
    job: JobSpec,
    pools: Sequence[PoolOffer],
    leases: Sequence[Lease] = (),
    *,
    now: datetime,
    config: MatchingConfig | None = None,
    occupancy: bool = True,
) -> Explanation:
    """Why the job fits no pool now (``occupancy``) or ever (without it), pool by pool.

    With occupancy, pools that pass every static check are counted as fitting
    only if the job could be placed on them now."""
    config = config or MatchingConfig()
    market = _Market(pools, now=now, config=config, leases=leases, jobs=(job,))
    ready = job.ready_at(now)
    if not occupancy:
        return market.explain(job, ready, occupancy=False)
    part = market.partitions.get(job.stack)
    if part is None:
        return market.explain(job, ready, occupancy=True)
    start = _us(ready)
    evaluation = market.evaluate(part, job, start, counts=True, open_now=True)
    assert evaluation.counts is not None  # noqa: S101 - asked for counts
    counts = dict(evaluation.counts)
    if market.total - part.n:
        counts[Reason.WRONG_STACK] = market.total - part.n
    survivors = int(np.count_nonzero(evaluation.alive))
    roomy = market.ranked(part, job, evaluation, capacity_now=start == market.now)
    fit = sum(1 for j in roomy.tolist() if market.option(job, part.facts[j], ready, start) is not None)
    if survivors - fit:
        counts[Reason.NO_CAPACITY] = survivors - fit
    return Explanation.from_counts(market.total, fit, counts)


def check_submission(
    job: JobSpec, pools: Sequence[PoolOffer], *, now: datetime, config: MatchingConfig | None = None
) -> Explanation:
    """The static explanation of a new job; raises :class:`JobNeverFits` if no pool could ever take it."""
    explanation = explain(job, pools, now=now, config=config, occupancy=False)
    if explanation.never_fits:
        raise JobNeverFits(explanation)
    return explanation
