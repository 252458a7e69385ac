"""``manage.py check_capacity``: audit every offer's holding leases for
overbooking; exit non-zero listing the offers overbooked."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scheduler import selectors
from scheduler.domain.capacity import Hold, Overbooking, overbookings
from scheduler.models import Offer

DEFAULT_LIMIT = 5


@dataclass(frozen=True)
class CapacityAudit:
    offers: int
    leases: int
    overbooked: dict[Offer, list[Overbooking]]


def audit_capacity() -> CapacityAudit:
    """Sweep the holding (scheduled or running) leases of every offer, past and
    future, against the offer's node shape and node count. Leases are read
    before offers, so every lease read has its offer."""
    holds: dict[int, list[Hold]] = defaultdict(list)
    leases = 0
    for lease in selectors.holding_leases().only("offer_id", "start", "end", "allocations").iterator(chunk_size=2000):
        holds[lease.offer_id].extend(selectors.lease_holds(lease))
        leases += 1
    offers = Offer.objects.select_related("pool", "pool__accelerator_model").order_by("pk")
    overbooked: dict[Offer, list[Overbooking]] = {}
    count = 0
    for offer in offers.iterator(chunk_size=2000):
        count += 1
        found = overbookings(selectors.offer_node_shape(offer), offer.nodes_offered, holds.get(offer.pk, ()))
        if found:
            overbooked[offer] = found
    return CapacityAudit(offers=count, leases=leases, overbooked=overbooked)


class Command(BaseCommand):
    help = (
        "Check that no offer is overbooked: for every offer, no node, CPU, memory or accelerator is held by its "
        "scheduled and running leases beyond its size at any instant. Prints a summary and exits 1 listing the "
        "offers overbooked."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            help=f"list at most this many overbookings per offer (default {DEFAULT_LIMIT})",
        )

    def handle(self, *args: Any, limit: int, **options: Any) -> None:
        audit = audit_capacity()
        self.stdout.write(
            f"{audit.offers} offers, {audit.leases} holding leases checked: {len(audit.overbooked)} overbooked"
        )
        if not audit.overbooked:
            self.stdout.write(self.style.SUCCESS("No offer is overbooked."))
            return
        for offer, found in audit.overbooked.items():
            self.stdout.write(f"offer {offer.pk} on pool {offer.pool.identifier}: {len(found)} overbooking(s)")
            for overbooking in found[:limit]:
                self.stdout.write(f"  {overbooking}")
        ids = ", ".join(str(offer.pk) for offer in audit.overbooked)
        raise CommandError(f"{len(audit.overbooked)} offer(s) overbooked: {ids}", returncode=1)
