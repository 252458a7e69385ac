"""``manage.py check_ledger``: verify the books; exit non-zero on any breach."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import checks


class Command(BaseCommand):
    help = (
        "Verify the ledger: every transaction balances, cached balances equal posted sums, no forbidden negative "
        "balance, every usage sample charged exactly once, charges match their transactions, statements equal their "
        "lines and charges, holds are not overdrawn. Prints one line per breach and exits 1 if there is any."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--limit",
            type=int,
            default=checks.DEFAULT_LIMIT,
            help=f"list at most this many breaches per check (default {checks.DEFAULT_LIMIT})",
        )

    def handle(self, *args: Any, limit: int, **options: Any) -> None:
        breaches: list[str] = []
        with checks.snapshot():
            for name, check in checks.CHECKS:
                started = time.perf_counter()
                found = check(limit)
                seconds = time.perf_counter() - started
                for breach in found:
                    self.stdout.write(breach)
                if options["verbosity"] >= 2 or found:
                    state = f"{len(found)} breach(es)" if found else "ok"
                    self.stderr.write(f"{name}: {state} ({seconds:.2f} s)")
                breaches += found
        if breaches:
            raise CommandError(f"the ledger has {len(breaches)} breach(es)", returncode=1)
        self.stdout.write(self.style.SUCCESS("The ledger is sound: every check passed."))
