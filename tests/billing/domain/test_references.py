"""One transfer, however its reference is written, has one key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.references import SEPARATORS, reference_key


@pytest.mark.parametrize(
    "spelling", ["ICBC 2026-0001", "icbc20260001", "ICBC-2026/0001", " Icbc_2026.0001 ", "ＩＣＢＣ２０２６０００１"]
)
def test_the_ways_a_reference_is_written_share_one_key(spelling: str) -> None:
    assert reference_key(spelling) == "icbc20260001"


def test_different_transfers_keep_different_keys() -> None:
    assert reference_key("ICBC-2026-0001") != reference_key("ICBC-2026-0002")
    assert reference_key("---") == ""


@given(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=1),
    st.lists(st.sampled_from([*sorted(SEPARATORS), " ", "\t"]), min_size=1),
    st.data(),
)
def test_case_spaces_and_separators_never_change_the_key(text: str, noise: list[str], data: st.DataObject) -> None:
    noisy = list(text.upper())
    for mark in noise:
        noisy.insert(data.draw(st.integers(0, len(noisy))), mark)
    assert reference_key("".join(noisy)) == reference_key(text) == text.lower()


@given(st.text())
def test_a_key_is_its_own_key(text: str) -> None:
    key = reference_key(text)
    assert reference_key(key) == key
