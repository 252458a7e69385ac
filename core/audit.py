"""Writing, sealing and verifying the audit trail.

Every service that changes the state of an important object records it with
:func:`audit_record` or :func:`audit_many`, inside its own transaction. Each
entry gets the hash of its content at insert and a row in the pending list;
nothing is locked, so a long scheduling cycle writing ten thousand entries
holds up no one. Inside a caller's transaction an entry takes no savepoint
of its own: if it cannot be written, the whole transaction fails, so no
change commits without its entry. :func:`audit_seal` then appends the
committed entries to the hash chain in its own short transaction under one
lock (the beat runs it every few seconds); :func:`audit_verify` walks the
chain.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from core.domain import chain
from core.models import AuditEntry, AuditPending, AuditSeal

SYSTEM = "system"
SEAL_BATCH = 20_000
# The key of the PostgreSQL advisory lock that one sealer at a time holds.
SEAL_LOCK = 0x4358_4155_4449_54  # "CXAUDIT"


def _content_hash(entry: AuditEntry) -> str:
    return chain.content_hash(
        at=entry.at,
        actor_id=entry.actor_id,
        actor_label=entry.actor_label,
        action=entry.action,
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        from_state=entry.from_state,
        to_state=entry.to_state,
        reason=entry.reason,
        data=entry.data,
    )


def _entry(
    *,
    actor: Any | None,
    label: str,
    at: Any,
    action: str,
    entity: models.Model,
    from_state: str = "",
    to_state: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=at,
        actor=actor,
        actor_label=label,
        action=str(action),
        entity_type=entity._meta.label_lower,
        entity_id=str(entity.pk),
        from_state=str(from_state),
        to_state=str(to_state),
        reason=str(reason),
        data=data or {},
    )
    entry.content_hash = _content_hash(entry)
    return entry


def _actor(actor: Any | None) -> tuple[Any | None, str]:
    return (actor if getattr(actor, "pk", None) else None), (getattr(actor, "username", None) or SYSTEM)


def audit_record(
    *,
    actor: Any | None,
    action: str,
    entity: models.Model,
    from_state: str = "",
    to_state: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    user, label = _actor(actor)
    entry = _entry(
        actor=user,
        label=label,
        at=timezone.now(),
        action=action,
        entity=entity,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        data=data,
    )
    _insert([entry])
    return entry


def audit_many(entries: list[dict[str, Any]], *, actor: Any | None = None) -> None:
    """Record many audit entries at once (a scheduling cycle). Each dict has
    the keyword arguments of :func:`audit_record` except ``actor``."""
    if not entries:
        return
    user, label = _actor(actor)
    now = timezone.now()
    rows = [_entry(actor=user, label=label, at=now, **entry) for entry in entries]
    _insert(rows)


INSERT_BATCH = 1000
FEW = 16  # up to this many entries are sent as rows of values, more as one array per column


@functools.cache
def _inserted_fields() -> tuple[models.Field, ...]:
    """The columns an entry is inserted with: all but its id, which the database draws."""
    return tuple(field for field in AuditEntry._meta.concrete_fields if not field.primary_key)


@functools.lru_cache(maxsize=FEW + 1)
def _insert_statement(count: int) -> str:
    """PostgreSQL: insert ``count`` entries and put them on the pending list,
    in one statement. A few entries (a request's) are given row by row, which
    costs least to send; many (a scheduling cycle's) as one array per column,
    which costs least for many (``count`` 0: any number)."""
    quote = connection.ops.quote_name
    fields = _inserted_fields()
    if count:
        one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        source = "VALUES " + ", ".join([one_row] * count)
    else:
        arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in fields)
        source = f"SELECT * FROM UNNEST({arrays})"  # noqa: S608 - the columns' own types
    columns = ", ".join(quote(field.column) for field in fields)
    entries, pending = quote(AuditEntry._meta.db_table), quote(AuditPending._meta.db_table)
    return (
        f"WITH entry AS (INSERT INTO {entries} ({columns}) {source} RETURNING id) "  # noqa: S608 - the model's own names; the values are parameters
        f"INSERT INTO {pending} (entry_id) SELECT id FROM entry RETURNING entry_id"
    )


def _insert(rows: list[AuditEntry]) -> None:
    """Insert entries and put them on the list awaiting their seal, in one
    transaction (within the caller's, with no savepoint of its own: if this
    fails, the caller's whole transaction does). On PostgreSQL one statement
    per ``INSERT_BATCH`` entries, the entries' insert feeding the pending
    list's; the ids, drawn in the order of the rows, are set on ``rows``."""
    with transaction.atomic(savepoint=False):
        if connection.vendor != "postgresql":
            AuditEntry.objects.bulk_create(rows, batch_size=INSERT_BATCH)
            AuditPending.objects.bulk_create([AuditPending(entry_id=row.pk) for row in rows], batch_size=5000)
            return
        fields = _inserted_fields()
        with connection.cursor() as cursor:
            for start in range(0, len(rows), INSERT_BATCH):
                batch = rows[start : start + INSERT_BATCH]
                values = [
                    [field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields]
                    for row in batch
                ]
                if len(batch) <= FEW:
                    cursor.execute(_insert_statement(len(batch)), [value for row in values for value in row])
                else:
                    cursor.execute(_insert_statement(0), [list(column) for column in zip(*values, strict=True)])
                for row, entry_id in zip(batch, sorted(entry_id for (entry_id,) in cursor.fetchall()), strict=True):
                    row.pk = entry_id
                    row._state.adding = False
                    row._state.db = connection.alias


def audit_login(sender: Any, *, request: Any, user: Any, **kwargs: Any) -> None:
    """Receiver of ``user_logged_in``: every sign-in (the operator console's
    and the API token endpoint's) is an audited event."""
    meta = getattr(request, "META", {}) if request is not None else {}
    audit_record(
        actor=user,
        action="user.signed_in",
        entity=user,
        data={
            "role": getattr(user, "role", "") or "",
            "via": getattr(request, "path", "") if request is not None else "",
            "ip": meta.get("REMOTE_ADDR", ""),
        },
    )


# --- the chain -------------------------------------------------------------------------------------------------------


def _lock(*, wait: bool) -> bool:
    """Take the sealer's lock for this transaction (PostgreSQL: an advisory
    lock; SQLite serialises writers by itself). False if busy and not waiting."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEAL_LOCK])
            return True
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK])
        return bool(cursor.fetchone()[0])


def _seal_batch(*, wait: bool, limit: int) -> int | None:
    """Seal up to ``limit`` pending entries in one transaction; None if another sealer holds the lock."""
    with transaction.atomic():
        if not _lock(wait=wait):
            return None
        pending = list(AuditPending.objects.order_by("entry_id").values_list("entry_id", "entry__content_hash")[:limit])
        if not pending:
            return 0
        head = AuditSeal.objects.order_by("-sequence").values_list("sequence", "chain_hash").first()
        sequence, previous = head if head is not None else (0, chain.GENESIS)
        now = timezone.now()
        seals = []
        for entry_id, content_hash in pending:
            sequence += 1
            link = chain.chain_hash(
                sequence=sequence, entry_id=entry_id, content_hash=content_hash, previous_hash=previous
            )
            seals.append(
                AuditSeal(sequence=sequence, entry_id=entry_id, previous_hash=previous, chain_hash=link, sealed_at=now)
            )
            previous = link
        AuditSeal.objects.bulk_create(seals, batch_size=5000)
        AuditPending.objects.filter(entry_id__in=[entry_id for entry_id, _ in pending]).delete()
        return len(seals)


def audit_seal(*, wait: bool = False, batch: int = SEAL_BATCH) -> int:
    """Append every committed, unsealed audit entry to the chain, in entry id
    order, ``batch`` at a time (each batch its own short transaction).
    Returns how many were sealed. With ``wait=False`` it returns 0 at once if
    another sealer is at work (that one will seal them)."""
    sealed = 0
    while True:
        done = _seal_batch(wait=wait, limit=batch)
        if not done:
            return sealed
        sealed += done
        if done < batch:
            return sealed


@dataclass
class Verification:
    seals: int = 0
    head_sequence: int = 0
    head_hash: str = chain.GENESIS
    breaks: list[chain.Break] = field(default_factory=list)
    unsealed: int = 0
    unsealed_altered: list[int] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not (self.breaks or self.unsealed_altered or self.orphans)


ENTRY_COLUMNS = (
    "at",
    "actor_id",
    "actor_label",
    "action",
    "entity_type",
    "entity_id",
    "from_state",
    "to_state",
    "reason",
    "data",
)


def _recomputed(row: dict[str, Any]) -> str:
    return chain.content_hash(**{column: row[column] for column in ENTRY_COLUMNS})


def _links(chunk: int, result: Verification) -> Iterator[chain.Link]:
    """Every seal in sequence order, with its entry's stored and recomputed
    content hash (counted into ``result`` as it goes)."""
    after = 0
    while True:
        seals = list(
            AuditSeal.objects.filter(sequence__gt=after)
            .order_by("sequence")
            .values_list("sequence", "entry_id", "previous_hash", "chain_hash")[:chunk]
        )
        if not seals:
            return
        entries = AuditEntry.objects.filter(pk__in=[seal[1] for seal in seals])
        rows = {row["id"]: row for row in entries.values("id", "content_hash", *ENTRY_COLUMNS)}
        for sequence, entry_id, previous_hash, chain_hash in seals:
            row = rows.get(entry_id)
            result.seals += 1
            result.head_sequence, result.head_hash = sequence, chain_hash
            yield chain.Link(
                sequence=sequence,
                entry_id=entry_id,
                previous_hash=previous_hash,
                chain_hash=chain_hash,
                stored_content_hash=row["content_hash"] if row else None,
                content_hash_now=_recomputed(row) if row else None,
            )
        after = seals[-1][0]


def audit_verify(*, seal_first: bool = True, limit: int = 20, chunk: int = 5000) -> Verification:
    """Walk the whole chain, recomputing every content and chain hash, and
    check the entries not sealed yet; at most ``limit`` problems of each kind
    are kept. Seals what is pending first (waiting for a running sealer)."""
    if seal_first:
        audit_seal(wait=True)
    result = Verification()
    for found in chain.check_links(_links(chunk, result)):
        if len(result.breaks) < limit:
            result.breaks.append(found)
    # Entries without a seal: committed after the sealing above (pending), or cut out of the chain.
    # One statement, so one snapshot: a sealer at work meanwhile cannot make an entry look cut out.
    unsealed = (
        AuditEntry.objects.filter(seal__isnull=True)
        .annotate(pending=Exists(AuditPending.objects.filter(entry_id=OuterRef("pk"))))
        .order_by("id")
        .values("id", "content_hash", "pending", *ENTRY_COLUMNS)
    )
    for row in unsealed.iterator(chunk_size=chunk):
        result.unsealed += 1
        if not row["pending"] and len(result.orphans) < limit:
            result.orphans.append(row["id"])
        if _recomputed(row) != row["content_hash"] and len(result.unsealed_altered) < limit:
            result.unsealed_altered.append(row["id"])
    return result
