"""Writing ledger transactions: one draft or thousands, in few round trips.

:func:`post` writes one :class:`~billing.domain.ledger.TransactionDraft`,
:func:`post_many` a list of them in one database transaction. Each keeps the
ledger's guarantees per draft:

- **Idempotent.** The unique idempotency key decides: a draft whose key is
  already posted returns the first row and moves nothing (``created`` is
  False); the same key with different postings (another fingerprint) is a
  :class:`~core.errors.Conflict` (409) and nothing of the call is written.
- **Balanced.** Every draft passes ``ledger.validate_transaction`` (postings
  fen-exact, non-zero, summing to zero) before anything is sent.
- **Cached balances move in the same transaction**, rounded to the fen, with
  the accounts locked in one global order (by code), so concurrent posters
  do not deadlock. Never a read-modify-write in Python.
- **No forbidden negative balance.** The database's CheckConstraint
  ``account_balance_not_negative`` refuses it, whoever races; the call raises
  :class:`InsufficientFunds` naming the account and writes nothing. In a
  batch the check holds after every draft in order, as if they were posted
  one by one: each account's balance is checked at its lowest point in the
  batch, not only at the end.

On PostgreSQL a batch of up to :data:`STATEMENT_SIZE` drafts is one SQL
statement (:data:`POST_STATEMENT`): the transactions are inserted with
``ON CONFLICT (key) DO NOTHING RETURNING``, the accounts locked in code order
(``FOR NO KEY UPDATE``: foreign-key checks of other postings are not
blocked), the postings inserted, and each account's balance updated once by
its net movement. Outside an ``atomic`` block a single :func:`post` is that
one statement in autocommit, atomic by itself; inside one it runs in a
savepoint, so a refused post leaves the caller's transaction usable. Keys
already posted cost one more query, to compare fingerprints. On other
databases (SQLite, the first-run default) the same steps run through the ORM
with bulk inserts.

Accounts are created on first use (``org:<id>:<kind>``, ``platform:…``,
voucher programme accounts). The codes this process has seen in the database
are remembered, so the common post sends no account query at all; an account
that disappeared since (a rolled-back transaction created it) makes the
statement fail on the posting's account, and the post is retried once after
creating it again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Round
from django.utils import timezone

from billing.domain import ledger
from billing.models import MAY_GO_NEGATIVE, Account, AccountKind, LedgerTransaction, Posting
from core.errors import ApplicationError, Conflict, InvalidInput
from marketplace.models import User

STATEMENT_SIZE = 1000  # drafts per SQL statement in a batch
BALANCE_CONSTRAINT = "account_balance_not_negative"

PLATFORM_COMMISSION = "platform:commission"
BANK_CLEARING = "platform:clearing"
ADJUSTMENTS = "platform:adjustments"
PLATFORM_KINDS = {
    PLATFORM_COMMISSION: AccountKind.PLATFORM_COMMISSION,
    BANK_CLEARING: AccountKind.BANK_CLEARING,
    ADJUSTMENTS: AccountKind.ADJUSTMENTS,
}
# Voucher programme accounts (see vouchers.domain.movements): "programme:<id>:budget",
# "programme:<id>:lapsed" and "voucher:<id>", owned by no organisation.
PROGRAMME_KINDS = {"budget": AccountKind.PROGRAMME_BUDGET, "lapsed": AccountKind.PROGRAMME_LAPSED}


class InsufficientFunds(ApplicationError):
    code = "insufficient_funds"
    status = 402


class _Refused(Exception):
    """The database refused a balance below zero; raised inside the write, explained after its rollback."""


class _UnknownAccount(Exception):
    """A posting named an account this process believed to exist, but it does not (it was rolled back)."""


# --- accounts --------------------------------------------------------------------------------------------------------

_known_accounts: set[str] = set()  # codes this process has seen in the database


def _voucher_account_kind(code: str) -> str | None:
    """The kind of a voucher programme account code, or None if it is not one."""
    parts = code.split(":")
    if len(parts) == 2 and parts[0] == "voucher" and parts[1].isdigit():
        return AccountKind.VOUCHER
    if len(parts) == 3 and parts[0] == "programme" and parts[1].isdigit() and parts[2] in PROGRAMME_KINDS:
        return PROGRAMME_KINDS[parts[2]]
    return None


def account_rows(codes: set[str]) -> dict[str, Account]:
    """The accounts named by ``codes``, created on first use."""
    found = {a.code: a for a in Account.objects.filter(code__in=codes)}
    for code in sorted(codes - set(found)):  # one order: concurrent creators wait, never deadlock
        if code in PLATFORM_KINDS:
            kind, org_id = PLATFORM_KINDS[code], None
        elif voucher_kind := _voucher_account_kind(code):
            kind, org_id = voucher_kind, None
        else:
            parts = code.split(":")
            if len(parts) != 3 or parts[0] != "org" or not parts[1].isdigit() or parts[2] not in AccountKind.values:
                raise InvalidInput(f"unknown account {code}", field="account")
            kind, org_id = parts[2], int(parts[1])
        try:
            with transaction.atomic():
                found[code] = Account.objects.create(
                    code=code, organisation_id=org_id, kind=kind, may_go_negative=kind in MAY_GO_NEGATIVE
                )
        except IntegrityError:  # created by a concurrent transaction meanwhile
            found[code] = Account.objects.get(code=code)
    _known_accounts.update(found)
    return found


def _ensure_accounts(codes: set[str]) -> None:
    unknown = codes - _known_accounts
    if unknown:
        account_rows(unknown)


# --- the verbs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    draft: ledger.TransactionDraft
    data: dict[str, Any]
    fingerprint: str


def post(
    draft: ledger.TransactionDraft, *, actor: User | None = None, data: dict[str, Any] | None = None
) -> tuple[LedgerTransaction, bool]:
    """Write a transaction once. Returns (row, created): a retry with the same
    key and the same postings returns the first row and moves nothing; the
    same key with different postings is a conflict."""
    ((row, created),) = post_many([draft], actor=actor, data=[data])
    return row, created


def post_many(
    drafts: Sequence[ledger.TransactionDraft],
    *,
    actor: User | None = None,
    data: Sequence[dict[str, Any] | None] | None = None,
) -> list[tuple[LedgerTransaction, bool]]:
    """Write many transactions in one database transaction: (row, created) for
    each draft, in order. A key already posted (earlier, or by an earlier
    draft of the same list) returns its first row with ``created`` False; a
    key reused for a different movement, or an account that cannot cover its
    part, refuses the whole list (Conflict, InsufficientFunds) and writes
    nothing. ``data`` (optional) is stored on each draft's row."""
    drafts = list(drafts)
    extras = [None] * len(drafts) if data is None else list(data)
    if len(extras) != len(drafts):
        raise ValueError(f"post_many got {len(drafts)} drafts and {len(extras)} data")
    position: dict[str, int] = {}
    entries: list[_Entry] = []
    for draft, extra in zip(drafts, extras, strict=True):
        ledger.validate_transaction(draft)
        earlier = position.get(draft.key)
        if earlier is None:
            position[draft.key] = len(entries)
            entries.append(_Entry(draft=draft, data=extra or {}, fingerprint=draft.fingerprint))
        elif entries[earlier].fingerprint != draft.fingerprint:
            raise Conflict(f"idempotency key {draft.key} was already used for a different movement", field="key")
    if not entries:
        return []
    actor_id = getattr(actor, "pk", None)
    now = timezone.now()
    write = _write_postgresql if connection.vendor == "postgresql" else _write_orm
    for attempt in (1, 2):
        if write is _write_postgresql:  # before the transaction: new accounts are committed at once if we can
            _ensure_accounts({p.account for e in entries for p in e.draft.postings})
        try:
            if len(entries) == 1 and not connection.in_atomic_block and connection.vendor == "postgresql":
                written = write(entries, actor_id=actor_id, now=now)  # one statement in autocommit: atomic by itself
            else:
                written = []
                with transaction.atomic():
                    for first in range(0, len(entries), STATEMENT_SIZE):
                        written += write(entries[first : first + STATEMENT_SIZE], actor_id=actor_id, now=now)
            break
        except _Refused:  # rolled back: read what stands now to say which account fell short
            raise _short_of_funds(entries) from None
        except DataError:  # numeric overflow: past the largest balance a MONEY column holds
            raise InvalidInput("an account cannot hold that much: the amount is too large", field="amount") from None
        except _UnknownAccount as unknown:  # rolled back: create the accounts again, then once more
            if attempt == 2:
                raise unknown.__cause__ from None
            _known_accounts.difference_update(p.account for e in entries for p in e.draft.postings)
    results = []
    seen: set[str] = set()
    for draft in drafts:
        row, created = written[position[draft.key]]
        results.append((row, created and draft.key not in seen))
        seen.add(draft.key)
    return results


def _check_replays(entries: list[_Entry], inserted: set[str]) -> dict[str, LedgerTransaction]:
    """The first rows of the keys that were posted before; a conflict if any moved different money."""
    replayed = [e.draft.key for e in entries if e.draft.key not in inserted]
    if not replayed:
        return {}
    rows = {row.key: row for row in LedgerTransaction.objects.filter(key__in=replayed)}
    for entry in entries:
        row = rows.get(entry.draft.key)
        if row is not None and row.fingerprint != entry.fingerprint:
            raise Conflict(f"idempotency key {entry.draft.key} was already used for a different movement", field="key")
    return rows


def _movements(entries: Sequence[_Entry]) -> dict[str, tuple[Decimal, Decimal]]:
    """Per account: (net movement, lowest running movement) over the drafts in order."""
    moves: dict[str, tuple[Decimal, Decimal]] = {}
    for entry in entries:
        for p in entry.draft.postings:
            net, low = moves.get(p.account, (Decimal(0), Decimal(0)))
            net += p.amount
            moves[p.account] = (net, min(low, net))
    return moves


def _short_of_funds(entries: Sequence[_Entry]) -> InsufficientFunds:
    """Which account could not cover which draft, read after the refused write was rolled back."""
    codes = {p.account for e in entries for p in e.draft.postings}
    balances = dict(Account.objects.filter(code__in=codes, may_go_negative=False).values_list("code", "balance"))
    posted = set(LedgerTransaction.objects.filter(key__in=[e.draft.key for e in entries]).values_list("key", flat=True))
    for entry in entries:
        if entry.draft.key in posted:
            continue
        for p in entry.draft.postings:
            if p.account in balances:
                balances[p.account] += p.amount
                if balances[p.account] < 0:
                    return InsufficientFunds(
                        f"{p.account} cannot cover {-p.amount} CNY ({entry.draft.memo})", field="amount"
                    )
    return InsufficientFunds("an account cannot cover these movements", field="amount")


def _row(entry: _Entry, *, pk: int, created_at: datetime, actor_id: int | None) -> LedgerTransaction:
    row = LedgerTransaction(
        id=pk,
        key=entry.draft.key,
        kind=str(entry.draft.kind),
        memo=entry.draft.memo[:500],
        fingerprint=entry.fingerprint,
        data=entry.data,
        actor_id=actor_id,
        created_at=created_at,
    )
    row._state.adding = False
    row._state.db = connection.alias
    return row


# --- PostgreSQL: one statement per batch -----------------------------------------------------------------------------

POST_STATEMENT = """
WITH input AS (
    SELECT * FROM unnest(%(ords)s::int[], %(keys)s::text[], %(kinds)s::text[], %(memos)s::text[],
                         %(fingerprints)s::text[], %(data)s::jsonb[]) AS i(ord, key, kind, memo, fingerprint, data)
), tx AS (
    INSERT INTO billing_ledgertransaction (key, kind, memo, fingerprint, data, actor_id, created_at)
    SELECT key, kind, memo, fingerprint, data, %(actor)s::bigint, %(now)s::timestamptz FROM input
    ORDER BY key
    ON CONFLICT (key) DO NOTHING
    RETURNING id, key, created_at
), lines AS MATERIALIZED (
    SELECT tx.id AS transaction_id, l.ord, l.code, l.amount
    FROM unnest(%(line_ords)s::int[], %(line_codes)s::text[], %(line_amounts)s::numeric[]) AS l(ord, code, amount)
    JOIN input USING (ord) JOIN tx USING (key)
), locked AS MATERIALIZED (
    SELECT a.id, a.code FROM billing_account a
    WHERE a.code IN (SELECT code FROM lines)
    ORDER BY a.code
    FOR NO KEY UPDATE
), posted AS (
    INSERT INTO billing_posting (transaction_id, account_id, amount)
    SELECT lines.transaction_id, locked.id, lines.amount
    FROM lines LEFT JOIN locked USING (code)
    ORDER BY lines.transaction_id, lines.code
), running AS (
    SELECT code, amount, sum(amount) OVER (PARTITION BY code ORDER BY ord) AS total FROM lines
), moves AS (
    SELECT code, sum(amount) AS net, least(min(total), 0) AS low FROM running GROUP BY code
), updated AS (
    UPDATE billing_account a
    SET balance = CASE
        WHEN NOT a.may_go_negative AND a.balance + moves.low < 0 THEN a.balance + moves.low
        ELSE a.balance + moves.net
    END
    FROM moves JOIN locked USING (code)
    WHERE a.id = locked.id
)
SELECT key, id, created_at FROM tx
"""
# ``lines`` LEFT JOIN ``locked``: a posting to an account that does not exist
# gets a NULL account and fails the statement (never silently dropped). The
# UPDATE sets an account that would dip below zero within the batch to that
# low point, so the CheckConstraint refuses it as it would a draft alone.


def _write_postgresql(entries: list[_Entry], *, actor_id: int | None, now: datetime) -> list[tuple[Any, bool]]:
    from psycopg import errors

    lines = [(i, p.account, p.amount) for i, e in enumerate(entries) for p in e.draft.postings]
    params = {
        "ords": list(range(len(entries))),
        "keys": [e.draft.key for e in entries],
        "kinds": [str(e.draft.kind) for e in entries],
        "memos": [e.draft.memo[:500] for e in entries],
        "fingerprints": [e.fingerprint for e in entries],
        "data": [json.dumps(e.data, cls=DjangoJSONEncoder) for e in entries],
        "actor": actor_id,
        "now": now,
        "line_ords": [line[0] for line in lines],
        "line_codes": [line[1] for line in lines],
        "line_amounts": [line[2] for line in lines],
    }
    try:
        with connection.cursor() as cursor:
            cursor.execute(POST_STATEMENT, params)
            inserted = {key: (pk, created_at) for key, pk, created_at in cursor.fetchall()}
    except IntegrityError as error:
        cause = error.__cause__
        if isinstance(cause, errors.CheckViolation) and cause.diag.constraint_name == BALANCE_CONSTRAINT:
            raise _Refused from None
        if isinstance(cause, errors.NotNullViolation) and cause.diag.column_name == "account_id":
            raise _UnknownAccount from error
        raise
    replayed = _check_replays(entries, set(inserted))
    written: list[tuple[Any, bool]] = []
    for entry in entries:
        if entry.draft.key in inserted:
            pk, created_at = inserted[entry.draft.key]
            written.append((_row(entry, pk=pk, created_at=created_at, actor_id=actor_id), True))
        else:
            written.append((replayed[entry.draft.key], False))
    return written


# --- other databases: the ORM, in bulk -------------------------------------------------------------------------------


def fen_sum(column: F, amount: Decimal) -> Round:
    """column + amount rounded to the fen in the database: PostgreSQL's numeric
    is exact anyway; SQLite adds in binary floating point, where 10.00 − 9.99
    − 0.01 is a hair below zero and would trip the non-negative constraint."""
    return Round(column + amount, 2)


def _write_orm(entries: list[_Entry], *, actor_id: int | None, now: datetime) -> list[tuple[Any, bool]]:
    """The same steps as :data:`POST_STATEMENT` through the ORM; the caller holds a transaction."""
    replayed = _check_replays(entries, set())
    new = [e for e in entries if e.draft.key not in replayed]
    if new:
        accounts = account_rows({p.account for e in new for p in e.draft.postings})
        try:
            with transaction.atomic():
                rows = LedgerTransaction.objects.bulk_create(
                    [
                        LedgerTransaction(
                            key=e.draft.key,
                            kind=str(e.draft.kind),
                            memo=e.draft.memo[:500],
                            fingerprint=e.fingerprint,
                            data=e.data,
                            actor_id=actor_id,
                        )
                        for e in new
                    ]
                )
        except IntegrityError:  # a concurrent transaction posted one of the keys meanwhile: compare with it
            return _write_orm(entries, actor_id=actor_id, now=now)
        Posting.objects.bulk_create(
            [
                Posting(transaction=row, account=accounts[p.account], amount=p.amount)
                for row, e in zip(rows, new, strict=True)
                for p in e.draft.postings
            ]
        )
        for code, (net, low) in sorted(_movements(new).items()):  # one lock order: no deadlocks
            account = Account.objects.filter(pk=accounts[code].pk)
            try:
                with transaction.atomic():
                    if low < net and not accounts[code].may_go_negative:  # dips lower within the batch first
                        account.update(balance=fen_sum(F("balance"), low))
                        account.update(balance=fen_sum(F("balance"), net - low))
                    else:
                        account.update(balance=fen_sum(F("balance"), net))
            except IntegrityError:
                raise _Refused from None
        fresh = {row.key: (row, True) for row in rows}
    else:
        fresh = {}
    return [fresh.get(e.draft.key) or (replayed[e.draft.key], False) for e in entries]
