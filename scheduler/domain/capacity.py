"""Capacity over time, the check every lease write passes: no node, CPU,
memory or accelerator of an offer is ever committed beyond its size in any
instant.

Leases store what they hold per node as plain records (:class:`Hold`); this
module sweeps them in time order. It is deliberately independent of the
matching engine: the engine proposes, this module verifies what is written
(and what ``check_capacity`` audits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scheduler.domain.packing import NodeShape, Placement, SliceDemand

WHOLE = 1000


@dataclass(frozen=True, slots=True)
class Hold:
    """What one lease holds on one node over [start, end)."""

    node: int
    start: datetime
    end: datetime
    cpu_milli: int
    memory_mib: int
    devices: tuple[int, ...] = ()
    milli: int = 0  # thousandths held on each listed device

    def as_record(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "devices": list(self.devices),
            "milli": self.milli,
            "cpu_milli": self.cpu_milli,
            "memory_mib": self.memory_mib,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], start: datetime, end: datetime) -> Hold:
        return cls(
            node=int(record["node"]),
            start=start,
            end=end,
            cpu_milli=int(record["cpu_milli"]),
            memory_mib=int(record["memory_mib"]),
            devices=tuple(int(d) for d in record.get("devices", ())),
            milli=int(record.get("milli", 0)),
        )

    def placement(self) -> Placement:
        return Placement(node=self.node, devices=self.devices, accelerator_milli=self.milli if self.devices else 0)

    def demand(self) -> SliceDemand:
        whole = bool(self.devices) and self.milli >= WHOLE
        return SliceDemand(
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
            accelerators=len(self.devices) if whole else 0,
            accelerator_milli=0 if whole or not self.devices else self.milli,
        )


def hold_from(placement: Placement, demand: SliceDemand, start: datetime, end: datetime) -> Hold:
    return Hold(
        node=placement.node,
        start=start,
        end=end,
        cpu_milli=demand.cpu_milli,
        memory_mib=demand.memory_mib,
        devices=tuple(placement.devices),
        milli=placement.accelerator_milli if placement.devices else 0,
    )


@dataclass(frozen=True, slots=True)
class Overbooking:
    node: int
    at: datetime
    resource: str  # "node", "cpu", "memory" or "device <i>"
    used: int
    capacity: int

    def __str__(self) -> str:
        return f"node {self.node} {self.resource}: {self.used} > {self.capacity} at {self.at.isoformat()}"


def overbookings(shape: NodeShape, node_count: int, holds: Iterable[Hold]) -> list[Overbooking]:
    """Every node and instant where the holds exceed the node's shape (the first per resource and node)."""
    by_node: dict[int, list[Hold]] = defaultdict(list)
    found: list[Overbooking] = []
    for hold in holds:
        if not 0 <= hold.node < node_count:
            found.append(Overbooking(hold.node, hold.start, "node", hold.node, node_count - 1))
            continue
        if any(not 0 <= d < shape.accelerators for d in hold.devices) or not 0 <= hold.milli <= WHOLE:
            found.append(Overbooking(hold.node, hold.start, "device index", max(hold.devices), shape.accelerators))
            continue
        by_node[hold.node].append(hold)
    for node, node_holds in by_node.items():
        found.extend(_sweep(shape, node, node_holds))
    return found


def _sweep(shape: NodeShape, node: int, holds: Sequence[Hold]) -> list[Overbooking]:
    # Ends sort before starts at the same instant: [s, e) windows touching at e do not overlap.
    events = sorted(
        [(h.start, 1, h) for h in holds] + [(h.end, 0, h) for h in holds],
        key=lambda event: (event[0], event[1]),
    )
    cpu = memory = 0
    devices = [0] * shape.accelerators
    reported: set[str] = set()
    found: list[Overbooking] = []
    for at, starting, hold in events:
        sign = 1 if starting else -1
        cpu += sign * hold.cpu_milli
        memory += sign * hold.memory_mib
        for d in hold.devices:
            devices[d] += sign * hold.milli
        if not starting:
            continue
        checks = [("cpu", cpu, shape.cpu_milli), ("memory", memory, shape.memory_mib)]
        checks += [(f"device {d}", devices[d], WHOLE) for d in hold.devices]
        for resource, used, capacity in checks:
            if used > capacity and resource not in reported:
                reported.add(resource)
                found.append(Overbooking(node, at, resource, used, capacity))
    return found


def fits(shape: NodeShape, node_count: int, existing: Iterable[Hold], new: Iterable[Hold]) -> bool:
    """Whether ``new`` can be added to ``existing`` without overbooking anything at any instant."""
    new = list(new)
    touched = {h.node for h in new}
    relevant = [h for h in existing if h.node in touched]
    return not overbookings(shape, node_count, [*relevant, *new])
