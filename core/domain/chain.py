"""The audit trail's hash chain, in pure Python.

Each audit entry carries the SHA-256 of its own canonical content (every
column but its id). Sealing appends entries to one chain: seal *n* holds the
entry's id, the previous seal's chain hash and its own chain hash, the
SHA-256 of ``n | entry id | content hash | previous hash``. Changing any
sealed entry changes its content hash; removing or reordering seals breaks a
``previous`` link or the sequence. :func:`check_links` walks a chain and
names every broken link, first to last.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

GENESIS = "0" * 64


def canonical_json(value: Any) -> Any:
    """``value`` as a JSON database column gives it back: keys as strings,
    tuples as lists, whole floats as integers (PostgreSQL's ``jsonb`` prints
    ``1e+20`` as ``100000000000000000000``). Non-finite numbers are refused,
    as the database refuses them."""
    if isinstance(value, dict):
        return {str(key): canonical_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_json(item) for item in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"an audit entry's data cannot hold {value!r}")
        return int(Decimal(repr(value))) if value.is_integer() else value  # exact: int(1e23) is 99999999999999991611392
    return value


@functools.lru_cache(maxsize=256)  # a scheduling cycle stamps thousands of entries with one moment
def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("audit entries are stamped with time-zone-aware UTC date-times")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def content_hash(
    *,
    at: datetime,
    actor_id: int | None,
    actor_label: str,
    action: str,
    entity_type: str,
    entity_id: str,
    from_state: str,
    to_state: str,
    reason: str,
    data: Any,
) -> str:
    """SHA-256 (hex) of an entry's canonical content: sorted-key compact JSON, UTF-8."""
    content = {
        "action": action,
        "actor": actor_id,
        "actor_label": actor_label,
        "at": _utc(at),
        "data": canonical_json(data),
        "entity_id": entity_id,
        "entity_type": entity_type,
        "from_state": from_state,
        "reason": reason,
        "to_state": to_state,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def chain_hash(*, sequence: int, entry_id: int, content_hash: str, previous_hash: str) -> str:
    """SHA-256 (hex) linking an entry, at its place in the chain, to the link before it."""
    return hashlib.sha256(f"{sequence}|{entry_id}|{content_hash}|{previous_hash}".encode()).hexdigest()


@dataclass(frozen=True)
class Link:
    """One seal as stored, with the content hash recomputed from its entry's
    columns now (``None`` if the entry is gone)."""

    sequence: int
    entry_id: int
    previous_hash: str
    chain_hash: str
    stored_content_hash: str | None
    content_hash_now: str | None


@dataclass(frozen=True)
class Break:
    sequence: int
    entry_id: int | None
    problem: str

    def __str__(self) -> str:
        where = f"seal #{self.sequence}" + (f" (audit entry {self.entry_id})" if self.entry_id is not None else "")
        return f"{where}: {self.problem}"


def _link_problem(link: Link, previous: str) -> str | None:
    if link.previous_hash != previous:
        return "its previous hash is not the chain hash of the seal before it"
    if link.content_hash_now is None:
        return "the audit entry it seals is gone (deleted)"
    if link.stored_content_hash != link.content_hash_now:
        return "the audit entry's content does not match its content hash (altered)"
    recomputed = chain_hash(
        sequence=link.sequence,
        entry_id=link.entry_id,
        content_hash=link.content_hash_now,
        previous_hash=link.previous_hash,
    )
    if recomputed != link.chain_hash:
        return "its chain hash does not match the entry and the link (the entry or the seal was altered)"
    return None


def check_links(links: Iterable[Link], *, previous: str = GENESIS, after: int = 0) -> Iterator[Break]:
    """Every broken link of a chain given in ascending sequence order. The
    chain runs on from ``previous``, the chain hash of seal ``after``."""
    expected = after + 1
    for link in links:
        if link.sequence != expected:
            last = link.sequence - 1
            gap = f"seal #{expected} is" if last == expected else f"seals #{expected}–#{last} are"
            yield Break(link.sequence, link.entry_id, f"{gap} missing before it (removed from the chain)")
        problem = _link_problem(link, previous)
        if problem is not None:
            yield Break(link.sequence, link.entry_id, problem)
        previous = link.chain_hash
        expected = link.sequence + 1
