"""Unified compute identifiers (算力标识).

Every provider, site and resource pool has a stable, hierarchical, globally
unique identifier that encodes hub → provider → site → pool and ends in a check
character, so a mistyped identifier is caught before any lookup:

    CX-<HUB>-<PPPPP>[-<SSS>[-<RRRR>]]-<CC>

* ``CX`` — the platform's namespace (like a handle prefix).
* ``HUB`` — the national hub: JJJ, YRD, GBA, CY, NMG, GZ, GS, NX. For a
  provider, the hub where it is registered; for a site or pool, the hub the
  site stands in.
* ``PPPPP`` — the provider's serial, 5 base-36 characters (0-9, A-Z), unique
  on the platform.
* ``SSS`` — the site's serial within its provider, 3 base-36 characters.
* ``RRRR`` — the pool's serial within its site, 4 base-36 characters.
* ``CC`` — the two check characters of ISO 7064 MOD 1271-36 over everything
  before them (separators removed). Unlike the one-character MOD 37,36 system,
  which misses some transpositions (CX-JJJ-00E56 and CX-JJJ-00E65 share its
  check character), MOD 1271-36 catches every single-character error and
  every transposition of two adjacent characters, while staying within
  0-9 and A-Z.

Examples: provider ``CX-GZ-0001A-UH``, site ``CX-GZ-0001A-003-0U``, pool
``CX-GZ-0001A-003-000C-0W``. Parsing is case-insensitive and ignores
surrounding white space; identifiers are stored and shown upper-case.
Identifiers are assigned once and never change when attributes change.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from enum import StrEnum

from marketplace.domain.geography import HUBS

NAMESPACE = "CX"
ALPHABET = string.digits + string.ascii_uppercase
PROVIDER_WIDTH = 5
SITE_WIDTH = 3
POOL_WIDTH = 4


class Level(StrEnum):
    PROVIDER = "provider"
    SITE = "site"
    POOL = "pool"


class IdentifierError(ValueError):
    """The text is not a valid identifier; the message says why."""


@dataclass(frozen=True, slots=True)
class ComputeId:
    hub: str
    provider: int
    site: int | None = None
    pool: int | None = None

    def __post_init__(self) -> None:
        if self.hub not in HUBS:
            raise IdentifierError(f"unknown hub {self.hub!r}")
        if self.pool is not None and self.site is None:
            raise IdentifierError("a pool identifier needs a site")
        for value, width, name in (
            (self.provider, PROVIDER_WIDTH, "provider"),
            (self.site, SITE_WIDTH, "site"),
            (self.pool, POOL_WIDTH, "pool"),
        ):
            if value is not None and not 0 < value < 36**width:
                raise IdentifierError(f"{name} serial {value} is outside 1..{36**width - 1}")

    @property
    def level(self) -> Level:
        if self.pool is not None:
            return Level.POOL
        if self.site is not None:
            return Level.SITE
        return Level.PROVIDER

    def parent(self) -> ComputeId | None:
        if self.pool is not None:
            return ComputeId(self.hub, self.provider, self.site)
        return None  # a site's provider may be registered in another hub: resolve it by serial


def _base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def _body(cid: ComputeId) -> list[str]:
    parts = [NAMESPACE, cid.hub, _base36(cid.provider, PROVIDER_WIDTH)]
    if cid.site is not None:
        parts.append(_base36(cid.site, SITE_WIDTH))
    if cid.pool is not None:
        parts.append(_base36(cid.pool, POOL_WIDTH))
    return parts


CHECK_MODULUS = 1271
CHECK_RADIX = 36
CHECK_LENGTH = 2


def check_characters(body: str) -> str:
    """ISO 7064 MOD 1271-36 (pure system) check characters of the body, separators removed."""
    total = 0
    for ch in body.replace("-", ""):
        total = ((total + ALPHABET.index(ch)) * CHECK_RADIX) % CHECK_MODULUS
    total = (total * CHECK_RADIX) % CHECK_MODULUS
    value = (CHECK_MODULUS + 1 - total) % CHECK_MODULUS
    return ALPHABET[value // CHECK_RADIX] + ALPHABET[value % CHECK_RADIX]


def format_identifier(cid: ComputeId) -> str:
    body = "-".join(_body(cid))
    return f"{body}-{check_characters(body)}"


def provider_identifier(hub: str, provider: int) -> str:
    return format_identifier(ComputeId(hub, provider))


def site_identifier(hub: str, provider: int, site: int) -> str:
    return format_identifier(ComputeId(hub, provider, site))


def pool_identifier(hub: str, provider: int, site: int, pool: int) -> str:
    return format_identifier(ComputeId(hub, provider, site, pool))


def normalise(text: str) -> str:
    return text.strip().upper()


def parse_identifier(text: str) -> ComputeId:
    """Parse and verify an identifier; raises IdentifierError saying what is wrong."""
    value = normalise(text)
    parts = value.split("-")
    if len(parts) < 4 or len(parts) > 6:
        raise IdentifierError(
            "an identifier has the form CX-<hub>-<provider>[-<site>[-<pool>]]-<check>, e.g. CX-GZ-0001A-003-000C-0W"
        )
    if parts[0] != NAMESPACE:
        raise IdentifierError(f"identifiers start with {NAMESPACE}-")
    *body_parts, check = parts
    if len(check) != CHECK_LENGTH or any(ch not in ALPHABET for ch in check):
        raise IdentifierError("the last part must be the two check characters (0-9 or A-Z)")
    hub = body_parts[1]
    if hub not in HUBS:
        raise IdentifierError(f"unknown hub {hub!r}; hubs are {', '.join(HUBS)}")
    widths = (PROVIDER_WIDTH, SITE_WIDTH, POOL_WIDTH)
    names = ("provider", "site", "pool")
    serials: list[int] = []
    for part, width, name in zip(body_parts[2:], widths, names, strict=False):
        if len(part) != width or any(ch not in ALPHABET for ch in part):
            raise IdentifierError(f"the {name} part must be {width} characters of 0-9 or A-Z, got {part!r}")
        serials.append(int(part, 36))
    body = "-".join(body_parts)
    if check_characters(body) != check:
        raise IdentifierError("the check characters do not match: the identifier has a typo")
    provider, site, pool = ([*serials, None, None])[:3]
    if provider == 0 or site == 0 or pool == 0:
        raise IdentifierError("serial 0 is never assigned")
    return ComputeId(hub=hub, provider=provider, site=site, pool=pool)  # type: ignore[arg-type]


def is_valid(text: str) -> bool:
    try:
        parse_identifier(text)
    except IdentifierError:
        return False
    return True
