"""The market dashboard's arithmetic: capacity and utilisation by hub and
compute class, green share and carbon per NCU-hour, the price index and
waiting times. Pure functions over frozen dataclasses; console.selectors
reads the rows.

* **Utilisation** of a hub and class is the NCU held now by leases over the
  NCU offered on the market (never above 1; 0 when nothing is offered).
* **Carbon per NCU-hour** of a pool: the power drawn per NCU (device power
  over the NCU it delivers) × the site's PUE × grid factor × (1 − green
  share), in grams of CO2 per NCU-hour; a hub's figure weights its pools by
  their NCU. Its **green share** weights the sites' green-electricity shares
  the same way.
* **Price index** of a class: the NCU-hour-weighted mean locked unit price
  of the leases created each day, as 100 × that day's mean over the first
  day's in the range, so classes priced on different scales share one axis.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

ZERO = Decimal(0)
SHARE = Decimal("0.0001")
UNITS = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """One pool as the dashboard counts it."""

    hub: str
    compute_class: str
    ncu: Decimal  # the whole pool
    offered_ncu: Decimal  # its nodes on active offers
    held_ncu: Decimal  # held now by scheduled, running or suspended leases
    watts_per_ncu: Decimal
    pue: Decimal
    grid_factor: Decimal  # kg CO2 per kWh
    green_share: Decimal  # 0..1


@dataclass(frozen=True, slots=True)
class Cell:
    hub: str
    compute_class: str
    pools: int
    ncu: Decimal
    offered_ncu: Decimal
    held_ncu: Decimal

    @property
    def utilisation(self) -> Decimal:
        return utilisation(self.held_ncu, self.offered_ncu)


@dataclass(frozen=True, slots=True)
class HubGreen:
    hub: str
    ncu: Decimal
    green_share: Decimal  # NCU-weighted, 0..1
    carbon_g_per_ncu_hour: Decimal  # NCU-weighted


def utilisation(held: Decimal, offered: Decimal) -> Decimal:
    """Share of the offered NCU held now, 0..1 to four places."""
    if offered <= 0:
        return ZERO.quantize(SHARE)
    return min(Decimal(1), max(ZERO, held / offered)).quantize(SHARE, rounding=ROUND_HALF_UP)


def carbon_g_per_ncu_hour(
    *, watts_per_ncu: Decimal, pue: Decimal, grid_factor: Decimal, green_share: Decimal
) -> Decimal:
    """Grams of CO2 for one NCU-hour: kWh per NCU-hour × PUE × grid kg/kWh × (1 − green share) × 1000."""
    return watts_per_ncu / 1000 * pue * grid_factor * (1 - green_share) * 1000


def cells(pools: Iterable[PoolCapacity]) -> list[Cell]:
    """Capacity, offer and hold sums by (hub, compute class), in the order first seen."""
    sums: dict[tuple[str, str], list] = {}
    for pool in pools:
        row = sums.setdefault((pool.hub, pool.compute_class), [0, ZERO, ZERO, ZERO])
        row[0] += 1
        row[1] += pool.ncu
        row[2] += pool.offered_ncu
        row[3] += min(pool.held_ncu, pool.offered_ncu) if pool.offered_ncu > 0 else ZERO
    return [
        Cell(hub=hub, compute_class=cls, pools=n, ncu=ncu, offered_ncu=offered, held_ncu=held)
        for (hub, cls), (n, ncu, offered, held) in sums.items()
    ]


def hub_green(pools: Iterable[PoolCapacity]) -> list[HubGreen]:
    """Per hub: NCU-weighted green share and carbon per NCU-hour of its pools."""
    sums: dict[str, list[Decimal]] = {}
    for pool in pools:
        row = sums.setdefault(pool.hub, [ZERO, ZERO, ZERO])
        row[0] += pool.ncu
        row[1] += pool.ncu * pool.green_share
        row[2] += pool.ncu * carbon_g_per_ncu_hour(
            watts_per_ncu=pool.watts_per_ncu, pue=pool.pue, grid_factor=pool.grid_factor, green_share=pool.green_share
        )
    result = []
    for hub, (ncu, green, carbon) in sums.items():
        if ncu <= 0:
            continue
        result.append(
            HubGreen(
                hub=hub,
                ncu=ncu,
                green_share=(green / ncu).quantize(SHARE, rounding=ROUND_HALF_UP),
                carbon_g_per_ncu_hour=(carbon / ncu).quantize(UNITS, rounding=ROUND_HALF_UP),
            )
        )
    return result


def price_index(daily_means: Sequence[tuple[date, Decimal]]) -> list[tuple[date, Decimal]]:
    """100 × each day's mean price over the first day's (days in order; a first mean of 0 gives no index)."""
    ordered = sorted(daily_means)
    if not ordered or ordered[0][1] <= 0:
        return []
    base = ordered[0][1]
    return [(day, (mean * 100 / base).quantize(UNITS, rounding=ROUND_HALF_UP)) for day, mean in ordered]


def median_seconds(durations: Iterable[float]) -> Decimal | None:
    """Median of waiting times in seconds (whole seconds), None for none."""
    values = [max(0.0, d) for d in durations]
    if not values:
        return None
    return Decimal(round(statistics.median(values)))
