"""Read side of the scheduler: the market as the matching engine sees it,
and queries scoped to the caller."""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from billing.domain import pricing
from marketplace.domain.units import pool_ncu
from marketplace.models import DeviceModel, ResourcePool, Role, VerificationStatus
from scheduler.domain import demand as engine
from scheduler.domain.capacity import Hold
from scheduler.domain.matching import QuoteMarket
from scheduler.domain.packing import NodeShape
from scheduler.models import HOLDING_LEASE_STATES, Job, Lease, Offer, OfferStatus

POOL_RELATED = (
    "pool",
    "pool__site",
    "pool__site__provider",
    "pool__cpu_model",
    "pool__accelerator_model",
)


def market_offers(*, hub: str | None = None, at: datetime | None = None) -> QuerySet[Offer]:
    """Active offers of verified providers on active pools (the market)."""
    qs = Offer.objects.filter(
        status=OfferStatus.ACTIVE,
        pool__status="active",
        pool__site__provider__verification_status=VerificationStatus.VERIFIED,
    ).select_related(*POOL_RELATED)
    if at is not None:
        qs = qs.filter(Q(window_end__isnull=True) | Q(window_end__gt=at))
    if hub:
        qs = qs.filter(pool__site__hub=hub)
    return qs


def _market_rows(*, hub: str | None, at: datetime) -> list[Offer]:
    """The market's offers with pool, site and provider joined, and the device
    models attached from one read of the (small) catalogue: thousands of offers
    share a few dozen models, so joining them per offer only moves bytes."""
    offers = list(market_offers(hub=hub, at=at).select_related(None).select_related("pool__site__provider"))
    devices = {d.pk: d for d in DeviceModel.objects.all()}
    for offer in offers:
        pool = offer.pool
        pool.cpu_model = devices[pool.cpu_model_id]
        if pool.accelerator_model_id:
            pool.accelerator_model = devices[pool.accelerator_model_id]
    return offers


def holding_leases(offer_ids: Iterable[int] | None = None, *, after: datetime | None = None) -> QuerySet[Lease]:
    qs = Lease.objects.filter(status__in=HOLDING_LEASE_STATES)
    if offer_ids is not None:
        qs = qs.filter(offer_id__in=list(offer_ids))
    if after is not None:
        qs = qs.filter(end__gt=after)
    return qs


def offer_node_shape(offer: Offer) -> NodeShape:
    pool = offer.pool
    return NodeShape(
        cpu_milli=pool.cpu_cores_per_node * 1000,
        memory_mib=pool.memory_gb_per_node * 1024,
        accelerators=pool.accelerators_per_node,
        accelerator_model=pool.accelerator_model.code if pool.accelerator_model_id else None,
    )


def lease_holds(lease: Lease) -> list[Hold]:
    return [Hold.from_record(record, lease.start, lease.end) for record in lease.allocations]


def price_rules(offer: Offer) -> pricing.PriceRules:
    """The offer's pricing rules as the pricing module's dataclass."""
    rules = offer.price_rules or {}
    kwargs: dict = {"list_price": offer.list_price, "pricing_type": pricing.PricingType(offer.pricing_type)}
    if rules.get("commitment_tiers"):
        kwargs["commitment_tiers"] = tuple(
            pricing.CommitmentTier(Decimal(str(t["min_hours"])), Decimal(str(t["discount"])))
            for t in rules["commitment_tiers"]
        )
    if rules.get("interruptible"):
        kwargs["interruptible"] = pricing.InterruptibleCurve(
            **{k: Decimal(str(v)) for k, v in rules["interruptible"].items()}
        )
    if rules.get("time_of_use"):
        tou = rules["time_of_use"]
        kwargs["time_of_use"] = pricing.TimeOfUse(
            peak_hours=frozenset(int(h) for h in tou.get("peak_hours", range(8, 22))),
            peak_factor=Decimal(str(tou.get("peak_factor", "1.20"))),
            off_peak_factor=Decimal(str(tou.get("off_peak_factor", "0.80"))),
        )
    if rules.get("green"):
        kwargs["green"] = pricing.GreenDiscount(**{k: Decimal(str(v)) for k, v in rules["green"].items()})
    if rules.get("volume_tiers"):
        kwargs["volume_tiers"] = tuple(
            pricing.VolumeTier(Decimal(str(t["from_ncu_hours"])), Decimal(str(t["discount"])))
            for t in rules["volume_tiers"]
        )
    return pricing.PriceRules(**kwargs)


def effective_unit_price(offer: Offer, *, at: datetime, utilisation: Decimal) -> Decimal:
    """The price per NCU-hour a lease made at ``at`` locks (before volume tiers)."""
    return pricing.lock_price(
        pricing.unit_price(
            price_rules(offer),
            at=at,
            utilisation=utilisation,
            green_share=offer.pool.site.green_share,
            commitment_hours=offer.min_lease_hours,
        )
    )


@dataclass
class _Snapshot:
    taken: float  # monotonic: when the offer rows, reliability scores and prices were read
    fingerprint: tuple
    offers: _MarketOffers  # the offer rows (with pool, site, provider, devices) and reliability scores
    generations: dict[int, int]  # offer id -> the generation its leases were read at
    leases: dict[int, list[engine.Lease]]  # offer id -> its holding leases, as the engine's Leases
    inputs: tuple[list[engine.PoolOffer], list[engine.Lease], dict[str, Offer]]
    market: QuoteMarket | None = None  # the engine's market prepared from the inputs, while it holds
    donor: QuoteMarket | None = None  # the market of the snapshot this one replaced, until this one's is prepared


_quote_snapshot: _Snapshot | None = None
_snapshot_lock = threading.Lock()  # taken to replace a snapshot the market has moved on from
_refresh_lock = threading.Lock()  # held while one thread re-reads an unchanged but old snapshot
logger = logging.getLogger(__name__)


@functools.cache
def _fingerprint_sql(*, with_buyer: bool = False) -> str:
    offers, pools = Offer._meta.db_table, ResourcePool._meta.db_table  # the models' own tables, no input
    columns = 'COUNT(o."id"), MAX(o."id"), COALESCE(SUM(o."generation"), 0), MAX(p."updated_at")'
    if with_buyer:  # the buyer's facts ride along: parameters of the select list come before the WHERE's
        columns += ", " + _buyer_facts_columns()
    joined = f'"{offers}" o INNER JOIN "{pools}" p ON o."pool_id" = p."id"'
    return f'SELECT {columns} FROM {joined} WHERE o."status" = %s'  # noqa: S608


def _market_fingerprint(*, buyer: tuple[int, datetime] | None = None) -> tuple:
    """What changes whenever the market's offers or leases do: the active
    offers' count and highest id, the sum of their generations (every lease
    made or ended on an offer bumps its generation) and their pools' latest
    edit. One small statement, asked on every quote and submission; with
    ``buyer`` (an organisation id and a moment), the same statement also reads
    the buyer's facts (see :func:`buyer_quote_market`), returned after the
    fingerprint's four values."""
    params = [] if buyer is None else _buyer_facts_params(*buyer)
    with connection.cursor() as cursor:
        cursor.execute(_fingerprint_sql(with_buyer=buyer is not None), [*params, OfferStatus.ACTIVE])
        n, top, generations, edited, *facts = cursor.fetchone()
    if isinstance(edited, str):  # SQLite hands the timestamp back as text
        edited = datetime.fromisoformat(edited)
    if facts:
        charged, has_vouchers = facts
        # PostgreSQL sums decimals exactly; SQLite hands back a float, rounded here to the field's 4 places
        facts = [Decimal(str(charged)).quantize(Decimal("0.0001")), bool(has_vouchers)]
    return (n, top, int(generations), edited, *facts)


def quote_inputs(*, now: datetime) -> tuple[list[engine.PoolOffer], list[engine.Lease], dict[str, Offer]]:
    """:func:`engine_inputs` for quotes and the submission check, from a
    snapshot this process keeps and brings up to date on every call:

    - a lease made or ended since (an offer's generation moved) is seen at
      once: only the leases of the offers that moved are read again;
    - an offer listed or withdrawn, or a pool edited, is seen at once: the
      market is read again;
    - what follows the clock without touching the market (time-of-use prices,
      reliability scores, providers' verification, an offer's terms) is read
      again once the snapshot is ``CX_QUOTE_SNAPSHOT_SECONDS`` (2; 0 turns
      the snapshot off) old, by one thread of the process while the others
      keep answering from the snapshot they have: those may be that old.
      With ``CX_QUOTE_REFRESH_IN_BACKGROUND`` (as served) that thread is one
      of its own, which also prepares the engine's market: the request that
      found the snapshot old answers from it too, instead of spending the
      20-odd ms of reading and preparing the market (measured at 200
      requests/s) and keeping every thread of the process waiting for the
      interpreter meanwhile.

    One small aggregate statement per call tells which case holds.
    The engine is still given the real ``now``: leases that ended meanwhile
    hold nothing. The scheduling cycle never uses the snapshot: it reads the
    market afresh and re-verifies every placement under locks."""
    snapshot = _snapshot(now=now)
    return snapshot.inputs if snapshot is not None else engine_inputs(now=now)


def _snapshot(*, now: datetime, fingerprint: tuple | None = None) -> _Snapshot | None:
    """The snapshot, brought up to date (``fingerprint``: the market's, read already)."""
    global _quote_snapshot
    ttl = float(getattr(settings, "CX_QUOTE_SNAPSHOT_SECONDS", 2))
    if ttl <= 0:
        return None
    if fingerprint is None:
        fingerprint = _market_fingerprint()
    snapshot = _quote_snapshot
    if snapshot is not None and snapshot.fingerprint == fingerprint:
        if time.monotonic() - snapshot.taken <= ttl or not _refresh_lock.acquire(blocking=False):
            return snapshot
        if getattr(settings, "CX_QUOTE_REFRESH_IN_BACKGROUND", False):
            refresh = threading.Thread(target=_refresh, args=(snapshot,), name="quote-snapshot-refresh", daemon=True)
            refresh.start()  # it releases the refresh lock
            return snapshot
        try:  # this thread reads the market again; the others answer from the snapshot meanwhile
            if _quote_snapshot is snapshot:
                _quote_snapshot = _snapshot_read(
                    now=now, fingerprint=fingerprint, leases_of=snapshot, donor=_market_of(snapshot)
                )
            return _quote_snapshot
        finally:
            _refresh_lock.release()
    with _snapshot_lock:  # the market moved: threads of one process bring it up to date once, not once each
        snapshot = _quote_snapshot
        if snapshot is None or snapshot.fingerprint != fingerprint:
            if snapshot is not None and _same_offers(snapshot.fingerprint, fingerprint):
                snapshot = _snapshot_leases_moved(snapshot, now=now, fingerprint=fingerprint)
            else:
                snapshot = _snapshot_read(now=now, fingerprint=fingerprint, donor=_market_of(snapshot))
            _quote_snapshot = snapshot
    return snapshot


def _refresh(snapshot: _Snapshot) -> None:
    """Read an old but unchanged snapshot's market again and prepare the engine's market from it, on a thread
    of its own (holding the refresh lock, released here), then put it in the old one's place unless the market
    moved meanwhile (the snapshot brought up to date then is the newer; the next call past its age reads it
    again). On its own database connection, closed when done."""
    global _quote_snapshot
    try:
        now = timezone.now()
        fresh = _snapshot_read(now=now, fingerprint=snapshot.fingerprint, leases_of=snapshot)
        pool_offers, leases, _rows = fresh.inputs
        fresh.market = QuoteMarket(pool_offers, leases, now=now, donor=_market_of(snapshot))
        with _snapshot_lock:
            if _quote_snapshot is snapshot:
                _quote_snapshot = fresh
    except Exception:  # the requests go on with the snapshot they have; the next past its age tries again
        logger.exception("reading the quote snapshot again failed")
    finally:
        connections.close_all()  # this thread's own
        _refresh_lock.release()


def _market_of(snapshot: _Snapshot | None) -> QuoteMarket | None:
    """The engine's market a snapshot prepared, or the one it was to start from: the next market's donor."""
    if snapshot is None:
        return None
    return snapshot.market or snapshot.donor


def _same_offers(before: tuple, after: tuple) -> bool:
    """Whether two fingerprints differ at most in their leases' generations."""
    return (before[0], before[1], before[3]) == (after[0], after[1], after[3])


def _generations() -> dict[int, int]:
    return dict(Offer.objects.filter(status=OfferStatus.ACTIVE).values_list("id", "generation"))


def _snapshot_read(
    *, now: datetime, fingerprint: tuple, leases_of: _Snapshot | None = None, donor: QuoteMarket | None = None
) -> _Snapshot:
    """The market read afresh (``leases_of``: a snapshot of the same
    fingerprint, whose leases still hold: only the offers are read again;
    ``donor``: the market of the snapshot it replaces)."""
    if leases_of is not None:
        generations, leases = leases_of.generations, leases_of.leases
    else:
        generations = _generations()  # before the leases: a lease made in between is read again next time
        leases = _leases_by_offer(generations, now=now)
    offers = _market_offers(now=now)
    inputs = _inputs_from(offers, leases, now=now)
    return _Snapshot(time.monotonic(), fingerprint, offers, generations, leases, inputs, donor=donor)


def _snapshot_leases_moved(snapshot: _Snapshot, *, now: datetime, fingerprint: tuple) -> _Snapshot:
    """The snapshot with the leases of the offers whose generation moved brought
    up to date (the offer rows and prices kept: those offers are the same).
    What a lease holds (start, end, allocations, buyer, NCU) never changes once
    it is made, so of a moved offer only the ids of its holding leases are read,
    and the rows of the leases not seen before."""
    generations = _generations()
    moved = [pk for pk, generation in generations.items() if snapshot.generations.get(pk) != generation]
    leases = {pk: held for pk, held in snapshot.leases.items() if pk in generations}
    known = {lease.lease_id: lease for pk in moved for lease in snapshot.leases.get(pk, ())}
    leases.update(_holding_leases_reading(moved, now=now, known=known))
    inputs = _inputs_from(snapshot.offers, leases, now=now, prices_at=snapshot.inputs, moved=set(moved))
    return replace(
        snapshot,
        fingerprint=fingerprint,
        generations=generations,
        leases=leases,
        inputs=inputs,
        market=None,
        donor=_market_of(snapshot),
    )


class PreparedMarket(NamedTuple):
    """The engine's market prepared for quotes, its Offer rows by engine pool id, and the moment it answers for."""

    market: QuoteMarket
    rows: dict[str, Offer]
    now: datetime


def quote_market(*, now: datetime, fingerprint: tuple | None = None) -> PreparedMarket:
    """The engine's market prepared for quotes and submission checks at
    ``now`` (see :class:`~scheduler.domain.matching.QuoteMarket`), and the
    Offer rows by engine pool id: built from :func:`quote_inputs`' snapshot
    and kept with it while it holds (no lease starts or ends meanwhile), so
    a quote only evaluates its job. Without the snapshot, built afresh.
    ``fingerprint``: the market's, read already (see :func:`buyer_quote_market`).

    The moment returned is ``now``, or a moment later when another thread
    prepared the market at a moment after ``now`` (a request that read the
    clock a little before the other's): the caller quotes at that moment
    rather than preparing the market again for an earlier one."""
    snapshot = _snapshot(now=now, fingerprint=fingerprint)
    if snapshot is None:
        pool_offers, leases, rows = engine_inputs(now=now)
        return PreparedMarket(QuoteMarket(pool_offers, leases, now=now), rows, now)
    pool_offers, leases, rows = snapshot.inputs
    market = snapshot.market
    if market is None or not market.usable_at(now):
        with _snapshot_lock:
            market = snapshot.market
            if market is not None and now < market.prepared_at and market.usable_at(market.prepared_at):
                return PreparedMarket(market, rows, market.prepared_at)
            if market is None or not market.usable_at(now):
                # started from the market it replaces: what still holds of it is kept (see QuoteMarket)
                market = QuoteMarket(pool_offers, leases, now=now, donor=_market_of(snapshot))
                snapshot.market, snapshot.donor = market, None
    return PreparedMarket(market, rows, now)


def buyer_quote_market(buyer_id: int, *, now: datetime) -> tuple[PreparedMarket, Decimal, bool]:
    """:func:`quote_market`, and what a quote needs of the buyer: the NCU-hours
    it was charged for this month (volume tiers: as
    :func:`billing.selectors.month_to_date_ncu_hours`) and whether it holds a
    voucher usable at ``now`` (only then are its vouchers read). One statement
    reads the market's fingerprint and the buyer's facts together."""
    *fingerprint, month_to_date, has_vouchers = _market_fingerprint(buyer=(buyer_id, now))
    return quote_market(now=now, fingerprint=tuple(fingerprint)), month_to_date, has_vouchers


@dataclass(frozen=True)
class _MarketOffers:
    rows: list[Offer]
    reliability: dict[int, Decimal]


def _market_offers(*, now: datetime, hub: str | None = None) -> _MarketOffers:
    from scheduler.execution import reliability_scores  # execution imports the services, which import us

    offers = _market_rows(hub=hub, at=now)
    return _MarketOffers(offers, reliability_scores(sorted({o.pool.site.provider_id for o in offers}), now=now))


def _leases_by_offer(
    offer_ids: Iterable[int], *, now: datetime, lease_ids: Collection[int] | None = None
) -> dict[int, list[engine.Lease]]:
    """The holding leases of these offers (or with these ids) that have not ended by
    ``now``, as the engine's Leases, by offer id, in id order."""
    offer_ids = list(offer_ids)
    by_offer: dict[int, list[engine.Lease]] = defaultdict(list, {pk: [] for pk in offer_ids})
    if lease_ids is not None:
        if not lease_ids:
            return by_offer
        rows = holding_leases(after=now).filter(pk__in=list(lease_ids))
    elif offer_ids:
        rows = holding_leases(offer_ids, after=now)
    else:
        return by_offer
    for row in rows.order_by("id").values(
        "id", "job_id", "job__buyer_id", "offer_id", "start", "end", "allocations", "interruptible", "ncu"
    ):
        holds = [Hold.from_record(r, row["start"], row["end"]) for r in row["allocations"]]
        by_offer[row["offer_id"]].append(
            engine.Lease(
                lease_id=str(row["id"]),
                job_id=str(row["job_id"]),
                org_id=str(row["job__buyer_id"]),
                pool_id=f"offer:{row['offer_id']}",
                start=row["start"],
                end=row["end"],
                allocations=tuple(engine.NodeAllocation(h.placement(), h.demand()) for h in holds),
                interruptible=row["interruptible"],
                ncu=row["ncu"],
            )
        )
    return by_offer


def engine_inputs(
    *,
    now: datetime,
    hub: str | None = None,
) -> tuple[list[engine.PoolOffer], list[engine.Lease], dict[str, Offer]]:
    """The market for one cycle (one hub's with ``hub``): offers as the
    engine's PoolOffers, holding leases as its Leases, and the Offer rows by
    engine pool id, read afresh (the leases as :func:`_holding_leases_of`
    reads them)."""
    offers = _market_offers(now=now, hub=hub)
    return _inputs_from(offers, _holding_leases_of([o.pk for o in offers.rows], now=now), now=now)


_lease_rows: dict[str, engine.Lease] = {}  # lease id -> its engine Lease, as this process read it (PostgreSQL)


def _holding_leases_of(offer_ids: list[int], *, now: datetime) -> dict[int, list[engine.Lease]]:
    """:func:`_leases_by_offer` of these offers, as exact, for less: which leases
    hold is read afresh every time, but only the rows of the leases this
    process has not read before. What a lease holds (start, end, allocations,
    buyer, NCU) never changes once it is made; reading the rows of two
    thousand holding leases took a scheduling cycle 80 ms, against a few for
    their ids. A lease that stops holding between the two statements is left
    out, as a full read a moment later would leave it.

    On PostgreSQL only, where an id is never given twice (a sequence does not
    go back when a transaction is rolled back). SQLite's ids are, so there
    every row is read."""
    global _lease_rows
    if connection.vendor != "postgresql":
        return _leases_by_offer(offer_ids, now=now)
    known = dict(_lease_rows)
    by_offer = _holding_leases_reading(offer_ids, now=now, known=known)
    _lease_rows = {pk: lease for pk, lease in known.items() if lease.end > now}  # those ended hold nothing again
    return by_offer


def _holding_leases_reading(
    offer_ids: list[int], *, now: datetime, known: dict[str, engine.Lease]
) -> dict[int, list[engine.Lease]]:
    """The holding leases of these offers, by offer id, in id order: their ids
    read afresh, their rows taken from ``known`` (engine Leases by lease id),
    and only the rows of those not there read, and added to it. A lease that
    stops holding between the two statements is left out."""
    holding = list(holding_leases(offer_ids, after=now).order_by("id").values_list("offer_id", "id"))
    unseen = [pk for _offer, pk in holding if str(pk) not in known]
    for held in _leases_by_offer((), now=now, lease_ids=unseen).values():
        known.update((lease.lease_id, lease) for lease in held)
    by_offer: dict[int, list[engine.Lease]] = {pk: [] for pk in offer_ids}
    for offer_id, pk in holding:
        if str(pk) in known:
            by_offer[offer_id].append(known[str(pk)])
    return by_offer


def _inputs_from(
    offers: _MarketOffers,
    leases: dict[int, list[engine.Lease]],
    *,
    now: datetime,
    prices_at: tuple[list[engine.PoolOffer], list[engine.Lease], dict[str, Offer]] | None = None,
    moved: Collection[int] = (),
) -> tuple[list[engine.PoolOffer], list[engine.Lease], dict[str, Offer]]:
    """The engine's inputs from offer rows and their leases. ``prices_at``:
    earlier inputs of the same offer rows, whose PoolOffers (prices) and rows
    are kept for the offers not in ``moved`` (a moved offer's utilisation,
    and so an interruptible offer's price, follows its leases)."""
    kept = {} if prices_at is None else {p.pool_id: (p, prices_at[2][p.pool_id]) for p in prices_at[0]}
    pool_offers: list[engine.PoolOffer] = []
    by_key: dict[str, Offer] = {}
    engine_leases: list[engine.Lease] = []
    for row in offers.rows:
        key = f"offer:{row.pk}"
        held = leases.get(row.pk, [])
        engine_leases.extend(held)
        if key in kept and row.pk not in moved:
            pool_offer, offer = kept[key]
        else:
            offer = copy.copy(row)  # each inputs' row keeps its own utilisation
            held_ncu = sum((lease.ncu for lease in held if lease.start <= now), Decimal(0))
            pool_offer = _pool_offer(key, offer, held_ncu=held_ncu, reliability=offers.reliability, now=now)
        pool_offers.append(pool_offer)
        by_key[key] = offer
    return pool_offers, engine_leases, by_key


def _pool_offer(
    key: str, offer: Offer, *, held_ncu: Decimal, reliability: dict[int, Decimal], now: datetime
) -> engine.PoolOffer:
    """The engine's PoolOffer of an offer row; sets the row's ``utilisation``
    (the share of its NCU held now: the quote prices interruptible offers from it)."""
    pool = offer.pool
    site = pool.site
    shape = replace(pool.shape(), node_count=offer.nodes_offered)
    total_ncu = pool_ncu(shape)
    utilisation = min(Decimal(1), held_ncu / total_ncu) if total_ncu else Decimal(0)
    offer.utilisation = utilisation
    accelerator = pool.accelerator_model
    return engine.PoolOffer(
        pool_id=key,
        identifier=pool.identifier,
        provider_id=str(site.provider_id),
        site_id=str(site.pk),
        hub=site.hub,
        city=site.city,
        stack=pool.software_stack,
        cpu_architecture=pool.cpu_architecture,
        shape=shape,
        node_memory_mib=pool.memory_gb_per_node * 1024,
        node_storage_gib=pool.storage_gb_per_node,
        unit_price=effective_unit_price(offer, at=now, utilisation=utilisation),
        window_start=offer.window_start,
        window_end=offer.window_end,
        pricing_type=offer.pricing_type,
        accelerator_memory_gib=(accelerator.memory_gb or Decimal(0)) if accelerator else Decimal(0),
        unit_power_w=_unit_power(pool),
        domestic=bool(accelerator.domestic) if accelerator else pool.cpu_model.domestic,
        provider_verified=site.provider.verification_status == VerificationStatus.VERIFIED,
        provider_reliability=reliability.get(site.provider_id, Decimal(1)),
        pue=site.pue,
        green_share=site.green_share,
        grid_carbon_kg_per_kwh=site.grid_factor,
        sharing_allowed=pool.sharing_allowed,
        min_lease=hours(offer.min_lease_hours),
        max_lease=hours(offer.max_lease_hours) if offer.max_lease_hours else None,
    )


@functools.cache
def _buyer_facts_columns() -> str:
    from billing.models import Charge
    from vouchers.models import Voucher

    charges, vouchers = Charge._meta.db_table, Voucher._meta.db_table  # the models' own tables, no input
    charged = f'SELECT COALESCE(SUM("ncu_hours"), 0) FROM "{charges}" WHERE "buyer_id" = %s AND "created_at" >= %s'  # noqa: S608
    held = '"holder_id" = %s AND "status" = %s AND "valid_from" <= %s AND "expires_at" > %s'
    usable = f'SELECT 1 FROM "{vouchers}" WHERE {held}'  # noqa: S608
    return f"({charged}), EXISTS({usable})"


def _buyer_facts_params(buyer_id: int, at: datetime) -> list[Any]:
    from billing.selectors import month_start
    from vouchers.models import VoucherStatus

    return [buyer_id, month_start(at), buyer_id, VoucherStatus.ACTIVE, at, at]


def hours(value: Decimal) -> timedelta:
    return timedelta(seconds=int(value * 3600))


def _unit_power(pool) -> Decimal:
    if pool.accelerator_model_id:
        return Decimal(pool.accelerator_model.power_w)
    cores = pool.cpu_model.cores or 1
    return Decimal(pool.cpu_model.power_w) / cores


def jobs_visible_to(user: object) -> QuerySet[Job]:
    qs = Job.objects.all()
    if getattr(user, "role", "") == Role.OPERATOR:
        return qs
    return qs.filter(buyer_id=getattr(user, "organisation_id", None))


def offers_visible_to(user: object) -> QuerySet[Offer]:
    """The market's offers, plus a provider's own (any state); operators see all."""
    qs = Offer.objects.select_related(*POOL_RELATED)
    if getattr(user, "role", "") == Role.OPERATOR:
        return qs
    visible = Q(status=OfferStatus.ACTIVE, pool__site__provider__verification_status=VerificationStatus.VERIFIED)
    if getattr(user, "role", "") == Role.PROVIDER:
        visible |= Q(pool__site__provider_id=getattr(user, "organisation_id", None))
    return qs.filter(visible)


def leases_visible_to(user: object) -> QuerySet[Lease]:
    """Buyers see their jobs' leases, providers the leases on their pools, operators all."""
    qs = Lease.objects.select_related("pool", "job")
    role = getattr(user, "role", "")
    if role == Role.OPERATOR:
        return qs
    org = getattr(user, "organisation_id", None)
    if role == Role.PROVIDER:
        return qs.filter(pool__site__provider_id=org)
    return qs.filter(job__buyer_id=org)
