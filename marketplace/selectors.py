"""Read-side queries for organisations and inventory, scoped to the caller."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Q, QuerySet

from core.errors import NotFound
from marketplace.domain import identifiers
from marketplace.domain.geography import HUBS
from marketplace.domain.units import ComputeClass, Precision, pool_ncu, pool_tflops, quantise_units, unit_precision
from marketplace.models import (
    Organisation,
    PoolStatus,
    ResourcePool,
    Role,
    Site,
    User,
    VerificationStatus,
)


def _is_operator(user: object) -> bool:
    return getattr(user, "role", "") == Role.OPERATOR


def organisations_visible_to(user: User) -> QuerySet[Organisation]:
    """Operators see every organisation; everyone else only their own."""
    if _is_operator(user):
        return Organisation.objects.all()
    return Organisation.objects.filter(pk=getattr(user, "organisation_id", None))


def market_visible_q(prefix: str = "") -> Q:
    """Inventory anyone may see: of verified providers, still active."""
    return Q(**{f"{prefix}provider__verification_status": VerificationStatus.VERIFIED})


def sites_visible_to(user: object) -> QuerySet[Site]:
    """Operators see all sites; providers their own and the public market;
    everyone else the sites of verified providers."""
    qs = Site.objects.select_related("provider")
    if _is_operator(user):
        return qs
    visible = market_visible_q()
    if getattr(user, "role", "") == Role.PROVIDER:
        visible |= Q(provider_id=user.organisation_id)  # type: ignore[attr-defined]
    return qs.filter(visible)


def pools_visible_to(user: object) -> QuerySet[ResourcePool]:
    qs = ResourcePool.objects.select_related("site", "site__provider", "cpu_model", "accelerator_model")
    if _is_operator(user):
        return qs
    visible = market_visible_q("site__") & Q(status=PoolStatus.ACTIVE)
    if getattr(user, "role", "") == Role.PROVIDER:
        visible |= Q(site__provider_id=user.organisation_id)  # type: ignore[attr-defined]
    return qs.filter(visible)


def providers_visible_to(user: object) -> QuerySet[Organisation]:
    qs = Organisation.objects.filter(category="provider")
    if _is_operator(user):
        return qs
    visible = Q(verification_status=VerificationStatus.VERIFIED)
    if getattr(user, "role", "") == Role.PROVIDER:
        visible |= Q(pk=user.organisation_id)  # type: ignore[attr-defined]
    return qs.filter(visible)


def resolve_identifier(*, text: str, user: object) -> Organisation | Site | ResourcePool:
    """The provider, site or pool an identifier names. Raises IdentifierError
    for malformed or mistyped identifiers and NotFound for unassigned ones."""
    cid = identifiers.parse_identifier(text)
    value = identifiers.format_identifier(cid)
    level = cid.level
    found: Organisation | Site | ResourcePool | None
    if level is identifiers.Level.PROVIDER:
        found = providers_visible_to(user).filter(identifier=value).first()
    elif level is identifiers.Level.SITE:
        found = sites_visible_to(user).filter(identifier=value).first()
    else:
        found = pools_visible_to(user).filter(identifier=value).first()
    if found is None:
        raise NotFound(f"no {level.value} has the identifier {value}", field="identifier")
    return found


@dataclass
class InventoryCell:
    hub: str
    compute_class: str
    pools: int = 0
    nodes: int = 0
    accelerators: int = 0
    cpu_cores: int = 0
    tflops: dict[str, Decimal] = field(default_factory=lambda: {p.value: Decimal(0) for p in Precision})
    ncu: Decimal = Decimal(0)

    def add(self, pool: ResourcePool) -> None:
        shape = pool.shape()
        self.pools += 1
        self.nodes += pool.node_count
        self.accelerators += pool.node_count * pool.accelerators_per_node
        self.cpu_cores += pool.node_count * pool.cpu_cores_per_node
        for precision in Precision:
            self.tflops[precision.value] += pool_tflops(shape, precision)
        self.ncu += pool_ncu(shape)


def regional_inventory(*, hub: str | None = None) -> dict:
    """Listed capacity of verified providers by hub and compute class, in
    TFLOPS per precision and in NCU, with the plan's CP = CP_general +
    CP_intelligent + CP_super (each class at its reference precision)."""
    pools = pools_visible_to(None)
    if hub:
        pools = pools.filter(site__hub=hub)
    cells: dict[tuple[str, str], InventoryCell] = {}
    cp_by_class: dict[str, Decimal] = defaultdict(Decimal)
    for pool in pools:
        key = (pool.site.hub, pool.compute_class)
        cell = cells.setdefault(key, InventoryCell(hub=pool.site.hub, compute_class=pool.compute_class))
        cell.add(pool)
        shape = pool.shape()
        cp_by_class[pool.compute_class] += pool_tflops(shape, unit_precision(shape))

    def render(cell: InventoryCell) -> dict:
        return {
            "hub": cell.hub,
            "hub_name": HUBS[cell.hub].name_zh,
            "side": HUBS[cell.hub].side.value,
            "compute_class": cell.compute_class,
            "pools": cell.pools,
            "nodes": cell.nodes,
            "accelerators": cell.accelerators,
            "cpu_cores": cell.cpu_cores,
            "tflops": {p: quantise_units(v) for p, v in cell.tflops.items()},
            "ncu": quantise_units(cell.ncu),
        }

    rows = [render(cells[key]) for key in sorted(cells, key=lambda k: (list(HUBS).index(k[0]), k[1]))]
    cp_parts = {c.value: quantise_units(cp_by_class.get(c.value, Decimal(0))) for c in ComputeClass}
    cp_total = sum(cp_by_class.get(c, Decimal(0)) for c in ("general", "intelligent", "super"))
    return {
        "rows": rows,
        "totals": {
            "pools": sum(r["pools"] for r in rows),
            "nodes": sum(r["nodes"] for r in rows),
            "accelerators": sum(r["accelerators"] for r in rows),
            "ncu": quantise_units(sum((c.ncu for c in cells.values()), Decimal(0))),
            "cp_tflops_by_class": cp_parts,
            "cp_tflops": quantise_units(cp_total),
            "cp_eflops": (cp_total / Decimal(10**6)).quantize(Decimal("0.000001")),
        },
    }
