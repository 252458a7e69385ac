"""``manage.py verify_audit``: walk the audit trail's hash chain; exit non-zero
at any broken link."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.audit import audit_verify
from core.models import AuditSeal


def _anchor(text: str) -> tuple[int, str]:
    sequence, _, digest = text.partition(":")
    if not sequence.isdigit() or len(digest) != 64:
        raise ValueError("give an anchor as SEQUENCE:CHAIN_HASH (64 hex digits), as printed by an earlier run")
    return int(sequence), digest.lower()


class Command(BaseCommand):
    help = (
        "Verify the audit trail: seal the entries awaiting their seal, then walk the hash chain recomputing every "
        "entry's content hash and every link, and check the entries not sealed yet. Prints the first broken link "
        "(and up to --limit more) and exits 1 if there is any; prints the chain's head to record as an anchor."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=20, help="list at most this many problems of each kind")
        parser.add_argument(
            "--anchor",
            type=_anchor,
            action="append",
            default=[],
            metavar="SEQUENCE:HASH",
            help="a head printed by an earlier run, kept elsewhere: the chain must still hold it (repeatable)",
        )
        parser.add_argument("--no-seal", action="store_true", help="verify without sealing pending entries first")

    def handle(self, *args: Any, limit: int, anchor: list[tuple[int, str]], no_seal: bool, **options: Any) -> None:
        started = time.perf_counter()
        result = audit_verify(seal_first=not no_seal, limit=limit)
        problems: list[str] = [str(found) for found in result.breaks]
        for sequence, digest in anchor:
            held = AuditSeal.objects.filter(sequence=sequence).values_list("chain_hash", flat=True).first()
            if held != digest:
                state = "is gone" if held is None else "has another chain hash"
                problems.append(f"anchor #{sequence}: the seal {state} (the chain was cut or rewritten)")
        problems += [
            f"audit entry {entry}: not sealed and not awaiting a seal (cut out of the chain)"
            for entry in result.orphans
        ]
        problems += [
            f"audit entry {entry} (not sealed yet): its content does not match its content hash (altered)"
            for entry in result.unsealed_altered
        ]
        seconds = time.perf_counter() - started
        self.stdout.write(
            f"{result.seals} sealed entries checked, {result.unsealed} awaiting a seal ({seconds:.2f} s); "
            f"head: {result.head_sequence}:{result.head_hash}"
        )
        if problems:
            self.stdout.write(f"first broken link: {problems[0]}")
            for problem in problems[1:]:
                self.stdout.write(problem)
            raise CommandError(f"the audit trail is broken: {len(problems)} problem(s) found", returncode=1)
        self.stdout.write(self.style.SUCCESS("The audit trail is intact: every link holds."))
