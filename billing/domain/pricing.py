"""Pricing (定价): from an offer's price rules to a quote, a locked price and
metered charges. Prices are in CNY per normalised compute unit-hour (NCU-hour,
see :mod:`marketplace.domain.units`).

**The price of one NCU-hour** is the list price times, in this order:

1. *the pricing type*: on-demand × 1; reserved × (1 − commitment discount),
   where the discount is that of the highest :class:`CommitmentTier` whose
   ``min_hours`` the commitment reaches; interruptible × the
   :class:`InterruptibleCurve` ratio at the pool's utilisation u (0..1)::

       ratio(u) = floor                                        if u ≤ low
                = floor + (cap − floor) × (u − low) / (high − low)   if low < u < high
                = cap                                          if u ≥ high

   so an interruptible price never leaves [floor × list, cap × list], rises
   with utilisation, and (cap ≤ 1) never exceeds the on-demand price;
2. *time of use* (on-demand and reserved only; an interruptible price already
   follows utilisation): the peak factor during the peak hours of the day in
   China Standard Time (UTC+8, no daylight saving), the off-peak factor
   otherwise. Over a window the factor is the time-weighted average, so a
   quote for a window straddling a peak boundary pays each part at its rate;
3. *green power*: × (1 − green discount), where the discount grows linearly
   from 0 at ``from_share`` of green electricity at the site to
   ``max_discount`` at 100% (and is 0 below ``from_share``).

That price is **locked** on the lease (:class:`LockedPrice`). **Volume tiers**
then apply per buyer per calendar month, marginally like tax brackets: the
NCU-hours of a charge that fall in a tier (counting from the NCU-hours the
buyer already bought this month) get that tier's discount. Tier discounts
never decrease with volume, so the monthly total never decreases as usage
grows and the price of each further NCU-hour never rises.

**Rounding happens only at these named points:**

* ``lock_price``: the unit price after each of steps 1–3 is rounded to
  ``PRICE_PLACES`` (10⁻¹⁰ CNY, half up), so the locked price has a finite
  exact value the lease can store;
* ``to_fen`` (:mod:`billing.domain.money`): a quote rounds the running amount
  after each step (base, pricing type, time of use, green, volume) to the fen
  once; each breakdown line is the difference of two rounded running amounts,
  so the lines are fen-exact and add up to the subtotal exactly. A charge
  rounds its gross amount to the fen once, and the commission to the fen once;
  the provider share is gross − commission, with no rounding of its own;
* ``ENERGY_PLACES``: energy (kWh) and carbon (kg) estimates to 0.001.

**The buyer is never billed above the quote for the same usage.** A charge for
a usage sample is the lesser of (a) the sample's share of the lease's running
total priced exactly as the quote priced it (locked unit price, volume
position locked when the lease was made), and (b) the sample priced at the
buyer's current volume position (which may be cheaper: other leases this
month). Because (a) telescopes, a lease's charges never add up to more than
the quote's subtotal for the same NCU-hours, even across a month boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from itertools import pairwise

from billing.domain.money import CNY, Money, as_decimal, is_fen_exact, to_fen
from core.errors import InvalidInput

CST = timezone(timedelta(hours=8), "CST")  # China Standard Time; China has no daylight saving
PRICE_PLACES = Decimal("1E-10")  # locked unit prices, CNY per NCU-hour
ENERGY_PLACES = Decimal("0.001")  # kWh and kg CO2

_ZERO = Decimal(0)
_ONE = Decimal(1)
_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
_EPOCH_CST = datetime(1970, 1, 1, tzinfo=CST)


class PricingError(InvalidInput):
    code = "pricing_invalid"


class PricingType(StrEnum):
    ON_DEMAND = "on_demand"
    RESERVED = "reserved"
    INTERRUPTIBLE = "interruptible"


class AdjustmentKind(StrEnum):
    """The lines of a quote between the base and the subtotal."""

    RESERVED = "reserved"  # commitment discount
    INTERRUPTIBLE = "interruptible"  # utilisation-based price below list
    TIME_OF_USE = "time_of_use"  # peak surcharge or off-peak discount
    GREEN = "green"  # green-power discount
    VOLUME = "volume"  # monthly volume tiers


# --- validation -------------------------------------------------------------


def _number(value: object, name: str) -> Decimal:
    try:
        return as_decimal(value, name)
    except ValueError as error:
        raise PricingError(str(error), field=name) from None


def _at_least(value: object, name: str, low: Decimal = _ZERO) -> Decimal:
    number = _number(value, name)
    if number < low:
        raise PricingError(f"{name} must be at least {low}, not {number}.", field=name)
    return number


def _share(value: object, name: str, *, below_one: bool = False) -> Decimal:
    """A share between 0 and 1 (``below_one``: strictly less than 1)."""
    number = _number(value, name)
    if number < 0 or number > 1 or (below_one and number == 1):
        upper = "below 1" if below_one else "at most 1"
        raise PricingError(f"{name} must be between 0 and {upper}, not {number}.", field=name)
    return number


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise PricingError(f"{name} must be a timezone-aware datetime.", field=name)
    return moment


def _pricing_type(value: str) -> PricingType:
    try:
        return PricingType(value)
    except ValueError:
        choices = ", ".join(PricingType)
        raise PricingError(f"pricing type must be one of {choices}, not {value!r}.", field="pricing_type") from None


def _set(instance: object, name: str, value: object) -> None:
    object.__setattr__(instance, name, value)


def lock_price(value: Decimal) -> Decimal:
    """The named rounding point for unit prices: to ``PRICE_PLACES``, half up."""
    return value.quantize(PRICE_PLACES, rounding=ROUND_HALF_UP)


# --- rule parts ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommitmentTier:
    """A reserved lease committing to at least ``min_hours`` gets ``discount`` off list."""

    min_hours: Decimal
    discount: Decimal

    def __post_init__(self) -> None:
        _set(self, "min_hours", _at_least(self.min_hours, "min_hours"))
        _set(self, "discount", _share(self.discount, "discount", below_one=True))


@dataclass(frozen=True, slots=True)
class VolumeTier:
    """NCU-hours a buyer buys in a month beyond ``from_ncu_hours`` get ``discount`` off."""

    from_ncu_hours: Decimal
    discount: Decimal

    def __post_init__(self) -> None:
        _set(self, "from_ncu_hours", _at_least(self.from_ncu_hours, "from_ncu_hours"))
        _set(self, "discount", _share(self.discount, "discount", below_one=True))


@dataclass(frozen=True, slots=True)
class InterruptibleCurve:
    """Interruptible price as a share of list: ``floor_ratio`` up to ``low_utilisation``,
    rising linearly to ``cap_ratio`` at ``high_utilisation`` and above."""

    floor_ratio: Decimal = Decimal("0.30")
    cap_ratio: Decimal = Decimal("0.80")
    low_utilisation: Decimal = Decimal("0.30")
    high_utilisation: Decimal = Decimal("0.90")

    def __post_init__(self) -> None:
        floor = _share(self.floor_ratio, "floor_ratio")
        cap = _share(self.cap_ratio, "cap_ratio")
        low = _share(self.low_utilisation, "low_utilisation")
        high = _share(self.high_utilisation, "high_utilisation")
        if floor <= 0:
            raise PricingError(
                "floor_ratio must be above 0: interruptible capacity is never free.", field="floor_ratio"
            )
        if floor > cap:
            raise PricingError(f"floor_ratio {floor} is above cap_ratio {cap}.", field="floor_ratio")
        if low >= high:
            raise PricingError(f"low_utilisation {low} must be below high_utilisation {high}.", field="low_utilisation")
        _set(self, "floor_ratio", floor)
        _set(self, "cap_ratio", cap)
        _set(self, "low_utilisation", low)
        _set(self, "high_utilisation", high)


@dataclass(frozen=True, slots=True)
class TimeOfUse:
    """Peak and off-peak factors. ``peak_hours`` are hours of the day in China
    Standard Time: hour 8 means 08:00–09:00 CST."""

    peak_hours: frozenset[int] = frozenset(range(8, 22))
    peak_factor: Decimal = Decimal("1.20")
    off_peak_factor: Decimal = Decimal("0.80")

    def __post_init__(self) -> None:
        hours = frozenset(self.peak_hours)
        if any(isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23 for hour in hours):
            raise PricingError("peak_hours must be whole hours from 0 to 23.", field="peak_hours")
        peak = _number(self.peak_factor, "peak_factor")
        off_peak = _number(self.off_peak_factor, "off_peak_factor")
        if peak <= 0 or off_peak <= 0:
            raise PricingError("time-of-use factors must be above 0.", field="peak_factor")
        _set(self, "peak_hours", hours)
        _set(self, "peak_factor", peak)
        _set(self, "off_peak_factor", off_peak)


@dataclass(frozen=True, slots=True)
class GreenDiscount:
    """Discount for green electricity: 0 at ``from_share`` (and below), rising
    linearly to ``max_discount`` at a site running on 100% green power."""

    max_discount: Decimal = Decimal("0.05")
    from_share: Decimal = Decimal("0.50")

    def __post_init__(self) -> None:
        _set(self, "max_discount", _share(self.max_discount, "max_discount", below_one=True))
        _set(self, "from_share", _share(self.from_share, "from_share", below_one=True))


def _check_tiers(thresholds: list[Decimal], discounts: list[Decimal], what: str) -> None:
    for previous, current in pairwise(thresholds):
        if current <= previous:
            raise PricingError(f"{what} must be listed in increasing order without repeats.", field=what)
    for previous, current in pairwise(discounts):
        if current < previous:
            raise PricingError(f"{what} discounts must not decrease as the tiers rise.", field=what)


@dataclass(frozen=True, slots=True)
class PriceRules:
    """An offer's pricing rules. ``list_price`` is CNY per NCU-hour, at most ten decimals."""

    list_price: Decimal
    pricing_type: PricingType = PricingType.ON_DEMAND
    commitment_tiers: tuple[CommitmentTier, ...] = ()
    interruptible: InterruptibleCurve = field(default_factory=InterruptibleCurve)
    time_of_use: TimeOfUse | None = None
    green: GreenDiscount | None = None
    volume_tiers: tuple[VolumeTier, ...] = ()

    def __post_init__(self) -> None:
        price = _at_least(self.list_price, "list_price")
        if price != lock_price(price):
            raise PricingError(f"list_price {price} has more than ten decimal places.", field="list_price")
        _set(self, "list_price", price)
        _set(self, "pricing_type", _pricing_type(self.pricing_type))
        commitment = tuple(self.commitment_tiers)
        _check_tiers([t.min_hours for t in commitment], [t.discount for t in commitment], "commitment_tiers")
        _set(self, "commitment_tiers", commitment)
        _set(self, "volume_tiers", _volume_tiers(self.volume_tiers))


def _volume_tiers(tiers: Iterable[VolumeTier]) -> tuple[VolumeTier, ...]:
    tiers = tuple(tiers)
    _check_tiers([t.from_ncu_hours for t in tiers], [t.discount for t in tiers], "volume_tiers")
    return tiers


# --- the curves -----------------------------------------------------------------


def commitment_discount(tiers: Iterable[CommitmentTier], commitment_hours: Decimal) -> Decimal:
    """The discount of the highest tier the commitment reaches (0 if none)."""
    hours = _at_least(commitment_hours, "commitment_hours")
    discount = _ZERO
    for tier in tiers:
        if hours >= tier.min_hours:
            discount = max(discount, tier.discount)
    return discount


def interruptible_ratio(curve: InterruptibleCurve, utilisation: Decimal) -> Decimal:
    """The interruptible price as a share of list at a pool utilisation (0..1)."""
    u = _share(utilisation, "utilisation")
    if u <= curve.low_utilisation:
        return curve.floor_ratio
    if u >= curve.high_utilisation:
        return curve.cap_ratio
    rise = (curve.cap_ratio - curve.floor_ratio) * (u - curve.low_utilisation)
    return curve.floor_ratio + rise / (curve.high_utilisation - curve.low_utilisation)


def green_discount(green: GreenDiscount | None, green_share: Decimal) -> Decimal:
    """The green-power discount for a site's green-electricity share (0..1)."""
    share = _share(green_share, "green_share")
    if green is None or share <= green.from_share:
        return _ZERO
    return green.max_discount * (share - green.from_share) / (_ONE - green.from_share)


def time_of_use_factor(tou: TimeOfUse | None, at: datetime) -> Decimal:
    """The factor in force at one instant (1 without time-of-use)."""
    _aware(at, "at")
    if tou is None:
        return _ONE
    return tou.peak_factor if at.astimezone(CST).hour in tou.peak_hours else tou.off_peak_factor


def _microseconds_since_epoch(moment: datetime) -> int:
    delta = moment - _EPOCH_CST
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _peak_microseconds_before(tou: TimeOfUse, moment: datetime) -> int:
    """Peak time from 1970-01-01 00:00 CST to ``moment`` (negative before it)."""
    days, into_day = divmod(_microseconds_since_epoch(moment), _DAY_US)
    whole_days = days * len(tou.peak_hours) * _HOUR_US
    return whole_days + sum(min(max(into_day - hour * _HOUR_US, 0), _HOUR_US) for hour in tou.peak_hours)


def _window(start: datetime, end: datetime) -> int:
    """Length of [start, end) in microseconds; start must come before end."""
    _aware(start, "start")
    _aware(end, "end")
    length = _microseconds_since_epoch(end) - _microseconds_since_epoch(start)
    if length <= 0:
        raise PricingError("the window must end after it starts.", field="end")
    return length


def peak_share(tou: TimeOfUse, start: datetime, end: datetime) -> Decimal:
    """The share of the window [start, end) that falls in peak hours (exact)."""
    length = _window(start, end)
    peak = _peak_microseconds_before(tou, end) - _peak_microseconds_before(tou, start)
    return Decimal(peak) / Decimal(length)


def window_time_of_use_factor(tou: TimeOfUse | None, start: datetime, end: datetime) -> Decimal:
    """The time-weighted factor over [start, end): usage is assumed spread evenly."""
    _window(start, end)
    if tou is None:
        return _ONE
    share = peak_share(tou, start, end)
    return share * tou.peak_factor + (_ONE - share) * tou.off_peak_factor


def volume_weighted_units(tiers: Iterable[VolumeTier], month_to_date_ncu_hours: Decimal, ncu_hours: Decimal) -> Decimal:
    """``ncu_hours`` bought after ``month_to_date_ncu_hours`` this month, each
    weighted by (1 − discount) of the tier it falls in (marginal tiers). The
    amount for the usage is the unit price times this; it is never more than
    ``ncu_hours`` and is exactly additive: w(m, a + b) = w(m, a) + w(m + a, b)."""
    start = _at_least(month_to_date_ncu_hours, "month_to_date_ncu_hours")
    units = _at_least(ncu_hours, "ncu_hours")
    end = start + units
    bounds = [(tier.from_ncu_hours, tier.discount) for tier in tiers]
    if not bounds or bounds[0][0] > 0:
        bounds.insert(0, (_ZERO, _ZERO))
    weighted = _ZERO
    for index, (low, discount) in enumerate(bounds):
        high = bounds[index + 1][0] if index + 1 < len(bounds) else None
        lo = max(low, start)
        hi = end if high is None else min(high, end)
        if hi > lo:
            weighted += (hi - lo) * (_ONE - discount)
    return weighted


def commission_rate_for(category: str, rates: Mapping[str, Decimal], *, default: Decimal | None = None) -> Decimal:
    """The platform commission rate (合作分成) for a provider category, from the
    caller's mapping; ``default`` when the category is not listed."""
    rate = rates.get(str(category), default)
    if rate is None:
        raise PricingError(f"no commission rate is configured for provider category {category!r}.", field="category")
    return _share(rate, "commission_rate")


def split_commission(gross: Decimal, commission_rate: Decimal) -> tuple[Decimal, Decimal]:
    """(commission, provider share) of a fen-exact gross charge. The commission
    is rounded to the fen once; the provider gets exactly the rest."""
    amount = _at_least(gross, "gross")
    if not is_fen_exact(amount):
        raise PricingError(f"a charge must be a whole number of fen, not {amount}.", field="gross")
    commission = to_fen(amount * _share(commission_rate, "commission_rate"))
    return commission, amount - commission


# --- unit price, quote, charge ---------------------------------------------------


def _applies_time_of_use(rules: PriceRules) -> bool:
    return rules.time_of_use is not None and rules.pricing_type is not PricingType.INTERRUPTIBLE


def _type_factor(rules: PriceRules, *, utilisation: Decimal | None, commitment_hours: Decimal) -> Decimal:
    if rules.pricing_type is PricingType.RESERVED:
        return _ONE - commitment_discount(rules.commitment_tiers, commitment_hours)
    if rules.pricing_type is PricingType.INTERRUPTIBLE:
        if utilisation is None:
            raise PricingError("an interruptible price needs the pool's utilisation.", field="utilisation")
        return interruptible_ratio(rules.interruptible, utilisation)
    return _ONE


def unit_price(
    rules: PriceRules,
    *,
    at: datetime,
    utilisation: Decimal | None = None,
    green_share: Decimal = _ZERO,
    commitment_hours: Decimal = _ZERO,
) -> Decimal:
    """The price of one NCU-hour at the instant ``at`` after the pricing type,
    time of use and green discount, before volume tiers. **Unrounded**: display
    it with care; quotes and charges use the locked, rounded price instead.
    ``utilisation`` (0..1) is required for interruptible rules."""
    factor = _type_factor(rules, utilisation=utilisation, commitment_hours=commitment_hours)
    tou = time_of_use_factor(rules.time_of_use if _applies_time_of_use(rules) else None, at)
    return rules.list_price * factor * tou * (_ONE - green_discount(rules.green, green_share))


@dataclass(frozen=True, slots=True)
class LockedPrice:
    """What the lease locks: the unit price after all non-volume adjustments
    (rounded to ``PRICE_PLACES``), the pricing type, the commission rate, the
    volume tiers and the buyer's month-to-date NCU-hours when it was made."""

    pricing_type: PricingType
    unit_price: Decimal
    commission_rate: Decimal
    volume_tiers: tuple[VolumeTier, ...] = ()
    month_to_date_ncu_hours: Decimal = _ZERO
    currency: str = CNY

    def __post_init__(self) -> None:
        price = _at_least(self.unit_price, "unit_price")
        if price != lock_price(price):
            raise PricingError(f"a locked unit price has at most ten decimal places, not {price}.", field="unit_price")
        _set(self, "pricing_type", _pricing_type(self.pricing_type))
        _set(self, "unit_price", price)
        _set(self, "commission_rate", _share(self.commission_rate, "commission_rate"))
        _set(self, "volume_tiers", _volume_tiers(self.volume_tiers))
        _set(self, "month_to_date_ncu_hours", _at_least(self.month_to_date_ncu_hours, "month_to_date_ncu_hours"))


@dataclass(frozen=True, slots=True)
class EnergyInputs:
    """What the energy estimate needs: devices drawing ``device_power_watts``
    each at a site with ``pue``, on a grid emitting ``grid_factor_kg_per_kwh``."""

    device_power_watts: Decimal
    device_count: int
    pue: Decimal
    grid_factor_kg_per_kwh: Decimal

    def __post_init__(self) -> None:
        _set(self, "device_power_watts", _at_least(self.device_power_watts, "device_power_watts"))
        if isinstance(self.device_count, bool) or not isinstance(self.device_count, int) or self.device_count < 0:
            raise PricingError("device_count must be a whole number of at least 0.", field="device_count")
        _set(self, "pue", _at_least(self.pue, "pue", _ONE))
        _set(self, "grid_factor_kg_per_kwh", _at_least(self.grid_factor_kg_per_kwh, "grid_factor_kg_per_kwh"))


def estimate_energy(energy: EnergyInputs, *, hours: Decimal, green_share: Decimal) -> tuple[Decimal, Decimal]:
    """(energy kWh, carbon kg): power × devices × hours × PUE, and energy ×
    grid factor × (1 − green share), each rounded to ``ENERGY_PLACES``."""
    duration = _at_least(hours, "hours")
    share = _share(green_share, "green_share")
    kwh = energy.device_power_watts * energy.device_count * duration * energy.pue / 1000
    carbon = kwh * energy.grid_factor_kg_per_kwh * (_ONE - share)
    return (
        kwh.quantize(ENERGY_PLACES, rounding=ROUND_HALF_UP),
        carbon.quantize(ENERGY_PLACES, rounding=ROUND_HALF_UP),
    )


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """A signed adjustment: negative lowers the price, positive is a surcharge."""

    kind: AdjustmentKind
    amount: Money


@dataclass(frozen=True, slots=True)
class Quote:
    """A priced estimate. ``subtotal == base + sum(adjustments)`` exactly, and
    ``commission + provider_share == subtotal`` exactly; all amounts fen-exact."""

    pricing_type: PricingType
    ncu_hours: Decimal
    start: datetime
    end: datetime
    list_price: Decimal
    base: Money
    adjustments: tuple[QuoteLine, ...]
    subtotal: Money
    commission_rate: Decimal
    commission: Money
    provider_share: Money
    locked: LockedPrice
    energy_kwh: Decimal | None = None
    carbon_kg: Decimal | None = None
    voucher_subsidy: Money = field(default_factory=Money.zero)

    def __post_init__(self) -> None:
        subsidy = self.voucher_subsidy
        if not subsidy.is_fen_exact or subsidy < Money.zero(subsidy.currency) or subsidy > self.subtotal:
            raise PricingError(
                f"a voucher subsidy must be whole fen between 0 and the subtotal {self.subtotal}, not {subsidy}.",
                field="voucher_subsidy",
            )

    @property
    def buyer_pays(self) -> Money:
        return self.subtotal - self.voucher_subsidy

    @property
    def unit_price(self) -> Decimal:
        """The locked unit price, before volume tiers."""
        return self.locked.unit_price

    def adjustment(self, kind: AdjustmentKind) -> Money:
        """The amount of one breakdown line (zero if the quote has no such line)."""
        for line in self.adjustments:
            if line.kind is kind:
                return line.amount
        return Money.zero(self.base.currency)

    def with_voucher_subsidy(self, subsidy: Money) -> Quote:
        return dataclasses.replace(self, voucher_subsidy=subsidy)


def _volume_amount(price: Decimal, tiers: tuple[VolumeTier, ...], position: Decimal, ncu_hours: Decimal) -> Decimal:
    """The fen-rounded amount for ``ncu_hours`` at a locked price from a month position."""
    return to_fen(price * volume_weighted_units(tiers, position, ncu_hours))


def quote(
    rules: PriceRules,
    *,
    ncu_hours: Decimal,
    start: datetime,
    end: datetime,
    commission_rate: Decimal,
    utilisation: Decimal | None = None,
    green_share: Decimal = _ZERO,
    commitment_hours: Decimal | None = None,
    month_to_date_ncu_hours: Decimal = _ZERO,
    energy: EnergyInputs | None = None,
) -> Quote:
    """Price an estimated ``ncu_hours`` spread evenly over the window [start, end).

    ``commitment_hours`` (reserved rules) defaults to the window's length;
    ``utilisation`` is required for interruptible rules; ``commission_rate``
    comes from :func:`commission_rate_for`. Energy and carbon are estimated
    when ``energy`` is given (None otherwise)."""
    units = _at_least(ncu_hours, "ncu_hours")
    hours = Decimal(_window(start, end)) / _HOUR_US
    share = _share(green_share, "green_share")
    rate = _share(commission_rate, "commission_rate")
    position = _at_least(month_to_date_ncu_hours, "month_to_date_ncu_hours")
    commitment = hours if commitment_hours is None else commitment_hours
    tou = rules.time_of_use if _applies_time_of_use(rules) else None

    typed = lock_price(rules.list_price * _type_factor(rules, utilisation=utilisation, commitment_hours=commitment))
    timed = lock_price(typed * window_time_of_use_factor(tou, start, end))
    locked_price = lock_price(timed * (_ONE - green_discount(rules.green, share)))

    steps: list[tuple[AdjustmentKind | None, Decimal]] = [(None, to_fen(rules.list_price * units))]
    if rules.pricing_type is PricingType.RESERVED:
        steps.append((AdjustmentKind.RESERVED, to_fen(typed * units)))
    elif rules.pricing_type is PricingType.INTERRUPTIBLE:
        steps.append((AdjustmentKind.INTERRUPTIBLE, to_fen(typed * units)))
    if tou is not None:
        steps.append((AdjustmentKind.TIME_OF_USE, to_fen(timed * units)))
    if rules.green is not None:
        steps.append((AdjustmentKind.GREEN, to_fen(locked_price * units)))
    if rules.volume_tiers:
        steps.append((AdjustmentKind.VOLUME, _volume_amount(locked_price, rules.volume_tiers, position, units)))

    lines = tuple(
        QuoteLine(kind, Money(amount - previous))
        for (_, previous), (kind, amount) in pairwise(steps)
        if kind is not None
    )
    subtotal = steps[-1][1]
    commission, provider_share = split_commission(subtotal, rate)
    energy_kwh = carbon_kg = None
    if energy is not None:
        energy_kwh, carbon_kg = estimate_energy(energy, hours=hours, green_share=share)
    return Quote(
        pricing_type=rules.pricing_type,
        ncu_hours=units,
        start=start,
        end=end,
        list_price=rules.list_price,
        base=Money(steps[0][1]),
        adjustments=lines,
        subtotal=Money(subtotal),
        commission_rate=rate,
        commission=Money(commission),
        provider_share=Money(provider_share),
        locked=LockedPrice(
            pricing_type=rules.pricing_type,
            unit_price=locked_price,
            commission_rate=rate,
            volume_tiers=rules.volume_tiers,
            month_to_date_ncu_hours=position,
        ),
        energy_kwh=energy_kwh,
        carbon_kg=carbon_kg,
    )


@dataclass(frozen=True, slots=True)
class Charge:
    """A metered charge in fen-exact CNY: ``commission + provider_share == gross``."""

    pricing_type: PricingType
    ncu_hours: Decimal
    unit_price: Decimal
    gross: Decimal
    commission_rate: Decimal
    commission: Decimal
    provider_share: Decimal
    currency: str = CNY


def charge(
    locked: LockedPrice,
    ncu_hours: Decimal,
    *,
    month_to_date_ncu_hours: Decimal,
    lease_ncu_hours_before: Decimal = _ZERO,
) -> Charge:
    """The charge for a usage sample of ``ncu_hours`` on a lease.

    ``month_to_date_ncu_hours`` is what the buyer bought this month before this
    sample (all leases); ``lease_ncu_hours_before`` is what this lease metered
    before it. The gross is the lesser of the sample's share of the lease's
    locked running total and its price at the buyer's current volume position
    (see the module docstring), so the lease never costs more than its quote
    for the same usage. Never negative."""
    units = _at_least(ncu_hours, "ncu_hours")
    before = _at_least(lease_ncu_hours_before, "lease_ncu_hours_before")
    position = _at_least(month_to_date_ncu_hours, "month_to_date_ncu_hours")
    price, tiers, locked_position = locked.unit_price, locked.volume_tiers, locked.month_to_date_ncu_hours
    by_lock = _volume_amount(price, tiers, locked_position, before + units) - _volume_amount(
        price, tiers, locked_position, before
    )
    at_current_volume = _volume_amount(price, tiers, position, units)
    gross = min(by_lock, at_current_volume)
    commission, provider_share = split_commission(gross, locked.commission_rate)
    return Charge(
        pricing_type=locked.pricing_type,
        ncu_hours=units,
        unit_price=price,
        gross=gross,
        commission_rate=locked.commission_rate,
        commission=commission,
        provider_share=provider_share,
        currency=locked.currency,
    )
