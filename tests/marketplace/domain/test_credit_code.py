import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.domain.credit_code import CreditCodeError, validate_credit_code, with_check_character

ALLOWED = "0123456789ABCDEFGHJKLMNPQRTUWXY"
bodies = st.tuples(st.text("0123456789", min_size=8, max_size=8), st.text(ALLOWED, min_size=9, max_size=9)).map("".join)


def test_a_real_format_code_is_accepted_and_normalised() -> None:
    assert validate_credit_code(" 91110108551385082q ") == "91110108551385082Q"


def test_wrong_check_character_is_a_typo() -> None:
    with pytest.raises(CreditCodeError, match="check character"):
        validate_credit_code("91110108551385082X")


@pytest.mark.parametrize("code", ["9111010855138508", "91110108551385082QQ", ""])
def test_wrong_length_says_how_long(code: str) -> None:
    with pytest.raises(CreditCodeError, match="18 characters"):
        validate_credit_code(code)


def test_letters_never_used_in_codes_are_named() -> None:
    with pytest.raises(CreditCodeError, match="'O'"):
        validate_credit_code("91110108551385O82Q")


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_completed_codes_validate(body: str) -> None:
    assert validate_credit_code(with_check_character(body)) == with_check_character(body)


@settings(max_examples=300, deadline=None)
@given(bodies, st.integers(0, 16), st.sampled_from(ALLOWED))
def test_changing_one_character_is_caught(body: str, index: int, replacement: str) -> None:
    code = with_check_character(body)
    if index < 8 and not replacement.isdigit():
        replacement = "0"
    if code[index] == replacement:
        return
    typo = code[:index] + replacement + code[index + 1 :]
    with pytest.raises(CreditCodeError):
        validate_credit_code(typo)
