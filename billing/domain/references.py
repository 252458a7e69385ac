"""Payment references as a bank statement and a buyer may each write them.

One transfer is cited as "ICBC 2026-0001", "icbc20260001" or "ICBC-2026/0001";
:func:`reference_key` makes them one key (Unicode compatibility forms folded,
case folded, spaces and the separators - _ / . removed), so a transfer is
noticed, and credited, once."""

from __future__ import annotations

import unicodedata

SEPARATORS = frozenset("-_/.")


def reference_key(reference: str) -> str:
    """The comparable form of a payment reference (empty if it has nothing but separators)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", reference).casefold())
    kept = "".join(ch for ch in folded if not ch.isspace() and ch not in SEPARATORS)
    return unicodedata.normalize("NFKC", kept)  # a mark after a removed separator joins the letter before
