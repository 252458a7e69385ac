"""What the audit trail's hash chain costs a scheduling cycle.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/audit_chain.py

It creates a dedicated database (``cx_audit_bench``, dropped at the end
unless ``--keep``), migrates it, and writes ``--entries`` audit entries the
way a scheduling cycle does (half job transitions, half lease creations with
their allocations), ``--rounds`` times:

1. hashing alone: the content hash of every entry, in Python;
2. the insert without the chain (a plain bulk insert of the same rows, what
   ``audit_many`` did before; rolled back);
3. ``audit_many``: hashing, the bulk insert and the sealing list;
4. ``audit_seal``: appending them to the chain (its own transaction).

Then ``audit_verify`` walks the whole chain. Medians are reported; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.database import django_setup, drop_database, recreate_database, with_database  # noqa: E402

BENCH_DATABASE = "cx_audit_bench"


class _Row:
    """Stands for a job or a lease: audit entries need only its label and id."""

    def __init__(self, meta: Any, pk: int) -> None:
        self._meta = meta
        self.pk = pk


def cycle_entries(count: int) -> list[dict[str, Any]]:
    from django.utils import timezone

    from scheduler.models import Job, Lease

    now = timezone.now()
    entries: list[dict[str, Any]] = []
    for i in range(count // 2):
        allocations = [
            {"node": i % 8, "devices": list(range(8)), "milli": 1000, "cpu_milli": 16000, "memory_mib": 131072}
        ]
        entries.append(
            {
                "action": "job.transition",
                "entity": _Row(Job._meta, i + 1),
                "from_state": "queued",
                "to_state": "scheduled",
                "reason": f"placed on {i % 5000 + 1} from {now.isoformat()}",
                "data": {"lease": i + 1, "unit_price": "0.0200000000", "pricing_type": "on_demand"},
            }
        )
        entries.append(
            {
                "action": "lease.created",
                "entity": _Row(Lease._meta, i + 1),
                "to_state": "scheduled",
                "data": {"job": i + 1, "offer": i % 5000 + 1, "allocations": allocations},
            }
        )
    return entries


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="audit entries per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--database", default=BENCH_DATABASE, help=f"database to create (default {BENCH_DATABASE})")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)

    server = os.environ.get("DATABASE_URL", "")
    if not server.startswith(("postgres://", "postgresql://")):
        print("Set DATABASE_URL=postgres://… (the benchmark creates its own database there).", file=sys.stderr)
        return 2
    recreate_database(server, args.database)
    try:
        return _run(args, with_database(server, args.database))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(server, args.database)


def _run(args: argparse.Namespace, url: str) -> int:
    django_setup(url)
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from core import audit
    from core.domain import chain
    from core.models import AuditEntry

    print(f"Audit chain benchmark on {connection.settings_dict['NAME']}: {args.entries} entries × {args.rounds} rounds")
    call_command("migrate", verbosity=0)
    entries = cycle_entries(args.entries)
    times: dict[str, list[float]] = {"hash": [], "plain_insert": [], "audit_many": [], "seal": []}
    for _ in range(args.rounds):
        now = timezone.now()
        rows = [audit._entry(actor=None, label=audit.SYSTEM, at=now, **entry) for entry in entries]
        chain._utc.cache_clear()
        times["hash"].append(_timed(lambda rows=rows: [audit._content_hash(row) for row in rows]))

        def plain_insert(rows: list[AuditEntry] = rows) -> None:
            with transaction.atomic():
                AuditEntry.objects.bulk_create(rows, batch_size=1000)
                transaction.set_rollback(True)

        times["plain_insert"].append(_timed(plain_insert))
        times["audit_many"].append(_timed(lambda: audit.audit_many(entries)))
        times["seal"].append(_timed(lambda: audit.audit_seal(wait=True)))

    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    overhead = median["audit_many"] - median["plain_insert"]
    print(f"  hashing {args.entries} entries:        {median['hash']:8.0f} ms")
    print(f"  plain bulk insert (before the chain):  {median['plain_insert']:8.0f} ms")
    print(f"  audit_many (hash, insert, seal list):  {median['audit_many']:8.0f} ms  (+{overhead:.0f} ms)")
    print(f"  audit_seal (own transaction):          {median['seal']:8.0f} ms")
    started = time.perf_counter()
    result = audit.audit_verify()
    verify_seconds = time.perf_counter() - started
    print(f"  verify_audit: {result.seals} seals in {verify_seconds:.1f} s, sound: {result.sound}")
    print(
        json.dumps(
            {
                "entries": args.entries,
                "rounds": args.rounds,
                "hash_ms": round(median["hash"], 1),
                "plain_insert_ms": round(median["plain_insert"], 1),
                "audit_many_ms": round(median["audit_many"], 1),
                "audit_many_overhead_ms": round(overhead, 1),
                "seal_ms": round(median["seal"], 1),
                "verify_entries_per_s": round(result.seals / verify_seconds),
                "sound": result.sound,
            }
        )
    )
    return 0 if result.sound else 1


if __name__ == "__main__":
    sys.exit(main())
