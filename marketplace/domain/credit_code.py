"""The Unified Social Credit Code (统一社会信用代码, GB 32100-2015).

Validation delegates to python-stdnum; this module only turns its verdicts
into sentences a person can act on.
"""

from __future__ import annotations

from stdnum.cn import uscc
from stdnum.exceptions import InvalidChecksum, InvalidComponent, InvalidFormat, InvalidLength, ValidationError

LENGTH = 18
FORBIDDEN_LETTERS = "IOZSV"


class CreditCodeError(ValueError):
    """The code is not a valid Unified Social Credit Code; the message says why."""


def validate_credit_code(text: str) -> str:
    """Return the normalised (upper-case, no spaces) code or raise CreditCodeError."""
    code = uscc.compact(text or "")
    if len(code) != LENGTH:
        raise CreditCodeError(f"a Unified Social Credit Code has {LENGTH} characters, this one has {len(code)}")
    bad = sorted({ch for ch in code if not ch.isdigit() and not ch.isalpha()} | set(code) & set(FORBIDDEN_LETTERS))
    if bad:
        raise CreditCodeError(
            f"contains {', '.join(repr(ch) for ch in bad)}: only digits and the letters A-Z except I, O, Z, S, V occur"
        )
    if not code[:8].isdigit():
        raise CreditCodeError(
            "the first 8 characters (registering authority, entity type and region code) must be digits"
        )
    try:
        return uscc.validate(code)
    except InvalidChecksum:
        raise CreditCodeError(
            "the check character (the 18th) does not match the first 17 characters: the code has a typo"
        ) from None
    except (InvalidLength, InvalidFormat, InvalidComponent) as exc:
        raise CreditCodeError(f"not a valid code: {exc.message}") from None
    except ValidationError as exc:  # any other verdict of the library
        raise CreditCodeError(f"not a valid code: {exc}") from None


def with_check_character(first17: str) -> str:
    """Complete 17 characters with their check character (used for demo data and tests)."""
    return first17 + uscc.calc_check_digit(first17)


def region_code(code: str) -> str:
    """The six-digit administrative division code of the registering region."""
    return code[2:8]
