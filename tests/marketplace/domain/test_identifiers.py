import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.domain import identifiers
from marketplace.domain.geography import HUBS
from marketplace.domain.identifiers import ComputeId, IdentifierError, format_identifier, parse_identifier

hubs = st.sampled_from(sorted(HUBS))
ids = st.builds(
    ComputeId,
    hub=hubs,
    provider=st.integers(1, 36**5 - 1),
    site=st.none() | st.integers(1, 36**3 - 1),
    pool=st.none(),
) | st.builds(
    ComputeId,
    hub=hubs,
    provider=st.integers(1, 36**5 - 1),
    site=st.integers(1, 36**3 - 1),
    pool=st.integers(1, 36**4 - 1),
)


@settings(max_examples=300, deadline=None)
@given(ids)
def test_identifiers_round_trip(cid: ComputeId) -> None:
    text = format_identifier(cid)
    assert parse_identifier(text) == cid
    assert parse_identifier(f"  {text.lower()} ") == cid


@settings(max_examples=300, deadline=None)
@given(ids, st.data())
def test_any_single_character_typo_is_caught(cid: ComputeId, data: st.DataObject) -> None:
    text = format_identifier(cid)
    positions = [i for i, ch in enumerate(text) if ch != "-"]
    index = data.draw(st.sampled_from(positions))
    replacement = data.draw(st.sampled_from([c for c in identifiers.ALPHABET if c != text[index]]))
    typo = text[:index] + replacement + text[index + 1 :]
    with pytest.raises(IdentifierError):
        parse_identifier(typo)


@settings(max_examples=300, deadline=None)
@given(ids, st.data())
def test_adjacent_transpositions_are_caught(cid: ComputeId, data: st.DataObject) -> None:
    text = format_identifier(cid)
    pairs = [i for i in range(len(text) - 1) if "-" not in text[i : i + 2] and text[i] != text[i + 1]]
    if not pairs:
        return
    i = data.draw(st.sampled_from(pairs))
    swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    with pytest.raises(IdentifierError):
        parse_identifier(swapped)


def test_documented_examples() -> None:
    assert identifiers.provider_identifier("GZ", 46) == "CX-GZ-0001A-UH"
    assert identifiers.site_identifier("GZ", 46, 3) == "CX-GZ-0001A-003-0U"
    assert identifiers.pool_identifier("GZ", 46, 3, 12) == "CX-GZ-0001A-003-000C-0W"


@settings(max_examples=300, deadline=None)
@given(ids)
def test_check_characters_satisfy_the_iso_7064_pure_system(cid: ComputeId) -> None:
    """Body and check together leave remainder 1 under MOD 1271-36 (ISO 7064's validity rule)."""
    digits = "".join(format_identifier(cid).split("-"))
    remainder = 0
    for ch in digits:
        remainder = (remainder * 36 + identifiers.ALPHABET.index(ch)) % 1271
    assert remainder == 1


def test_pool_identifier_encodes_its_hierarchy() -> None:
    cid = parse_identifier("CX-GZ-0001A-003-000C-0W")
    assert (cid.hub, cid.provider, cid.site, cid.pool) == ("GZ", 46, 3, 12)
    assert cid.level is identifiers.Level.POOL
    assert cid.parent() == ComputeId("GZ", 46, 3)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("CX-GZ-0001A-003-000C-0X", "check characters do not match"),
        ("CX-GZ-0001A-003-000D-0W", "check characters do not match"),
        ("CX-XX-0001A-UH", "unknown hub"),
        ("XY-GZ-0001A-UH", "start with CX"),
        ("CX-GZ-001A-UH", "provider part"),
        ("CX-GZ", "has the form"),
        ("CX-GZ-0001A-003-000C-0", "two check characters"),
    ],
)
def test_malformed_identifiers_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(IdentifierError, match=reason):
        parse_identifier(text)
