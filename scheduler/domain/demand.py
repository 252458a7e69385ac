"""What the matching engine reads: jobs, pool offers and leases as frozen
dataclasses, the hard constraints of one job on one pool, and the reasons a
pool is refused.

Nothing here imports Django; selectors build these objects from the tables,
the engine (:mod:`scheduler.domain.matching`) answers with plain objects too.

**A job's demand** is one of

* *device demand*: ``accelerators_per_node`` whole accelerators on each of
  ``nodes`` nodes (a gang: all nodes or none, on one pool), of any model in
  ``device_models`` (empty = any model of the job's software stack);
* *a shared slice*: ``accelerator_milli`` thousandths (1..999) of one
  accelerator, on an offer that allows sharing (vGPU/MIG-style);
* *capacity demand* (:class:`CapacityDemand`): at least ``tflops`` delivered
  at a precision and at least ``accelerator_memory_gib`` of accelerator memory
  in total. The engine turns it into devices per pool: n = the larger of
  ⌈tflops ÷ delivered TFLOPS of one device⌉ and ⌈memory ÷ memory of one
  device⌉ (at least 1); n fits on ⌈n ÷ devices per node⌉ nodes with
  ⌈n ÷ nodes⌉ devices each. Below one device on an offer that allows sharing,
  it becomes a slice of ⌈1000 × need⌉ thousandths;
* *CPU-only* (stack ``cpu``): ``cpu_milli_per_node`` thousandths of a core on
  each of ``nodes`` nodes of a CPU pool of the job's CPU architecture, or a
  capacity demand in TFLOPS (FP32 or FP64) turned into cores the same way.

CPU and memory per node default, when the job leaves them at 0, to the share
of the node proportional to the accelerator share taken (2 of 8 devices get a
quarter of the node's CPU and memory; a whole-node job gets the whole node),
so partial-node jobs leave the rest of the node usable and whole-node jobs
take it all.

**Price caps** are both optional and both apply: ``max_price_per_ncu_hour``
(the locked unit price of the offer, CNY per NCU-hour) and ``max_total_price``
(the estimated cost of the whole job: unit price × NCU × hours).

**Latency** is :func:`marketplace.domain.geography.latency_ms` between the
buyer's city and the pool's city: 1 ms in one city, the fibre estimate capped
at 5 ms inside one hub, otherwise 1.5 × great-circle distance at 5 µs/km (the
targets of the 2023 Action Plan for computing power infrastructure,
算力基础设施高质量发展行动计划; the plan's inter-hub bound is 1.5 × the
theoretical fibre latency). A pool in a city the geography does not know is
placed by its hub, at the largest latency to any known city of that hub
(:func:`site_latency_ms`); :func:`hub_latency_matrix` gives the hub-to-hub
figures the same way. A job is *latency tolerant* (东数西算: may be
steered west) when it says so, or, when it does not say, when it sets no
latency limit or one of at least ``MatchingConfig.latency_tolerant_ms``.

**Reasons.** Every pool a job cannot use is refused for exactly one
:class:`Reason`: the first failing check in the order the enum lists them, so
the counts of an explanation add up to the number of pools refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from functools import lru_cache

from billing.domain.pricing import PricingType
from core.errors import InvalidInput
from marketplace.domain.geography import CITIES, HUBS, Side, latency_ms
from marketplace.domain.units import (
    ComputeClass,
    CpuArchitecture,
    PoolShape,
    Precision,
    SoftwareStack,
    ncu_per_accelerator,
    ncu_per_core,
)
from scheduler.domain.packing import NodeShape, NodeState, Placement, SliceDemand, WorkloadMix

__all__ = [
    "NATIONAL_GRID_FACTOR",
    "CapacityDemand",
    "JobSpec",
    "JobSpecError",
    "Lease",
    "MatchingConfig",
    "NodeAllocation",
    "Objective",
    "PoolFacts",
    "PoolOffer",
    "PricingType",
    "Reason",
    "Resolved",
    "duration_hours",
    "hub_latency_matrix",
    "pool_facts",
    "resolve",
    "site_latency_ms",
    "static_reason",
]

NATIONAL_GRID_FACTOR = Decimal("0.5703")  # kg CO2 per kWh, China's national grid average
_ZERO = Decimal(0)
_ONE = Decimal(1)
_THOUSAND = 1000
_HOUR_US = 3_600_000_000


class JobSpecError(InvalidInput):
    code = "job_invalid"


class Objective(StrEnum):
    CHEAPEST = "cheapest"  # lowest estimated cost of the whole job
    EARLIEST = "earliest"  # earliest start, then cost
    GREENEST = "greenest"  # lowest estimated carbon, then cost


class Reason(StrEnum):
    """Why a pool cannot take a job; the order is the order of the checks."""

    WRONG_STACK = "wrong_stack"
    WRONG_ARCHITECTURE = "wrong_architecture"
    WRONG_DEVICE = "wrong_device"
    NOT_DOMESTIC = "not_domestic"
    PROVIDER_UNVERIFIED = "provider_unverified"
    OUTSIDE_HUBS = "outside_hubs"
    OVER_LATENCY = "over_latency"
    INTERRUPTIBLE_ONLY = "interruptible_only"
    NO_SHARING = "no_sharing"
    NODE_TOO_SMALL = "node_too_small"
    NOT_ENOUGH_MEMORY = "not_enough_memory"
    TOO_FEW_NODES = "too_few_nodes"
    LEASE_LENGTH = "lease_length"
    OUTSIDE_WINDOW = "outside_window"
    OVER_PRICE_CAP = "over_price_cap"
    # the two below depend on the moment and on what is already leased
    NOT_OPEN_YET = "not_open_yet"
    NO_CAPACITY = "no_capacity"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def static(self) -> bool:
        """Whether the reason holds whatever is leased (a job refused by every
        pool for static reasons can never run in this market)."""
        return self not in (Reason.NOT_OPEN_YET, Reason.NO_CAPACITY)


_LABELS = {
    Reason.WRONG_STACK: "wrong software stack",
    Reason.WRONG_ARCHITECTURE: "wrong CPU architecture",
    Reason.WRONG_DEVICE: "device not as requested",
    Reason.NOT_DOMESTIC: "not domestic chips",
    Reason.PROVIDER_UNVERIFIED: "provider not verified",
    Reason.OUTSIDE_HUBS: "outside allowed hubs",
    Reason.OVER_LATENCY: "over latency limit",
    Reason.INTERRUPTIBLE_ONLY: "interruptible-only offer",
    Reason.NO_SHARING: "no accelerator sharing",
    Reason.NODE_TOO_SMALL: "nodes too small",
    Reason.NOT_ENOUGH_MEMORY: "not enough memory",
    Reason.TOO_FEW_NODES: "too few nodes",
    Reason.LEASE_LENGTH: "lease length not offered",
    Reason.OUTSIDE_WINDOW: "outside offer window or deadline",
    Reason.OVER_PRICE_CAP: "over price cap",
    Reason.NOT_OPEN_YET: "offer not open yet",
    Reason.NO_CAPACITY: "no free capacity",
}
REASON_ORDER = {reason: i for i, reason in enumerate(Reason)}


# --- inputs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapacityDemand:
    """Normalised capacity: at least ``tflops`` delivered at ``precision`` and at least
    ``accelerator_memory_gib`` of accelerator memory, in total over the job."""

    tflops: Decimal
    precision: Precision
    accelerator_memory_gib: Decimal = _ZERO

    def __post_init__(self) -> None:
        if not isinstance(self.tflops, Decimal) or self.tflops <= 0:
            raise JobSpecError("a capacity demand asks for more than 0 TFLOPS (as a Decimal).", field="capacity")
        if not isinstance(self.accelerator_memory_gib, Decimal) or self.accelerator_memory_gib < 0:
            raise JobSpecError("accelerator memory is a Decimal of at least 0 GiB.", field="capacity")
        object.__setattr__(self, "precision", Precision(self.precision))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A buyer's job as the engine sees it. Datetimes are timezone-aware UTC."""

    job_id: str
    org_id: str
    submitted_at: datetime
    stack: SoftwareStack
    duration: timedelta
    device_models: frozenset[str] = frozenset()
    capacity: CapacityDemand | None = None
    accelerators_per_node: int = 0
    accelerator_milli: int = 0
    nodes: int = 1
    cpu_milli_per_node: int = 0  # 0 = the share of the node proportional to the accelerators taken
    memory_mib_per_node: int = 0  # 0 = likewise
    storage_gib_per_node: int = 0
    accelerator_memory_gib: Decimal = _ZERO  # device demand: at least this much memory on each device
    cpu_architecture: CpuArchitecture | None = None  # required for CPU-only jobs; None = any
    earliest_start: datetime | None = None
    deadline: datetime | None = None  # the job must end by then
    max_price_per_ncu_hour: Decimal | None = None
    max_total_price: Decimal | None = None
    allowed_hubs: frozenset[str] = frozenset()  # empty = any hub (or none)
    buyer_city: str | None = None
    max_latency_ms: float | None = None
    domestic_only: bool = False  # 信创: domestic chips only
    interruptible: bool = False
    objective: Objective = Objective.CHEAPEST
    latency_tolerant: bool | None = None  # None = derived from max_latency_ms
    priority: int = 0  # operator-set; higher runs first within the buyer's organisation

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "stack", SoftwareStack(self.stack))
        set_(self, "objective", Objective(self.objective))
        set_(self, "device_models", frozenset(self.device_models))
        set_(self, "allowed_hubs", frozenset(self.allowed_hubs))
        if self.cpu_architecture is not None:
            set_(self, "cpu_architecture", CpuArchitecture(self.cpu_architecture))
        if self.submitted_at.tzinfo is None:
            raise JobSpecError("submitted_at must be timezone-aware.", field="submitted_at")
        if self.duration <= timedelta(0):
            raise JobSpecError("the duration estimate must be positive.", field="duration")
        if self.nodes < 1:
            raise JobSpecError("a job needs at least one node.", field="nodes")
        if min(self.cpu_milli_per_node, self.memory_mib_per_node, self.storage_gib_per_node) < 0:
            raise JobSpecError("CPU, memory and storage cannot be negative.", field="cpu_milli_per_node")
        if not isinstance(self.accelerator_memory_gib, Decimal) or self.accelerator_memory_gib < 0:
            raise JobSpecError("accelerator memory is a Decimal of at least 0 GiB.", field="accelerator_memory_gib")
        if self.stack is SoftwareStack.CPU:
            if self.cpu_architecture is None:
                raise JobSpecError("a CPU-only job names its CPU architecture.", field="cpu_architecture")
            if self.accelerators_per_node or self.accelerator_milli or self.device_models:
                raise JobSpecError("a CPU-only job asks for no accelerator.", field="accelerators_per_node")
            if self.capacity is None and self.cpu_milli_per_node <= 0:
                raise JobSpecError("a CPU-only job asks for CPU (cpu_milli_per_node).", field="cpu_milli_per_node")
            if self.capacity is not None and self.capacity.accelerator_memory_gib:
                raise JobSpecError("a CPU-only job asks for no accelerator memory.", field="capacity")
        else:
            asked = (self.capacity is not None) + (self.accelerators_per_node > 0) + (self.accelerator_milli > 0)
            if asked != 1:
                raise JobSpecError(
                    "an accelerated job asks for exactly one of: whole accelerators per node, "
                    "a share of one accelerator, or a normalised capacity.",
                    field="accelerators_per_node",
                )
            if self.accelerators_per_node < 0 or not 0 <= self.accelerator_milli < _THOUSAND:
                raise JobSpecError(
                    "a shared slice is 1..999 thousandths of one accelerator.", field="accelerator_milli"
                )
            if self.accelerator_milli and self.nodes != 1:
                raise JobSpecError("a shared slice runs on one node.", field="nodes")
        if self.capacity is not None and self.nodes != 1:
            raise JobSpecError("a capacity demand chooses its own node count; leave nodes at 1.", field="nodes")
        for name in ("earliest_start", "deadline"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise JobSpecError(f"{name} must be timezone-aware.", field=name)
        if (
            self.earliest_start is not None
            and self.deadline is not None
            and self.earliest_start + self.duration > self.deadline
        ):
            raise JobSpecError("the job cannot run between its earliest start and its deadline.", field="deadline")
        for name in ("max_price_per_ncu_hour", "max_total_price"):
            cap = getattr(self, name)
            if cap is not None and (not isinstance(cap, Decimal) or cap <= 0):
                raise JobSpecError(f"{name} must be a positive Decimal.", field=name)
        unknown = sorted(h for h in self.allowed_hubs if h not in HUBS)
        if unknown:
            raise JobSpecError(f"unknown hubs: {', '.join(unknown)}.", field="allowed_hubs")
        if self.max_latency_ms is not None:
            set_(self, "max_latency_ms", float(self.max_latency_ms))
            if self.max_latency_ms <= 0:
                raise JobSpecError("the latency limit must be positive.", field="max_latency_ms")
            if self.buyer_city not in CITIES:
                raise JobSpecError("a latency limit needs the buyer's city (a known city).", field="buyer_city")

    def ready_at(self, now: datetime) -> datetime:
        """The earliest moment the job may start, seen at ``now``."""
        if self.earliest_start is not None and self.earliest_start > now:
            return self.earliest_start
        return now

    def tolerates_latency(self, threshold_ms: float) -> bool:
        if self.latency_tolerant is not None:
            return self.latency_tolerant
        return self.max_latency_ms is None or self.max_latency_ms >= threshold_ms


@dataclass(frozen=True, slots=True)
class PoolOffer:
    """An offer on a resource pool, with everything matching needs to know of the pool, its site and provider.

    ``nodes`` is the free capacity of each offered node *outside the market's
    leases* (e.g. a node partly kept by the provider); None means
    ``shape.node_count`` whole nodes. Do not subtract the market's leases
    here: they are passed to the engine with their time windows.
    ``unit_price`` is the locked price per NCU-hour the lease would get
    (computed by the caller with the billing price rules).
    ``unit_power_w`` is the power of one accelerator, or of one core on a CPU pool.
    """

    pool_id: str
    identifier: str
    provider_id: str
    site_id: str
    hub: str
    city: str
    stack: SoftwareStack
    cpu_architecture: CpuArchitecture
    shape: PoolShape
    node_memory_mib: int
    unit_price: Decimal
    window_start: datetime
    window_end: datetime | None = None
    pricing_type: PricingType = PricingType.ON_DEMAND
    node_storage_gib: int = 0
    accelerator_memory_gib: Decimal = _ZERO
    unit_power_w: Decimal = _ZERO
    domestic: bool = False
    provider_verified: bool = True
    provider_reliability: Decimal = _ONE
    pue: Decimal = Decimal("1.3")
    green_share: Decimal = _ZERO
    grid_carbon_kg_per_kwh: Decimal = NATIONAL_GRID_FACTOR
    sharing_allowed: bool = False
    min_lease: timedelta = timedelta(0)
    max_lease: timedelta | None = None
    nodes: tuple[NodeState, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "stack", SoftwareStack(self.stack))
        set_(self, "cpu_architecture", CpuArchitecture(self.cpu_architecture))
        set_(self, "pricing_type", PricingType(self.pricing_type))
        if not isinstance(self.unit_price, Decimal) or self.unit_price < 0:
            raise ValueError(f"pool {self.pool_id}: the unit price is a Decimal of at least 0")
        if not _ZERO <= Decimal(self.provider_reliability) <= _ONE or not _ZERO <= Decimal(self.green_share) <= _ONE:
            raise ValueError(f"pool {self.pool_id}: reliability and green share lie in 0..1")
        if self.window_start.tzinfo is None:
            raise ValueError(f"pool {self.pool_id}: the offer window must be timezone-aware")
        accelerated = self.shape.accelerated
        if accelerated == (self.stack is SoftwareStack.CPU):
            raise ValueError(f"pool {self.pool_id}: a CPU-stack pool has no accelerators, an accelerated one has some")
        if not accelerated and self.shape.cpu is None:
            raise ValueError(f"pool {self.pool_id}: a CPU-only pool needs its CPU model")
        if self.nodes is not None:
            shape = node_shape(self)
            if any(node.shape != shape for node in self.nodes):
                raise ValueError(f"pool {self.pool_id}: every node has the pool's node shape")


@dataclass(frozen=True, slots=True)
class NodeAllocation:
    """What one lease (or assignment) holds on one node of its pool."""

    placement: Placement
    demand: SliceDemand


@dataclass(frozen=True, slots=True)
class Lease:
    """Capacity already committed on a pool over [start, end)."""

    lease_id: str
    job_id: str
    org_id: str
    pool_id: str
    start: datetime
    end: datetime
    allocations: tuple[NodeAllocation, ...]
    interruptible: bool = False
    ncu: Decimal = _ZERO  # NCU held (informational: fair share is recomputed from the allocations and the pool)


@dataclass(frozen=True, slots=True)
class MatchingConfig:
    """Knobs of the engine; the defaults are the platform's policy."""

    # time
    lookahead: timedelta = timedelta(0)  # a cycle places jobs whose earliest start is at most this far ahead
    # scoring
    west_price_tolerance: Decimal = Decimal("0.05")  # 东数西算 band for the earliest and greenest objectives
    reliability_weight: Decimal = Decimal("0.10")  # cost counted up to 10% higher at reliability 0
    latency_tolerant_ms: float = 30.0
    max_tie_candidates: int = 8
    max_exact_checks: int = 64  # pools tried in full per job after the vectorised filter
    policy: str = "default"  # packing policy inside a pool
    mix: WorkloadMix | None = None  # None = the mix of the queued jobs' demands
    mix_size: int = 32
    # queue
    ageing_horizon: timedelta = timedelta(hours=24)
    ageing_priority_points: int = 10
    ageing_share_discount: float = 0.5
    # backfill and preemption
    max_reservations: int = 1
    reservation_pool_limit: int = 64
    preemption: bool = True
    preemption_pool_limit: int = 8
    # after the fair-share pass, the jobs it placed are placed again, highest stakes first, when that is cheaper
    repack: bool = True
    # quotes
    quote_pool_limit: int = 64


# --- latency ------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def site_latency_ms(city: str, site_city: str, site_hub: str) -> float:
    """One-way latency (ms) from a known city to a site: by the site's city when the geography knows
    it, else by its hub (the largest latency to any known city of the hub), else infinite."""
    if site_city in CITIES:
        return latency_ms(city, site_city)
    in_hub = [code for code, known in CITIES.items() if known.hub == site_hub]
    return max(latency_ms(city, code) for code in in_hub) if in_hub else math.inf


def hub_latency_matrix() -> dict[tuple[str, str], float]:
    """Hub-to-hub latency (ms): the largest latency between any known cities of the two hubs, so a
    promise made from it holds wherever in the hubs the endpoints are."""
    cities = {hub: [code for code, known in CITIES.items() if known.hub == hub] for hub in HUBS}
    return {
        (a, b): max(latency_ms(x, y) for x in cities[a] for y in cities[b])
        for a in HUBS
        for b in HUBS
        if cities[a] and cities[b]
    }


# --- per-pool facts and the exact checks ---------------------------------------------------------------------------


def node_shape(pool: PoolOffer) -> NodeShape:
    shape = pool.shape
    model = shape.accelerator.code if shape.accelerated and shape.accelerator is not None else None
    return NodeShape(
        cpu_milli=shape.cpu_cores_per_node * _THOUSAND,
        memory_mib=pool.node_memory_mib,
        accelerators=shape.accelerators_per_node if shape.accelerated else 0,
        accelerator_model=model,
    )


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """Derived, exact facts of an offer (computed once per cycle)."""

    pool: PoolOffer
    node_shape: NodeShape
    nodes_offered: int
    accelerated: bool
    units_per_node: int  # accelerators per node, or cores on a CPU pool
    ncu_per_unit: Decimal  # NCU of one accelerator, or of one core
    tflops_per_unit: tuple[tuple[Precision, Decimal], ...]
    model: str | None
    west: bool
    compute_class: ComputeClass

    def tflops(self, precision: Precision) -> Decimal:
        for p, value in self.tflops_per_unit:
            if p is precision:
                return value
        return _ZERO


def pool_facts(pool: PoolOffer) -> PoolFacts:
    """What the engine derives from a pool offer. Memoised for offers of
    whole nodes (a market snapshot reused across quotes meets the same offers
    again); offers that carry their nodes' free capacity are not hashable."""
    return _pool_facts(pool) if pool.nodes is not None else _pool_facts_memo(pool)


@lru_cache(maxsize=8192)
def _pool_facts_memo(pool: PoolOffer) -> PoolFacts:
    return _pool_facts(pool)


def _pool_facts(pool: PoolOffer) -> PoolFacts:
    shape = pool.shape
    accelerated = shape.accelerated
    if accelerated:
        assert shape.accelerator is not None  # noqa: S101 - PoolShape.accelerated says so
        device, units, ncu = shape.accelerator, shape.accelerators_per_node, ncu_per_accelerator(shape)
        peaks = tuple((p, device.peak(p) * shape.benchmark_factor) for p in Precision)
    else:
        assert shape.cpu is not None  # noqa: S101 - checked by PoolOffer
        units, ncu = shape.cpu_cores_per_node, ncu_per_core(shape)
        peaks = tuple((p, shape.cpu.per_core(p) * shape.benchmark_factor) for p in Precision)
    hub = HUBS.get(pool.hub)
    return PoolFacts(
        pool=pool,
        node_shape=node_shape(pool),
        nodes_offered=len(pool.nodes) if pool.nodes is not None else shape.node_count,
        accelerated=accelerated,
        units_per_node=units,
        ncu_per_unit=ncu,
        tflops_per_unit=peaks,
        model=shape.accelerator.code if accelerated and shape.accelerator is not None else None,
        west=hub is not None and hub.side is Side.WEST,
        compute_class=shape.compute_class,
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    """A job's demand turned into this pool's terms: ``nodes`` nodes each holding ``demand``."""

    nodes: int
    demand: SliceDemand
    units_per_node: Decimal  # accelerators (fractional for a slice) or cores per node
    ncu: Decimal  # NCU held by the whole job
    devices: int = 0  # whole devices per node (0 for a slice or a CPU job)
    milli: int = 0  # slice thousandths (0 unless a shared slice)

    @property
    def units(self) -> Decimal:
        return self.nodes * self.units_per_node


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@lru_cache(maxsize=4096)
def duration_hours(duration: timedelta) -> Decimal:
    """Exact hours of a duration (no float on the way)."""
    return Decimal(duration // timedelta(microseconds=1)) / _HOUR_US


def _first(flags: list[tuple[Reason, bool]]) -> Reason | None:
    for reason, failed in flags:
        if failed:
            return reason
    return None


def resolve(job: JobSpec, facts: PoolFacts) -> Resolved | Reason:
    """The job's demand on this pool, or the first resolution reason it cannot be met
    (wrong device, no sharing, nodes too small, not enough memory, too few nodes)."""
    shape = facts.node_shape
    per_node = facts.units_per_node
    if job.stack is SoftwareStack.CPU:
        if facts.accelerated:
            return Reason.WRONG_DEVICE
        if job.capacity is not None:
            per_core = facts.tflops(job.capacity.precision)
            if per_core <= 0:
                return Reason.WRONG_DEVICE
            cores = max(_ceil(job.capacity.tflops / per_core), 1)
            count = -(-cores // per_node)
            cpu = -(-cores // count) * _THOUSAND
        else:
            count, cpu = job.nodes, job.cpu_milli_per_node
        memory = job.memory_mib_per_node or (shape.memory_mib * cpu // shape.cpu_milli if shape.cpu_milli else 0)
        units = Decimal(cpu) / _THOUSAND
        reason = _first(
            [
                (
                    Reason.NODE_TOO_SMALL,
                    cpu > shape.cpu_milli or job.storage_gib_per_node > facts.pool.node_storage_gib,
                ),
                (Reason.NOT_ENOUGH_MEMORY, memory > shape.memory_mib),
                (Reason.TOO_FEW_NODES, count > facts.nodes_offered),
            ]
        )
        if reason is not None:
            return reason
        return Resolved(count, SliceDemand(cpu, memory), units, count * units * facts.ncu_per_unit)

    if not facts.accelerated or (job.device_models and facts.model not in job.device_models):
        return Reason.WRONG_DEVICE
    device_memory = facts.pool.accelerator_memory_gib
    memory_short = False
    no_sharing = False
    devices = milli = 0
    count = 1
    if job.capacity is not None:
        per_device = facts.tflops(job.capacity.precision)
        if per_device <= 0:
            return Reason.WRONG_DEVICE
        need = job.capacity.tflops / per_device
        wanted_memory = job.capacity.accelerator_memory_gib
        if wanted_memory > 0:
            if device_memory <= 0:
                memory_short = True
            else:
                need = max(need, wanted_memory / device_memory)
        if facts.pool.sharing_allowed and need < 1 and _ceil(need * _THOUSAND) < _THOUSAND:
            milli = max(_ceil(need * _THOUSAND), 1)
        else:
            total = max(_ceil(need), 1)
            count = -(-total // per_node)
            devices = -(-total // count)
    elif job.accelerator_milli:
        milli = job.accelerator_milli
        no_sharing = not facts.pool.sharing_allowed
        memory_short = device_memory * milli / _THOUSAND < job.accelerator_memory_gib
    else:
        devices, count = job.accelerators_per_node, job.nodes
        memory_short = device_memory < job.accelerator_memory_gib
    thousandths = devices * _THOUSAND + milli
    cpu = job.cpu_milli_per_node or shape.cpu_milli * thousandths // (per_node * _THOUSAND)
    memory = job.memory_mib_per_node or shape.memory_mib * thousandths // (per_node * _THOUSAND)
    reason = _first(
        [
            (Reason.NO_SHARING, no_sharing),
            (
                Reason.NODE_TOO_SMALL,
                devices > per_node or cpu > shape.cpu_milli or job.storage_gib_per_node > facts.pool.node_storage_gib,
            ),
            (Reason.NOT_ENOUGH_MEMORY, memory_short or memory > shape.memory_mib),
            (Reason.TOO_FEW_NODES, count > facts.nodes_offered),
        ]
    )
    if reason is not None:
        return reason
    units = Decimal(thousandths) / _THOUSAND
    demand = SliceDemand(cpu, memory, accelerators=devices, accelerator_milli=milli)
    return Resolved(count, demand, units, count * units * facts.ncu_per_unit, devices=devices, milli=milli)


def window_fits(job: JobSpec, pool: PoolOffer, ready: datetime) -> bool:
    """Whether the job can run inside the offer window and before its deadline at some start >= ``ready``."""
    start = max(ready, pool.window_start)
    end = start + job.duration
    return (pool.window_end is None or end <= pool.window_end) and (job.deadline is None or end <= job.deadline)


def estimated_cost(pool: PoolOffer, resolved: Resolved, job: JobSpec) -> Decimal:
    """Unrounded estimated cost: locked unit price × NCU × hours."""
    return pool.unit_price * resolved.ncu * duration_hours(job.duration)


def static_reason(
    job: JobSpec, facts: PoolFacts, ready: datetime, resolved: Resolved | Reason | None = None
) -> Reason | None:
    """The first reason (in :class:`Reason` order) the pool can never take the job, or None.

    This is the exact reference check; the engine's vectorised filter gives the
    same answers and every assignment is checked again here before it is made.
    ``resolved``: ``resolve(job, facts)`` when the caller has it already."""
    pool = facts.pool
    if pool.stack is not job.stack:
        return Reason.WRONG_STACK
    if job.cpu_architecture is not None and pool.cpu_architecture is not job.cpu_architecture:
        return Reason.WRONG_ARCHITECTURE
    if resolved is None:
        resolved = resolve(job, facts)
    if resolved is Reason.WRONG_DEVICE:
        return resolved
    if job.domestic_only and not pool.domestic:
        return Reason.NOT_DOMESTIC
    if not pool.provider_verified:
        return Reason.PROVIDER_UNVERIFIED
    if job.allowed_hubs and pool.hub not in job.allowed_hubs:
        return Reason.OUTSIDE_HUBS
    if (
        job.max_latency_ms is not None
        and site_latency_ms(job.buyer_city or "", pool.city, pool.hub) > job.max_latency_ms
    ):
        return Reason.OVER_LATENCY
    if pool.pricing_type is PricingType.INTERRUPTIBLE and not job.interruptible:
        return Reason.INTERRUPTIBLE_ONLY
    if isinstance(resolved, Reason):
        return resolved
    if job.duration < pool.min_lease or (pool.max_lease is not None and job.duration > pool.max_lease):
        return Reason.LEASE_LENGTH
    if not window_fits(job, pool, ready):
        return Reason.OUTSIDE_WINDOW
    if job.max_price_per_ncu_hour is not None and pool.unit_price > job.max_price_per_ncu_hour:
        return Reason.OVER_PRICE_CAP
    if job.max_total_price is not None and estimated_cost(pool, resolved, job) > job.max_total_price:
        return Reason.OVER_PRICE_CAP
    return None


def reason_at(job: JobSpec, facts: PoolFacts, ready: datetime, start: datetime) -> Reason | None:
    """:func:`static_reason`, and whether the offer is open at ``start``."""
    reason = static_reason(job, facts, ready)
    if reason is None and start < facts.pool.window_start:
        return Reason.NOT_OPEN_YET
    return reason
