"""Ledger checks: each function asks the database one aggregate question and
returns a sentence per breach it finds (empty when the books are sound).
``manage.py check_ledger`` runs them all.

Every check is one SQL statement (joins and GROUP BY, no per-row queries), so
it runs on millions of rows. Sums are compared to the half fen, which is
exact on PostgreSQL and absorbs the binary rounding of SQLite's decimals."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, DecimalField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Abs, Coalesce

from billing.models import (
    MAY_GO_NEGATIVE,
    Account,
    AccountKind,
    Charge,
    Hold,
    LedgerTransaction,
    SettlementStatement,
    StatementRole,
    UsageSample,
)
from billing.services import PLATFORM_COMMISSION

HALF_FEN = Decimal("0.005")
FEN = Decimal("0.01")
DEFAULT_LIMIT = 1000

Check = Callable[[int], list[str]]


def _sum(expression: str, **extra: object) -> Coalesce:
    money = DecimalField(max_digits=20, decimal_places=2)
    return Coalesce(Sum(expression, **extra), Value(Decimal(0)), output_field=money)


def _differs(a: str, b: str, *, by: Decimal | int = HALF_FEN) -> Q:
    """``a`` and ``b`` (fields or annotations, annotated with :func:`_diff`)
    differ by ``by`` or more: half a fen for money, 1 for counts."""
    return Q(**{f"_diff_{a}_{b}__gte": by})


def _diff(a: str, b: str) -> dict[str, Abs]:
    return {f"_diff_{a}_{b}": Abs(F(a) - F(b))}


def _cny(amount: object) -> str:
    """An amount as shown in a sentence: to the fen (SQLite sums carry binary noise)."""
    return str(Decimal(str(amount)).quantize(FEN))


def _first(breaching: QuerySet, fields: Sequence[str], limit: int) -> list[tuple[Any, ...]]:
    """``fields`` of the first ``limit + 1`` rows of ``breaching`` (a query
    filtered to breaches), in id order.

    Asked plainly (``ORDER BY id LIMIT n``), PostgreSQL walks the table in
    index order through nested loops, hoping to stop early; on millions of
    sound rows there is nothing to stop at, and that is several times slower
    than the hash joins it plans when it must read everything anyway. So a
    plain filter is ordered by ``id + 0``, which no index provides; an
    aggregate query is asked for its ids first (a subquery with GROUP BY is
    planned whole), then for the values of those few rows."""
    if breaching.query.group_by is None:
        return list(breaching.order_by(F("id") + 0).values_list(*fields)[: limit + 1])
    ids = list(
        breaching.model.objects.filter(pk__in=breaching.order_by().values("pk"))
        .order_by("pk")
        .values_list("pk", flat=True)[: limit + 1]
    )
    return list(breaching.filter(pk__in=ids).order_by("pk").values_list(*fields)) if ids else []


def _more(found: list[str], limit: int, what: str) -> list[str]:
    if len(found) > limit:
        return [*found[:limit], f"… and more {what} (only the first {limit} are listed)."]
    return found


# --- transactions and accounts ---------------------------------------------------------------------------------------


def unbalanced_transactions(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Transactions whose postings do not sum to zero, or that have fewer than two postings."""
    breaching = LedgerTransaction.objects.annotate(total=_sum("postings__amount"), lines=Count("postings")).filter(
        Q(total__gte=HALF_FEN) | Q(total__lte=-HALF_FEN) | Q(lines__lt=2)
    )
    rows = _first(breaching, ("id", "key", "total", "lines"), limit)
    found = [
        f"Transaction {pk} ({key}) has postings summing to {_cny(total)}, not zero."
        if abs(total) >= HALF_FEN
        else f"Transaction {pk} ({key}) has {lines} posting(s); double entry needs at least two."
        for pk, key, total, lines in rows
    ]
    return _more(found, limit, "unbalanced transactions")


def stale_balances(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Accounts whose cached balance is not the sum of their postings."""
    rows = (
        Account.objects.annotate(posted=_sum("postings__amount"))
        .annotate(**_diff("balance", "posted"))
        .filter(_differs("balance", "posted"))
        .order_by("id")
        .values_list("code", "balance", "posted")[: limit + 1]
    )
    found = [
        f"Account {code} caches a balance of {_cny(cached)} but its postings sum to {_cny(posted)}."
        for code, cached, posted in rows
    ]
    return _more(found, limit, "stale balances")


def forbidden_negative_balances(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Accounts of a kind that may not go below zero, below zero (cached or
    posted), or flagged as allowed to (which disarms the database's check)."""
    allowed = [str(kind) for kind in MAY_GO_NEGATIVE]
    rows = (
        Account.objects.exclude(kind__in=allowed)
        .annotate(posted=_sum("postings__amount"))
        .filter(Q(balance__lte=-HALF_FEN) | Q(posted__lte=-HALF_FEN) | Q(may_go_negative=True))
        .order_by("id")
        .values_list("code", "kind", "balance", "posted", "may_go_negative")[: limit + 1]
    )
    found = []
    for code, kind, cached, posted, flagged in rows:
        if cached <= -HALF_FEN or posted <= -HALF_FEN:
            found.append(
                f"Account {code} ({kind}) may not go below zero but stands at {_cny(min(cached, posted))} "
                f"(cached {_cny(cached)}, posted {_cny(posted)})."
            )
        if flagged:
            found.append(f"Account {code} ({kind}) is flagged as allowed to go negative; its kind is not.")
    return _more(found, limit, "negative balances")


# --- usage and charges -----------------------------------------------------------------------------------------------


def _deepest_volume_discounts(offer_ids: set[int]) -> dict[int, Decimal]:
    """Each offer's deepest volume-tier discount (0 without tiers)."""
    from scheduler.models import Offer
    from scheduler.selectors import price_rules

    return {
        offer.pk: max((tier.discount for tier in price_rules(offer).volume_tiers), default=Decimal(0))
        for offer in Offer.objects.filter(pk__in=offer_ids)
    }


def samples_not_charged_once(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Usage samples marked charged without their Charge, and Charges of
    samples not marked charged.

    A sample too small to cost a fen is settled without a Charge, so a sample
    without one is a breach only if it is worth at least a fen even at its
    offer's deepest volume discount. The database picks the samples worth a
    fen at the lease's locked price (in a sound ledger: none); the discount
    check runs on those few."""
    candidates = (
        UsageSample.objects.filter(charged=True, charge__isnull=True)
        .annotate(value=F("ncu_hours") * F("lease__unit_price"))
        .filter(value__gte=FEN)
    )
    missing: list[tuple[Any, ...]] = []
    batch = max(limit + 1, 100)
    after = 0
    while len(missing) <= limit:
        rows = _first(
            candidates.filter(pk__gt=after), ("id", "lease_id", "sequence", "value", "lease__offer_id"), batch - 1
        )
        if not rows:
            break
        discounts = _deepest_volume_discounts({row[4] for row in rows})
        missing += [row for row in rows if row[3] * (1 - discounts.get(row[4], Decimal(0))) >= FEN]
        after = rows[-1][0]
    found = [
        f"Usage sample {pk} (lease {lease}, sequence {sequence}) is marked charged but has no charge "
        f"(worth {_cny(value)} CNY at the lease's price)."
        for pk, lease, sequence, value, _offer in missing[: limit + 1]
    ]
    unmarked = _first(
        UsageSample.objects.filter(charged=False, charge__isnull=False),
        ("id", "lease_id", "sequence", "charge__id"),
        limit,
    )
    found += [
        f"Usage sample {pk} (lease {lease}, sequence {sequence}) has charge {charge} but is not marked charged."
        for pk, lease, sequence, charge in unmarked
    ]
    return _more(found, limit, "samples not charged exactly once")


def charges_not_matching(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Charges whose split or funding does not add up to the gross, that name
    another lease than their sample's, or whose ledger transaction does not
    move exactly their amounts: out of the buyer's held, available and debt
    accounts ``from_hold``, ``from_available`` and ``owed``, out of voucher
    accounts ``voucher_funded``, into the provider's payable account the
    provider share and into platform commission the commission, and nothing
    else."""
    arithmetic = _first(
        Charge.objects.annotate(split=F("commission") + F("provider_share"))
        .annotate(funded=F("from_hold") + F("from_available") + F("owed") + F("voucher_funded"))
        .annotate(**_diff("gross", "split"), **_diff("gross", "funded"))
        .filter(_differs("gross", "split") | _differs("gross", "funded") | ~Q(lease_id=F("sample__lease_id"))),
        ("id", "gross", "commission", "provider_share", "split", "funded", "lease_id", "sample__lease_id"),
        limit,
    )
    found = []
    for pk, gross, commission, share, split, funded, lease, sample_lease in arithmetic:
        if abs(gross - split) >= HALF_FEN:
            found.append(f"Charge {pk}: gross {gross} is not commission {commission} + provider share {share}.")
        if abs(gross - funded) >= HALF_FEN:
            found.append(
                f"Charge {pk}: gross {gross} is not what funded it ({_cny(funded)} from hold, wallet, debt, vouchers)."
            )
        if lease != sample_lease:
            found.append(f"Charge {pk} is for lease {lease} but its usage sample belongs to lease {sample_lease}.")

    posting = "transaction__postings__"
    buyer_account = {f"{posting}account__organisation_id": F("buyer_id")}
    legs = {
        "to_commission": Q(**{f"{posting}account__code": PLATFORM_COMMISSION}),
        "to_provider": Q(
            **{f"{posting}account__organisation_id": F("provider_id"), f"{posting}account__kind": "payable"}
        ),
        "out_of_held": Q(**buyer_account, **{f"{posting}account__kind": AccountKind.BUYER_HELD}),
        "out_of_available": Q(**buyer_account, **{f"{posting}account__kind": AccountKind.BUYER_AVAILABLE}),
        "out_of_debt": Q(**buyer_account, **{f"{posting}account__kind": AccountKind.BUYER_DEBT}),
        "out_of_vouchers": Q(**{f"{posting}account__kind": AccountKind.VOUCHER}),
    }
    other = ~Q(legs["to_commission"] | legs["to_provider"] | legs["out_of_held"])
    other &= ~Q(legs["out_of_available"] | legs["out_of_debt"] | legs["out_of_vouchers"])
    expected = {
        "to_commission": "commission",
        "to_provider": "provider_share",
        "out_of_held": "from_hold",
        "out_of_available": "from_available",
        "out_of_debt": "owed",
        "out_of_vouchers": "voucher_funded",
    }
    sums = {name: _sum(f"{posting}amount", filter=q) for name, q in legs.items()}
    mismatch = Q(others__gt=0) | ~Q(transaction__kind="capture")
    diffs = {}
    for name, field in expected.items():
        sign = 1 if name.startswith("to_") else -1
        diffs[f"_off_{name}"] = Abs(F(name) * sign - F(field))
        mismatch |= Q(**{f"_off_{name}__gte": HALF_FEN})
    breaching = Charge.objects.annotate(**sums, others=Count(f"{posting}id", filter=other)).annotate(**diffs)
    fields = ("id", "transaction__key", "transaction__kind", "others", *expected, *expected.values())
    rows = _first(breaching.filter(mismatch), fields, limit)
    for pk, key, kind, others, *amounts in rows:
        posted, recorded = amounts[: len(expected)], amounts[len(expected) :]
        problems = []
        for (leg, field), moved, want in zip(expected.items(), posted, recorded, strict=True):
            sign = 1 if leg.startswith("to_") else -1
            if abs(sign * moved - want) >= HALF_FEN:
                problems.append(f"{leg.replace('_', ' ')} {_cny(sign * moved)} but the charge's {field} is {want}")
        if others:
            problems.append(f"{others} posting(s) to accounts that are not the charge's")
        if kind != "capture":
            problems.append(f"its kind is {kind}, not capture")
        found.append(f"Charge {pk} does not match its transaction {key}: {'; '.join(problems)}.")
    return _more(found, limit, "charges not matching their transactions")


# --- statements and holds --------------------------------------------------------------------------------------------


def _statement_totals_differ(queryset, columns: dict[str, str], source: str, limit: int) -> list[str]:
    """Statements in ``queryset`` whose ``columns`` (statement field → sum
    annotation) differ; ``source`` names what was summed."""
    mismatch = Q()
    diffs = {}
    for field, total in columns.items():
        diffs.update(_diff(field, total))
        mismatch |= _differs(field, total, by=1 if field == "samples" else HALF_FEN)
    rows = (
        queryset.annotate(**diffs)
        .filter(mismatch)
        .order_by("id")
        .values_list("id", "role", "organisation_id", *columns, *columns.values())[: limit + 1]
    )
    found = []
    for pk, role, org, *amounts in rows:
        stated, summed = amounts[: len(columns)], amounts[len(columns) :]
        problems = [
            f"{field} {a} but {source} sum to {b if field == 'samples' else _cny(b)}"
            for field, a, b in zip(columns, stated, summed, strict=True)
            if abs(Decimal(a) - Decimal(b)) >= HALF_FEN
        ]
        found.append(f"Statement {pk} ({role}, organisation {org}): {'; '.join(problems)}.")
    return found


def statements_not_adding_up(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Statements whose totals (gross, commission, net, samples) differ from
    the sums of their lines, or from the sums of the charges linked to them
    (a provider's through ``provider_statement``, a buyer's through
    ``buyer_statement``; net is the provider share, samples count charges)."""
    by_lines = SettlementStatement.objects.annotate(
        lines_gross=_sum("lines__gross"),
        lines_commission=_sum("lines__commission"),
        lines_net=_sum("lines__net"),
        lines_samples=Coalesce(Sum("lines__samples"), 0),
    )
    found = _statement_totals_differ(
        by_lines,
        {"gross": "lines_gross", "commission": "lines_commission", "net": "lines_net", "samples": "lines_samples"},
        "its lines",
        limit,
    )
    for role, charges in ((StatementRole.PROVIDER, "provider_charges"), (StatementRole.BUYER, "buyer_charges")):
        by_charges = SettlementStatement.objects.filter(role=role).annotate(
            charged_gross=_sum(f"{charges}__gross"),
            charged_commission=_sum(f"{charges}__commission"),
            charged_net=_sum(f"{charges}__provider_share"),
            charged_samples=Count(f"{charges}__id"),
        )
        found += _statement_totals_differ(
            by_charges,
            {
                "gross": "charged_gross",
                "commission": "charged_commission",
                "net": "charged_net",
                "samples": "charged_samples",
            },
            "its charges",
            limit,
        )
    return _more(found, limit, "statements not adding up")


def overdrawn_holds(limit: int = DEFAULT_LIMIT) -> list[str]:
    """Holds whose captured and released parts exceed the amount held, whose
    captured part is not what their charges drew from them, and buyers whose
    held balance is not what their holds still keep."""
    holds = (
        Hold.objects.annotate(drawn=_sum("lease__charges__from_hold"), used=F("captured") + F("released"))
        .annotate(**_diff("captured", "drawn"))
        .filter(Q(used__gt=F("amount")) | _differs("captured", "drawn"))
        .order_by("id")
        .values_list("id", "lease_id", "amount", "captured", "released", "drawn")[: limit + 1]
    )
    found = []
    for pk, lease, amount, captured, released, drawn in holds:
        if captured + released > amount:
            found.append(
                f"Hold {pk} (lease {lease}) of {amount} has {captured} captured and {released} released: "
                f"{captured + released - amount} more than it held."
            )
        if abs(captured - drawn) >= HALF_FEN:
            found.append(
                f"Hold {pk} (lease {lease}) shows {captured} captured but its charges drew {_cny(drawn)} from it."
            )
    kept = (
        Hold.objects.values("buyer_id")
        .annotate(kept=_sum("amount") - _sum("captured") - _sum("released"))
        .values_list("buyer_id", "kept")
    )
    held = dict(
        Account.objects.filter(kind=AccountKind.BUYER_HELD, organisation__isnull=False).values_list(
            "organisation_id", "balance"
        )
    )
    for buyer_id, remaining in kept:
        if abs(held.pop(buyer_id, Decimal(0)) - remaining) >= HALF_FEN:
            code = f"org:{buyer_id}:held"
            found.append(f"Account {code} does not hold what buyer {buyer_id}'s holds keep ({_cny(remaining)}).")
    for buyer_id, balance in held.items():
        if abs(balance) >= HALF_FEN:
            found.append(f"Account org:{buyer_id}:held holds {_cny(balance)} but buyer {buyer_id} has no holds.")
    return _more(found, limit, "hold breaches")


CHECKS: tuple[tuple[str, Check], ...] = (
    ("transactions balance", unbalanced_transactions),
    ("cached balances equal postings", stale_balances),
    ("no forbidden negative balance", forbidden_negative_balances),
    ("every usage sample charged exactly once", samples_not_charged_once),
    ("charges match their transactions", charges_not_matching),
    ("statements equal their lines and charges", statements_not_adding_up),
    ("holds not overdrawn", overdrawn_holds),
)


@contextmanager
def snapshot() -> Iterator[None]:
    """A read-only transaction in which every check sees the same books: on
    PostgreSQL, outside another transaction, REPEATABLE READ, so money moving
    meanwhile cannot make the books look wrong."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                if outermost:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # Sorts and hashes over millions of postings in memory, for this transaction only.
                cursor.execute("SET LOCAL work_mem = '64MB'")
        yield


def ledger_breaches(*, limit: int = DEFAULT_LIMIT) -> list[str]:
    """Every breach of every check, one sentence each (at most ``limit`` per check)."""
    with snapshot():
        return [breach for _name, check in CHECKS for breach in check(limit)]
