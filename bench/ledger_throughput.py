"""Ledger benchmarks on PostgreSQL: posting throughput with idempotency keys,
and settlement of a million usage samples into statements.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/ledger_throughput.py
    … --samples 20000 --transactions 1000      # a quick run

It creates a dedicated database (``cx_ledger_bench``, dropped at the end
unless ``--keep``), migrates it, and builds a market through the services
(providers, pools, offers, buyers, jobs, a scheduling cycle, top-ups, holds
and one real charge per lease).

1. **Posting throughput.** Several processes (``--processes``, 2 by
   default: the machine's cores) each post ``--transactions`` ledger
   transactions with distinct idempotency keys: a usage capture paid from a
   buyer's wallet, three postings (buyer available → provider payable +
   platform commission). Once through ``billing.services.post``, one
   transaction at a time (each its own database transaction, as a caller
   outside ``atomic`` gets it), and once through
   ``billing.services.post_many`` in calls of ``--batch`` drafts (500), each
   call one database transaction. Then every key is posted again the same
   way: each retry must return the first row and move nothing. Every
   capture credits the one platform commission account, whose row lock the
   processes take in turn; the same processes posting transfers between
   accounts of their own show what that lock costs. The headline
   ``postings_per_s`` is ``post_many``'s with all processes.
2. **Metered charging.** ``--charge-samples`` (5,000) more usage samples
   are recorded over the leases; a tenth of them is charged one sample per
   database transaction (``services.charge_sample``), the rest by
   ``billing.charging.charge_batch``, the Celery task's body, which charges
   ``charging.BATCH`` samples per transaction through ``post_many``.
3. **Settlement.** ``--samples`` usage samples in all (one million by
   default, the ones above included): the rest, with their charges, capture
   transactions and postings, are generated in SQL
   (``INSERT … SELECT`` over ``generate_series``; setup time reported
   separately), then ``billing.settlement.settlement_close`` turns the period
   into statements, timed. ``check_ledger``'s checks then run over it all.

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.database import django_setup, drop_database, recreate_database, with_database  # noqa: E402

BENCH_DATABASE = "cx_ledger_bench"
POSTINGS_TARGET = 5_000  # postings per second
SETTLE_TARGET = 120.0  # seconds for a million samples
COMMISSION_RATE = Decimal("0.08")


# --- the database ----------------------------------------------------------------------------------------------------


# --- the market ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRow:
    id: int
    buyer_id: int
    provider_id: int
    unit_price: Decimal
    pricing_type: str
    ncu_hours: Decimal


def build_market(*, providers: int, pools: int, nodes: int, buyers: int, leases: int) -> list[LeaseRow]:
    """Providers with offered pools, buyers with money, ``leases`` jobs
    scheduled, held and charged once each, all through the services."""
    from billing import services
    from scheduler import services as scheduler_services
    from scheduler.models import Lease
    from tests import factories

    for _ in range(providers):
        factories.market(pools=pools, nodes=nodes)
    buyer_users = [factories.buyer() for _ in range(buyers)]
    for user in buyer_users:
        services.wallet_top_up(
            organisation=user.organisation, amount=Decimal("100000000.00"), reference="bench-funding", actor=user
        )
    jobs = [factories.submit(buyer_users[i % buyers]) for i in range(leases)]
    scheduler_services.cycle_run()
    rows = []
    for lease in Lease.objects.filter(job__in=jobs).select_related("job", "pool__site").order_by("id"):
        services.hold_for_lease(lease=lease)
        sample, _ = services.usage_record(
            lease=lease,
            sequence=1,
            start=lease.start,
            end=lease.start + _minute(),
            ncu_hours=(lease.ncu_hours / 1000).quantize(Decimal("0.0001")),
        )
        services.charge_sample(sample_id=sample.pk, commission_rate=COMMISSION_RATE)
        rows.append(
            LeaseRow(
                id=lease.pk,
                buyer_id=lease.job.buyer_id,
                provider_id=lease.pool.site.provider_id,
                unit_price=lease.unit_price,
                pricing_type=lease.pricing_type,
                ncu_hours=lease.ncu_hours,
            )
        )
    return rows


def _minute():
    from datetime import timedelta

    return timedelta(minutes=1)


# --- 1. posting throughput -------------------------------------------------------------------------------------------

BATCH = int(os.environ.get("CX_BENCH_BATCH", "500"))  # drafts per post_many call (--batch; spawned workers read it)


def _drafts(worker: int, count: int, pairs: list[tuple[str, str]], prefix: str) -> list[Any]:
    """``count`` capture drafts paid from buyers' wallets, spread over the (buyer, provider) pairs."""
    from billing.domain import ledger, pricing
    from billing.services import PLATFORM_COMMISSION

    locked = pricing.LockedPrice(
        pricing_type=pricing.PricingType.ON_DEMAND, unit_price=Decimal("0.0200000000"), commission_rate=COMMISSION_RATE
    )
    drafts = []
    for i in range(count):
        available, payable = pairs[(worker * 7919 + i) % len(pairs)]
        charge = pricing.charge(locked, Decimal(50 + i % 400), month_to_date_ncu_hours=Decimal(0))
        drafts.append(
            ledger.capture_funded(
                sources=((available, charge.gross),),
                provider_payable=payable,
                platform_commission=PLATFORM_COMMISSION,
                charge=charge,
                reference=f"{prefix}:{worker}:{i}",
            )
        )
    return drafts


def _disputes(worker: int, count: int, pairs: list[tuple[str, str]], prefix: str) -> list[Any]:
    """``count`` two-posting transfers between accounts of the worker's own
    providers (a cent of payable held back under dispute): no account is
    shared with another worker."""
    from billing.domain import ledger

    payables = sorted({payable for _available, payable in pairs})
    return [
        ledger.transfer(
            kind=ledger.TransactionKind.DISPUTE,
            source=payables[i % len(payables)],
            destination=payables[i % len(payables)].replace(":payable", ":disputed"),
            amount=Decimal("0.01"),
            reference=f"{prefix}:{worker}:{i}",
            memo="Benchmark: a cent held back.",
        )
        for i in range(count)
    ]


def _post_worker(
    url: str, worker: int, count: int, pairs: list[tuple[str, str]], mode: str, prefix: str, barrier, out
) -> None:
    """One process: post its drafts (``mode``: "post", "disjoint" or "post_many"), report timings."""
    django_setup(url, conn_max_age=600)
    from django.db import connection

    from billing import services

    drafts = _disputes(worker, count, pairs, prefix) if mode == "disjoint" else _drafts(worker, count, pairs, prefix)
    services.post_many(drafts[:0])
    connection.ensure_connection()
    barrier.wait()
    started = time.monotonic()
    created = 0
    if mode == "post_many":
        for first in range(0, len(drafts), BATCH):
            created += sum(was_created for _row, was_created in services.post_many(drafts[first : first + BATCH]))
    else:
        for draft in drafts:
            _row, was_created = services.post(draft)
            created += was_created
    finished = time.monotonic()
    out.put(
        {
            "worker": worker,
            "started": started,
            "finished": finished,
            "created": created,
            "postings": sum(len(d.postings) for d in drafts),
        }
    )
    connection.close()


def run_posting(
    url: str, *, processes: int, count: int, pairs: list[tuple[str, str]], mode: str, prefix: str
) -> dict[str, Any]:
    """``processes`` processes posting ``count`` transactions each at once,
    keys ``capture:<prefix>:<process>:<n>``: the wall time from the first
    start to the last finish."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(processes)
    out = context.Queue()
    providers = sorted({payable for _available, payable in pairs})

    def share(worker: int) -> list[tuple[str, str]]:
        if mode != "disjoint":
            return pairs
        mine = set(providers[worker::processes])
        return [pair for pair in pairs if pair[1] in mine]

    workers = [
        context.Process(target=_post_worker, args=(url, w, count, share(w), mode, prefix, barrier, out))
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode:
            raise RuntimeError(f"a {mode} worker failed with exit code {worker.exitcode}")
    seconds = max(r["finished"] for r in results) - min(r["started"] for r in results)
    transactions = processes * count
    postings = sum(r["postings"] for r in results)
    return {
        "mode": mode,
        "processes": processes,
        "transactions": transactions,
        "created": sum(r["created"] for r in results),
        "postings": postings,
        "seconds": seconds,
        "transactions_per_s": transactions / seconds,
        "postings_per_s": postings / seconds,
    }


def round_trips(pairs: list[tuple[str, str]]) -> dict[str, int]:
    """Round trips to the server of one services.post (in autocommit and
    inside a transaction) and of one services.post_many of BATCH drafts:
    every statement sent, BEGIN and COMMIT counted."""
    from django.db import connection, transaction

    from billing import services

    drafts = _drafts(99, 3 + BATCH, pairs, "bench-count")
    services.post(drafts[0])  # accounts seen: nothing to create below
    statements: list[str] = []

    def count(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    trips = {}
    with connection.execute_wrapper(count):
        services.post(drafts[1])
        trips["post"] = len(statements)
        statements.clear()
        with transaction.atomic():
            services.post(drafts[2])
            trips["post_in_atomic"] = len(statements)
        statements.clear()
        services.post_many(drafts[3:])
        trips["post_many"] = len(statements) + 2
    return trips


def meter_and_charge(leases: list[LeaseRow], *, count: int) -> dict[str, Any]:
    """``count`` more usage samples over the leases (recorded through
    ``services.usage_record``), a tenth of them charged one sample per
    database transaction (``services.charge_sample``, as charging worked
    before batches), the rest by ``charging.charge_batch`` (what the Celery
    task runs, ``charging.BATCH`` samples a transaction): samples per second."""
    from datetime import timedelta

    from django.db import transaction

    from billing import charging, services
    from billing.models import UsageSample
    from scheduler.models import Lease

    rows = {lease.pk: lease for lease in Lease.objects.filter(pk__in=[row.id for row in leases])}
    for i in range(count):
        row = leases[i % len(leases)]
        start = rows[row.id].start + timedelta(minutes=i // len(leases))
        services.usage_record(
            lease=rows[row.id],
            sequence=1_000_000 + i // len(leases),
            start=start,
            end=start + timedelta(minutes=1),
            ncu_hours=(row.ncu_hours / 1000).quantize(Decimal("0.0001")),
        )
    alone = list(UsageSample.objects.filter(charged=False).order_by("id").values_list("pk", flat=True)[: count // 10])
    started = time.perf_counter()
    for sample_id in alone:
        with transaction.atomic():
            services.charge_sample(sample_id=sample_id, commission_rate=COMMISSION_RATE)
    alone_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run = charging.charge_batch(limit=count)
    batch_seconds = time.perf_counter() - started
    return {
        "alone": len(alone),
        "alone_per_s": len(alone) / alone_seconds if alone else 0.0,
        "batched": run.samples,
        "batched_per_s": run.samples / batch_seconds if run.samples else 0.0,
        "failed": len(run.failed),
    }


def commit_floor_ms(url: str, count: int = 300) -> float:
    """Milliseconds one autocommitted one-row INSERT takes (a round trip and
    the WAL flush of its commit): the floor under any one-transaction-per-post
    path on this server, as loaded now."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_floor (n int)")
        started = time.perf_counter()
        for n in range(count):
            conn.execute("INSERT INTO bench_commit_floor VALUES (%s)", (n,))
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE bench_commit_floor")
    return seconds / count * 1000


def ledger_fingerprint() -> tuple[int, int, Decimal]:
    """(transactions, postings, sum of absolute balances): what a replay must not change."""
    from django.db.models import Func, Sum

    from billing.models import Account, LedgerTransaction, Posting

    total = Account.objects.aggregate(total=Sum(Func("balance", function="ABS")))["total"]
    return LedgerTransaction.objects.count(), Posting.objects.count(), total


# --- 2. settlement ---------------------------------------------------------------------------------------------------

GENERATE = [
    # One row per generated usage sample: lease i % L, sequences from 2 (sequence 1 was charged by the services).
    """
    CREATE TEMP TABLE bench_usage AS
    SELECT g.n,
           l.lease_id, l.buyer_id, l.provider_id, l.pricing_type, l.unit_price, l.ncu AS ncu_hours,
           l.available_id, l.payable_id,
           2 + (g.n - 1) / %(leases)s AS sequence,
           round(l.ncu * l.unit_price, 2) AS gross,
           round(round(l.ncu * l.unit_price, 2) * %(rate)s, 2) AS commission,
           %(period_start)s::timestamptz + ((g.n %% 86000) * interval '1 second') AS created_at
    FROM generate_series(1, %(samples)s) AS g(n)
    JOIN bench_lease l ON l.position = (g.n - 1) %% %(leases)s
    """,
    """
    INSERT INTO billing_usagesample
        (id, lease_id, sequence, start, "end", device_seconds, ncu_hours, energy_kwh, signature, charged, received_at)
    SELECT %(sample_base)s + u.n, u.lease_id, u.sequence,
           l.start + (u.sequence - 1) * interval '1 minute', l.start + u.sequence * interval '1 minute',
           480.000, u.ncu_hours, NULL, '', true, u.created_at
    FROM bench_usage u JOIN scheduler_lease l ON l.id = u.lease_id
    """,
    """
    INSERT INTO billing_ledgertransaction (id, key, kind, memo, fingerprint, data, actor_id, created_at)
    SELECT %(tx_base)s + u.n, 'capture:usage:' || (%(sample_base)s + u.n), 'capture',
           format('Capture of %%s CNY for %%s NCU-hours (%%s, usage:%%s): %%s to the provider, %%s commission.',
                  u.gross, u.ncu_hours, u.pricing_type, %(sample_base)s + u.n, u.gross - u.commission, u.commission),
           encode(sha256(convert_to(concat_ws(E'\\n', 'capture', 'capture:usage:' || (%(sample_base)s + u.n),
               (SELECT string_agg(line, E'\\n' ORDER BY line COLLATE "C") FROM unnest(ARRAY[
                   'org:' || u.buyer_id || ':available' || E'\\t' || (-u.gross)::text,
                   'org:' || u.provider_id || ':payable' || E'\\t' || (u.gross - u.commission)::text,
                   CASE WHEN u.commission <> 0 THEN 'platform:commission' || E'\\t' || u.commission::text END
               ]) AS line)), 'UTF8')), 'hex'),
           jsonb_build_object('lease', u.lease_id, 'sample', %(sample_base)s + u.n), NULL, u.created_at
    FROM bench_usage u
    """,
    """
    INSERT INTO billing_posting (transaction_id, account_id, amount)
    SELECT %(tx_base)s + u.n, leg.account_id, leg.amount
    FROM bench_usage u
    CROSS JOIN LATERAL (VALUES (u.available_id, -u.gross),
                               (u.payable_id, u.gross - u.commission),
                               (%(commission_id)s, u.commission)) AS leg(account_id, amount)
    WHERE leg.amount <> 0
    """,
    """
    INSERT INTO billing_charge
        (id, sample_id, lease_id, buyer_id, provider_id, pricing_type, unit_price, ncu_hours, gross, commission,
         provider_share, from_hold, from_available, owed, voucher_funded, transaction_id, provider_statement_id,
         buyer_statement_id, created_at)
    SELECT %(charge_base)s + u.n, %(sample_base)s + u.n, u.lease_id, u.buyer_id, u.provider_id, u.pricing_type,
           u.unit_price, u.ncu_hours, u.gross, u.commission, u.gross - u.commission, 0, u.gross, 0, 0,
           %(tx_base)s + u.n, NULL, NULL, u.created_at
    FROM bench_usage u
    """,
    """
    UPDATE billing_account a SET balance = s.total
    FROM (SELECT account_id, sum(amount) AS total FROM billing_posting GROUP BY account_id) s
    WHERE a.id = s.account_id AND a.balance <> s.total
    """,
]
SEQUENCES = ("billing_usagesample", "billing_ledgertransaction", "billing_charge")


def generate_usage(leases: list[LeaseRow], *, samples: int, period_start) -> dict[str, Any]:
    """``samples`` usage samples in all, charged, inside the period from
    ``period_start``: the leases' real first charges plus generated ones. A
    generated sample of a lease meters a thousandth of the lease's NCU-hours
    at its locked price, paid from the buyer's wallet (its hold paid the
    first charge); 8% commission."""
    from django.db import connection, transaction

    from billing import services
    from billing.models import Account

    generated = samples - len(leases)
    codes = dict(Account.objects.values_list("code", "id"))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE bench_lease (position int, lease_id bigint, buyer_id bigint, provider_id bigint, "
            "pricing_type text, unit_price numeric, ncu numeric, available_id bigint, payable_id bigint) ON COMMIT DROP"
        )
        rows = []
        for position, lease in enumerate(leases):
            ncu = (lease.ncu_hours / 1000).quantize(Decimal("0.0001"))
            if (ncu * lease.unit_price).quantize(Decimal("0.01")) <= 0:
                raise SystemExit(f"lease {lease.id}: a sample of {ncu} NCU-hours would cost nothing; use fewer samples")
            rows.append(
                (
                    position,
                    lease.id,
                    lease.buyer_id,
                    lease.provider_id,
                    lease.pricing_type,
                    lease.unit_price,
                    ncu,
                    codes[services.account_code(lease.buyer_id, "available")],
                    codes[services.account_code(lease.provider_id, "payable")],
                )
            )
        cursor.executemany("INSERT INTO bench_lease VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        bases = {}
        for table, base in zip(SEQUENCES, ("sample_base", "tx_base", "charge_base"), strict=True):
            cursor.execute(f"SELECT coalesce(max(id), 0) FROM {table}")  # noqa: S608 - table names are constants
            bases[base] = cursor.fetchone()[0]
        params = {
            "samples": generated,
            "leases": len(leases),
            "rate": COMMISSION_RATE,
            "period_start": period_start,
            "commission_id": codes[services.PLATFORM_COMMISSION],
            **bases,
        }
        timings = {}
        for statement in GENERATE:
            started = time.perf_counter()
            cursor.execute(statement, params)
            timings[statement.split()[0] + " " + statement.split()[2]] = time.perf_counter() - started
        for table in SEQUENCES:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"generated": generated, "timings": timings}


def settle(*, period_start) -> tuple[Any, float]:
    from django.utils import timezone

    from billing import settlement

    started = time.perf_counter()
    period = settlement.settlement_close(start=period_start, end=timezone.now())
    return period, time.perf_counter() - started


def run_checks() -> tuple[list[str], dict[str, float], float]:
    from billing import checks

    timings: dict[str, float] = {}
    found: list[str] = []
    started = time.perf_counter()
    with checks.snapshot():
        for name, check in checks.CHECKS:
            t = time.perf_counter()
            found += check(20)
            timings[name] = time.perf_counter() - t
    return found, timings, time.perf_counter() - started


# --- main ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="posting processes (default 2)")
    parser.add_argument("--transactions", type=int, default=10_000, help="transactions per process (default 10000)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"drafts per post_many call (default {BATCH})")
    parser.add_argument(
        "--charge-samples", type=int, default=5000, help="usage samples metered and charged (default 5000; 0: skip)"
    )
    parser.add_argument("--samples", type=int, default=1_000_000, help="usage samples to settle (default 1000000)")
    parser.add_argument("--leases", type=int, default=200, help="leases the samples belong to (default 200)")
    parser.add_argument("--database", default=BENCH_DATABASE, help=f"database to create (default {BENCH_DATABASE})")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    BATCH = args.batch
    os.environ["CX_BENCH_BATCH"] = str(args.batch)

    server = os.environ.get("DATABASE_URL", "")
    if not server.startswith(("postgres://", "postgresql://")):
        print("Set DATABASE_URL=postgres://… (the benchmark creates its own database there).", file=sys.stderr)
        return 2
    url = with_database(server, args.database)
    recreate_database(server, args.database)
    try:
        return _run(args, url)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(server, args.database)


def _run(args: argparse.Namespace, url: str) -> int:
    django_setup(url, conn_max_age=600)
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from billing import charging, services, settlement
    from billing.models import SettlementStatement

    print(f"Ledger benchmark on {connection.settings_dict['NAME']} ({args.processes} posting processes)")
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"  migrated in {time.perf_counter() - started:.1f} s")

    period_start = timezone.now() - timedelta(days=1)
    started = time.perf_counter()
    providers = 10
    leases = build_market(
        providers=providers, pools=5, nodes=-(-args.leases // (providers * 5)), buyers=20, leases=args.leases
    )
    market_seconds = time.perf_counter() - started
    print(
        f"  market: {providers} providers, 20 buyers, {len(leases)} leases held and charged once, "
        f"{market_seconds:.1f} s"
    )
    pairs = sorted(
        {
            (services.account_code(lease.buyer_id, "available"), services.account_code(lease.provider_id, "payable"))
            for lease in leases
        }
    )

    # 1. posting throughput
    print("\n1. Posting throughput (usage captures from the wallet: 3 postings each, distinct idempotency keys)")
    trips = round_trips(pairs)
    print(
        f"  round trips: services.post {trips['post']} (autocommit), {trips['post_in_atomic']} inside a transaction "
        f"(savepoint); services.post_many of {BATCH} drafts {trips['post_many']}, BEGIN and COMMIT included"
    )
    floor = commit_floor_ms(url)
    print(f"  a one-row INSERT committed on its own takes {floor:.2f} ms here now (round trip + WAL flush)")
    n = args.transactions
    p = args.processes
    solo = run_posting(url, processes=1, count=max(n // 4, 100), pairs=pairs, mode="post", prefix="solo")
    single = run_posting(url, processes=p, count=n, pairs=pairs, mode="post", prefix="bench")
    before = ledger_fingerprint()
    single_again = run_posting(url, processes=p, count=n, pairs=pairs, mode="post", prefix="bench")
    middle = ledger_fingerprint()
    disjoint = run_posting(url, processes=p, count=n, pairs=pairs, mode="disjoint", prefix="apart")
    batch_solo = run_posting(url, processes=1, count=n, pairs=pairs, mode="post_many", prefix="batch-solo")
    batch = run_posting(url, processes=p, count=n, pairs=pairs, mode="post_many", prefix="batch")
    batched = ledger_fingerprint()
    batch_again = run_posting(url, processes=p, count=n, pairs=pairs, mode="post_many", prefix="batch")
    after = ledger_fingerprint()
    print(f"  {'path':<38}{'procs':>6}{'transactions':>14}{'seconds':>9}{'tx/s':>9}{'postings/s':>12}")
    for label, run in (
        ("services.post", solo),
        ("services.post", single),
        ("services.post, same keys again", single_again),
        ("services.post, no shared account", disjoint),
        (f"services.post_many, {BATCH} a call", batch_solo),
        (f"services.post_many, {BATCH} a call", batch),
        ("services.post_many, same keys again", batch_again),
    ):
        print(
            f"  {label:<38}{run['processes']:>6}{run['transactions']:>14}{run['seconds']:>9.2f}"
            f"{run['transactions_per_s']:>9.0f}{run['postings_per_s']:>12.0f}"
        )
    fresh_ok = all(run["created"] == run["transactions"] for run in (solo, single, disjoint, batch_solo, batch))
    replay_ok = single_again["created"] == 0 and batch_again["created"] == 0 and before == middle and batched == after
    print(
        f"  retries: {single_again['transactions'] + batch_again['transactions']} keys posted again, "
        f"{single_again['created'] + batch_again['created']} created, ledger "
        f"{'unchanged' if before == middle and batched == after else 'CHANGED'} "
        f"({after[0]} transactions, {after[1]} postings)"
    )
    print(
        f"  target ≥ {POSTINGS_TARGET} postings/s with {p} processes: services.post_many {batch['postings_per_s']:.0f} "
        f"({'met' if batch['postings_per_s'] >= POSTINGS_TARGET else 'not met'}), services.post one at a time "
        f"{single['postings_per_s']:.0f} ({'met' if single['postings_per_s'] >= POSTINGS_TARGET else 'not met'})"
    )

    # 2. metered charging
    metered = {"alone": 0, "alone_per_s": 0.0, "batched": 0, "batched_per_s": 0.0, "failed": 0}
    if args.charge_samples:
        print(f"\n2. Metered charging of {args.charge_samples} usage samples (hold, wallet, commission split)")
        metered = meter_and_charge(leases, count=args.charge_samples)
        print(
            f"  one sample per transaction (charge_sample): {metered['alone']} samples, "
            f"{metered['alone_per_s']:.0f}/s; in batches of {charging.BATCH} (charge_batch): {metered['batched']} "
            f"samples, {metered['batched_per_s']:.0f}/s; {metered['failed']} refused"
        )

    # 3. settlement
    print(f"\n3. Settlement of {args.samples} usage samples")
    started = time.perf_counter()
    generated = generate_usage(
        leases, samples=args.samples - metered["alone"] - metered["batched"], period_start=period_start
    )
    setup_seconds = time.perf_counter() - started
    print(
        f"  setup: {generated['generated']} samples, charges, transactions and postings generated in SQL, "
        f"{setup_seconds:.1f} s"
    )
    period, settle_seconds = settle(period_start=period_start)
    statements_made = SettlementStatement.objects.filter(period=period)
    settled = sum(s.samples for s in statements_made.filter(role="provider"))
    print(
        f"  settlement_close: {settled} samples into {statements_made.filter(role='provider').count()} provider and "
        f"{statements_made.filter(role='buyer').count()} buyer statements in {settle_seconds:.1f} s "
        f"(target ≤ {SETTLE_TARGET:.0f} s: {'met' if settle_seconds <= SETTLE_TARGET else 'not met'})"
    )
    counted = SettlementStatement.objects.count()
    started = time.perf_counter()
    settlement.settlement_close(start=period.start, end=period.end)
    again_seconds = time.perf_counter() - started
    unchanged = SettlementStatement.objects.count() == counted
    print(f"  closing it again: {again_seconds:.2f} s, {'nothing changed' if unchanged else 'STATEMENTS CHANGED'}")

    print("\n4. check_ledger over everything")
    breaches, timings, check_seconds = run_checks()
    for name, seconds in timings.items():
        print(f"  {name:<45}{seconds:>7.1f} s")
    print(f"  {len(breaches)} breach(es) in {check_seconds:.1f} s")
    for breach in breaches[:20]:
        print(f"    {breach}")

    figures = {
        "postings_per_s": round(batch["postings_per_s"]),
        "transactions_per_s": round(batch["transactions_per_s"]),
        "posting_processes": p,
        "post_many_batch": BATCH,
        "postings_per_s_post_many_one_process": round(batch_solo["postings_per_s"]),
        "postings_per_s_single_post": round(single["postings_per_s"]),
        "postings_per_s_single_post_one_process": round(solo["postings_per_s"]),
        "postings_per_s_single_post_no_shared_account": round(disjoint["postings_per_s"]),
        "commit_floor_ms": round(floor, 2),
        "round_trips_per_post": trips["post"],
        "round_trips_per_post_in_transaction": trips["post_in_atomic"],
        "round_trips_per_post_many": trips["post_many"],
        "replayed_transactions": single_again["transactions"] + batch_again["transactions"],
        "replay_created": single_again["created"] + batch_again["created"],
        "replay_moved_nothing": replay_ok,
        "charge_samples_per_s": round(metered["batched_per_s"]),
        "charge_samples_per_s_one_per_transaction": round(metered["alone_per_s"]),
        "settle_samples": settled,
        "settle_seconds": round(settle_seconds, 2),
        "settle_setup_seconds": round(setup_seconds, 1),
        "check_ledger_seconds": round(check_seconds, 1),
        "check_ledger_breaches": len(breaches),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))
    return 0 if replay_ok and fresh_ok and unchanged and not breaches and not metered["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
