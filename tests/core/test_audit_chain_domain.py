"""The hash chain's pure rules: canonical content, links, and what a walk finds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.domain import chain

AT = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


def content(**overrides) -> dict:
    values = {
        "at": AT,
        "actor_id": 7,
        "actor_label": "operator",
        "action": "statement.approved",
        "entity_type": "billing.settlementstatement",
        "entity_id": "12",
        "from_state": "pending_review",
        "to_state": "approved",
        "reason": "matches the agent's logs",
        "data": {"amount": "123.45"},
    }
    values.update(overrides)
    return values


def test_the_content_hash_changes_with_every_column_and_not_with_key_order_or_time_zone():
    base = chain.content_hash(**content())
    assert len(base) == 64
    for column, other in [
        ("at", AT + timedelta(microseconds=1)),
        ("actor_id", None),
        ("actor_label", "someone else"),
        ("action", "statement.disputed"),
        ("entity_type", "billing.charge"),
        ("entity_id", "13"),
        ("from_state", "disputed"),
        ("to_state", "paid"),
        ("reason", "matches the agent's logs."),
        ("data", {"amount": "123.46"}),
    ]:
        assert chain.content_hash(**content(**{column: other})) != base, column
    beijing = AT.astimezone(timezone(timedelta(hours=8)))
    assert chain.content_hash(**content(at=beijing)) == base
    reordered = {"b": [1, 2.5, {"y": None, "x": True}], "a": "文"}
    assert chain.content_hash(**content(data=reordered)) == chain.content_hash(
        **content(data={"a": "文", "b": [1, 2.5, {"x": True, "y": None}]})
    )


def test_json_is_hashed_as_the_database_gives_it_back():
    # PostgreSQL's jsonb prints 1e+20 as 100000000000000000000 and has no tuples or integer keys.
    assert chain.canonical_json({1: (1.0, 1e20, 0.5)}) == {"1": [1, 100000000000000000000, 0.5]}
    assert chain.canonical_json(1e23) == 10**23, "as the database prints it, not int(1e23)"
    with pytest.raises(ValueError, match="nan"):
        chain.canonical_json({"x": float("nan")})
    with pytest.raises(ValueError, match="aware"):
        chain.content_hash(**content(at=datetime(2026, 1, 1)))  # noqa: DTZ001


def make_chain(hashes: list[str]) -> list[chain.Link]:
    links, previous = [], chain.GENESIS
    for sequence, digest in enumerate(hashes, start=1):
        link = chain.chain_hash(sequence=sequence, entry_id=100 + sequence, content_hash=digest, previous_hash=previous)
        links.append(chain.Link(sequence, 100 + sequence, previous, link, digest, digest))
        previous = link
    return links


HASHES = [f"{i:064x}" for i in range(1, 8)]


def test_an_intact_chain_has_no_break():
    assert list(chain.check_links(make_chain(HASHES))) == []


def test_a_walk_names_the_altered_entry_the_cut_and_the_rewritten_seal():
    links = make_chain(HASHES)
    altered = links[:]
    altered[2] = chain.Link(3, 103, links[2].previous_hash, links[2].chain_hash, HASHES[2], "f" * 64)
    [found] = chain.check_links(altered)
    assert (found.sequence, found.entry_id) == (3, 103) and "altered" in found.problem
    assert str(found).startswith("seal #3 (audit entry 103): ")

    cut = links[:3] + links[4:]
    problems = list(chain.check_links(cut))
    assert problems[0].sequence == 5 and "seal #4 is missing" in problems[0].problem
    assert "previous hash" in problems[1].problem

    # Someone rewrites entry 104 and recomputes its content hash: the link no longer matches.
    rewritten = links[:]
    rewritten[3] = chain.Link(4, 104, links[3].previous_hash, links[3].chain_hash, "e" * 64, "e" * 64)
    [found] = chain.check_links(rewritten)
    assert found.sequence == 4 and "chain hash does not match" in found.problem


@given(st.integers(min_value=0, max_value=6), st.sampled_from(["content", "previous", "chain", "drop"]))
def test_any_single_change_to_a_chain_is_found_at_or_right_after_it(position: int, change: str):
    links = make_chain(HASHES)
    link = links[position]
    if change == "content":
        links[position] = replace(link, stored_content_hash="a" * 64, content_hash_now="b" * 64)
    elif change == "previous":
        links[position] = replace(link, previous_hash="c" * 64)
    elif change == "chain":
        links[position] = replace(link, chain_hash="d" * 64)
    else:
        del links[position]
    problems = list(chain.check_links(links))
    if change == "drop" and position == len(HASHES) - 1:
        assert problems == []  # the tail can only be checked against an anchor kept elsewhere
    else:
        assert problems and problems[0].sequence in {position + 1, position + 2}
