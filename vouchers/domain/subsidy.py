"""Compute voucher (算力券) arithmetic: who may hold a programme's vouchers,
the automatic checks on an application, and which vouchers pay how much of
a charge. Frozen dataclasses in, answers out; no Django.

**A programme's rules** (:class:`ProgrammeRules`) are data: subsidy ratios by
compute class and domestic/non-domestic device, with a higher ratio for
holders carrying the programme's flag (such as start-ups); a per-organisation
yearly cap and a per-charge cap; eligible applicant categories and places of
registration; eligible providers (a partner list), sites and hubs, and
compute classes; an application window; and a stacking group with the
combined maximum ratio of the programmes in it.

**Which vouchers pay** (:func:`decide`, the one function that decides it):

1. A voucher is considered only if it is valid at the charge's time, has a
   balance, and its programme pays for this charge: the provider is on the
   partner list (if the programme has one), the site or its hub is named (if
   the programme names any), the compute class is eligible, a ratio rule
   matches, and buyer and provider are not the same or related organisations
   (no self-dealing: same credit code or a declared relation). Every voucher
   left out is reported with the reason.
2. Vouchers are taken **earliest expiry first** (ties: lower id first).
3. Programmes combine on one charge only when they share a stacking group;
   a programme without one does not combine with any other ("no other
   subsidy on the same spend"). The first voucher that pays decides; a later
   voucher of an incompatible programme is left out with the reason.
4. A voucher pays the least of: its balance; its programme's ratio × the
   charge less what that programme already paid on this charge; its
   programme's per-charge cap left; its programme's yearly cap for the buyer
   left; and the group's combined maximum ratio × the charge less everything
   paid on this charge so far. The combined maximum is the smallest of the
   combined maxima of the programmes paying (never above 100%).

**Rounding.** ratio × charge is rounded *down* to the fen (:func:`floor_fen`,
the only rounding point here), so a subsidy never exceeds its ratio; every
other amount is already whole fen. The buyer pays the charge less the
subsidies, exactly: ``buyer_share + sum(subsidies) == gross``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from billing.domain.money import FEN, Money, as_decimal, is_fen_exact
from core.errors import InvalidInput

ZERO = Decimal("0.00")
ONE = Decimal(1)


class SubsidyError(InvalidInput):
    code = "voucher_rules_invalid"


def floor_fen(value: Decimal) -> Decimal:
    """The rounding point of subsidy arithmetic: down to the fen, so that a
    subsidy of ratio r never pays more than r × the charge."""
    return as_decimal(value, "value").quantize(FEN, rounding=ROUND_DOWN)


def _ratio(value: object, name: str) -> Decimal:
    try:
        number = as_decimal(value, name)
    except (TypeError, ValueError) as error:
        raise SubsidyError(str(error), field=name) from None
    if number < 0 or number > 1:
        raise SubsidyError(f"{name} must be between 0 and 1, not {number}.", field=name)
    return number


def _money(value: object, name: str, *, positive: bool = False) -> Decimal:
    try:
        number = as_decimal(value, name)
    except (TypeError, ValueError) as error:
        raise SubsidyError(str(error), field=name) from None
    if number < 0 or (positive and number == 0) or not is_fen_exact(number):
        what = "a positive" if positive else "a non-negative"
        raise SubsidyError(f"{name} must be {what} amount in whole fen, not {number}.", field=name)
    return number


def _set(instance: object, name: str, value: object) -> None:
    object.__setattr__(instance, name, value)


def yuan(amount: Decimal) -> str:
    """An amount as people write it: ¥8,000,000 or ¥1,234.50."""
    value = as_decimal(amount, "amount")
    return f"¥{value:,.0f}" if value == value.to_integral_value() else f"¥{value:,.2f}"


def percent(ratio: Decimal) -> str:
    return f"{(ratio * 100).normalize():f}%"


# --- rules ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatioRule:
    """The share of a charge a programme pays when the charge's compute class
    is ``compute_class`` (None: any class) and its device is domestic or not
    (``domestic`` None: either). Holders with the programme's flag get
    ``flagged_ratio`` instead (None: the same ``ratio``)."""

    ratio: Decimal
    compute_class: str | None = None
    domestic: bool | None = None
    flagged_ratio: Decimal | None = None

    def __post_init__(self) -> None:
        _set(self, "ratio", _ratio(self.ratio, "ratio"))
        if self.flagged_ratio is not None:
            _set(self, "flagged_ratio", _ratio(self.flagged_ratio, "flagged_ratio"))

    def matches(self, *, compute_class: str, domestic: bool) -> bool:
        return (self.compute_class is None or self.compute_class == compute_class) and (
            self.domestic is None or self.domestic == domestic
        )

    def ratio_for(self, flagged: bool) -> Decimal:
        return self.flagged_ratio if flagged and self.flagged_ratio is not None else self.ratio


@dataclass(frozen=True, slots=True)
class ProgrammeRules:
    """A voucher programme's rules. Empty sets mean "no restriction" (any
    category, anywhere, any provider, site, hub or class)."""

    programme_id: int
    name: str
    ratio_rules: tuple[RatioRule, ...]
    flag: str = ""
    per_org_yearly_cap: Decimal | None = None
    per_charge_cap: Decimal | None = None
    eligible_categories: frozenset[str] = frozenset()
    sme_only: bool = False
    registration_cities: frozenset[str] = frozenset()
    registration_regions: frozenset[str] = frozenset()
    eligible_providers: frozenset[int] = frozenset()
    eligible_sites: frozenset[int] = frozenset()
    eligible_hubs: frozenset[str] = frozenset()
    eligible_classes: frozenset[str] = frozenset()
    application_opens: datetime | None = None
    application_closes: datetime | None = None
    stacking_group: str = ""
    combined_max_ratio: Decimal = ONE

    def __post_init__(self) -> None:
        rules = tuple(self.ratio_rules)
        if not rules:
            raise SubsidyError("A programme needs at least one ratio rule.", field="ratio_rules")
        _set(self, "ratio_rules", rules)
        for name in ("per_org_yearly_cap", "per_charge_cap"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _money(value, name, positive=True))
        _set(self, "combined_max_ratio", _ratio(self.combined_max_ratio, "combined_max_ratio"))
        for name in (
            "eligible_categories",
            "registration_cities",
            "registration_regions",
            "eligible_providers",
            "eligible_sites",
            "eligible_hubs",
            "eligible_classes",
        ):
            _set(self, name, frozenset(getattr(self, name)))
        opens, closes = self.application_opens, self.application_closes
        if opens is not None and closes is not None and closes <= opens:
            raise SubsidyError("The application window must close after it opens.", field="application_closes")

    def ratio_for(self, *, compute_class: str, domestic: bool, flags: Iterable[str] = ()) -> Decimal:
        """The share this programme pays of a charge (0 if no rule matches or
        the class is not eligible). The first matching rule wins."""
        if self.eligible_classes and compute_class not in self.eligible_classes:
            return ZERO
        flagged = bool(self.flag) and self.flag in set(flags)
        for rule in self.ratio_rules:
            if rule.matches(compute_class=compute_class, domestic=domestic):
                return rule.ratio_for(flagged)
        return ZERO

    @property
    def max_ratio(self) -> Decimal:
        return max(max(r.ratio, r.flagged_ratio or ZERO) for r in self.ratio_rules)

    def combines_with(self, other: ProgrammeRules) -> bool:
        return self.programme_id == other.programme_id or (
            bool(self.stacking_group) and self.stacking_group == other.stacking_group
        )


def ratio_rules_from_data(items: Iterable[Mapping[str, Any]]) -> tuple[RatioRule, ...]:
    """Ratio rules from their stored form: ``{"ratio": "0.30", "compute_class":
    "intelligent" | null, "domestic": true | false | null, "flagged_ratio": "0.60" | null}``."""
    rules = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or "ratio" not in item:
            raise SubsidyError(f"Ratio rule {index + 1} needs a ratio.", field="ratio_rules")
        unknown = set(item) - {"ratio", "compute_class", "domestic", "flagged_ratio"}
        if unknown:
            raise SubsidyError(f"Ratio rule {index + 1} has unknown keys {sorted(unknown)}.", field="ratio_rules")
        domestic = item.get("domestic")
        if domestic is not None and not isinstance(domestic, bool):
            raise SubsidyError(f"Ratio rule {index + 1}: domestic is true, false or null.", field="ratio_rules")
        flagged = item.get("flagged_ratio")
        rules.append(
            RatioRule(
                ratio=_ratio(str(item["ratio"]), "ratio"),
                compute_class=item.get("compute_class") or None,
                domestic=domestic,
                flagged_ratio=None if flagged is None else _ratio(str(flagged), "flagged_ratio"),
            )
        )
    return tuple(rules)


def rules_from_data(
    programme_id: int,
    data: Mapping[str, Any],
    *,
    providers: Iterable[int] = (),
    sites: Iterable[int] = (),
) -> ProgrammeRules:
    """A programme's rules from its stored fields (the model's columns or the
    demo data), with the partner providers' and named sites' ids."""

    def amount(name: str) -> Decimal | None:
        value = data.get(name)
        return None if value in (None, "") else _money(str(value), name, positive=True)

    return ProgrammeRules(
        programme_id=programme_id,
        name=str(data["name"]),
        ratio_rules=ratio_rules_from_data(data.get("ratio_rules") or ()),
        flag=str(data.get("flag") or ""),
        per_org_yearly_cap=amount("per_org_yearly_cap"),
        per_charge_cap=amount("per_charge_cap"),
        eligible_categories=frozenset(data.get("eligible_categories") or ()),
        sme_only=bool(data.get("sme_only", False)),
        registration_cities=frozenset(data.get("registration_cities") or ()),
        registration_regions=frozenset(data.get("registration_regions") or ()),
        eligible_providers=frozenset(providers),
        eligible_sites=frozenset(sites),
        eligible_hubs=frozenset(data.get("eligible_hubs") or ()),
        eligible_classes=frozenset(data.get("eligible_classes") or ()),
        application_opens=data.get("application_opens"),
        application_closes=data.get("application_closes"),
        stacking_group=str(data.get("stacking_group") or ""),
        combined_max_ratio=_ratio(str(data.get("combined_max_ratio", "1")), "combined_max_ratio"),
    )


# --- applicants -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applicant:
    """What eligibility needs to know about an organisation."""

    organisation_id: int
    category: str
    is_sme: bool
    city: str
    region: str
    credit_code_valid: bool = True
    flags: frozenset[str] = frozenset()


CATEGORY_NAMES = {
    "enterprise": "enterprises",
    "university": "universities",
    "research_institute": "research institutes",
    "medical_institution": "medical institutions",
    "government": "government bodies",
    "provider": "providers",
}


def _category_phrase(rules: ProgrammeRules) -> str:
    if not rules.eligible_categories:
        return "every buyer organisation" + (" (enterprises only if SMEs)" if rules.sme_only else "")
    names = []
    for category in sorted(rules.eligible_categories):
        if category == "enterprise" and rules.sme_only:
            names.append("small and medium-sized enterprises")
        else:
            names.append(CATEGORY_NAMES.get(category, category))
    return ", ".join(names)


def _window_reason(rules: ProgrammeRules, at: datetime) -> str | None:
    if rules.application_opens is not None and at < rules.application_opens:
        return f"{rules.name} opens for applications on {rules.application_opens:%Y-%m-%d}."
    if rules.application_closes is not None and at >= rules.application_closes:
        return f"{rules.name} closed for applications on {rules.application_closes:%Y-%m-%d}."
    return None


def _category_reason(rules: ProgrammeRules, applicant: Applicant) -> str | None:
    if rules.eligible_categories and applicant.category not in rules.eligible_categories:
        kind = CATEGORY_NAMES.get(applicant.category, applicant.category)
        return f"{rules.name} is open to {_category_phrase(rules)}, not {kind}."
    if rules.sme_only and applicant.category == "enterprise" and not applicant.is_sme:
        return f"{rules.name} is open to small and medium-sized enterprises only; yours is not registered as one."
    return None


def _region_reason(rules: ProgrammeRules, applicant: Applicant) -> str | None:
    if not rules.registration_cities and not rules.registration_regions:
        return None
    if applicant.city in rules.registration_cities or applicant.region in rules.registration_regions:
        return None
    places = sorted(rules.registration_cities) + sorted(rules.registration_regions)
    return f"{rules.name} is for organisations registered in {' or '.join(places)}; yours is in {applicant.city}."


def eligible(rules: ProgrammeRules, applicant: Applicant, *, at: datetime) -> tuple[str, ...]:
    """Why ``applicant`` may not apply to the programme at ``at``: an empty
    tuple when it may. Every reason is a sentence to show the applicant."""
    reasons = []
    if applicant.category == "provider":
        reasons.append("Providers sell compute; vouchers are for buyers of compute.")
    else:
        category = _category_reason(rules, applicant)
        if category:
            reasons.append(category)
    region = _region_reason(rules, applicant)
    if region:
        reasons.append(region)
    if not applicant.credit_code_valid:
        reasons.append("Your organisation's Unified Social Credit Code does not pass its check character.")
    window = _window_reason(rules, at)
    if window:
        reasons.append(window)
    return tuple(reasons)


def describe(rules: ProgrammeRules) -> tuple[str, ...]:
    """The programme's eligibility and terms in plain language, one sentence each."""
    lines = []
    ratios = []
    for rule in rules.ratio_rules:
        scope = []
        if rule.domestic is True:
            scope.append("domestic-chip")
        elif rule.domestic is False:
            scope.append("non-domestic")
        if rule.compute_class:
            scope.append(rule.compute_class)
        what = " ".join(scope) + " compute" if scope else "other compute" if ratios else "compute"
        text = f"{percent(rule.ratio)} of charges on {what}"
        if rule.flagged_ratio is not None and rules.flag:
            text += f" ({percent(rule.flagged_ratio)} for {rules.flag.replace('_', '-')}s)"
        ratios.append(text)
    lines.append("Pays " + "; ".join(ratios) + ".")
    if rules.eligible_classes:
        lines.append(f"Only {', '.join(sorted(rules.eligible_classes))} compute is eligible.")
    if rules.per_org_yearly_cap is not None:
        lines.append(f"At most {yuan(rules.per_org_yearly_cap)} per organisation per year.")
    if rules.per_charge_cap is not None:
        lines.append(f"At most {yuan(rules.per_charge_cap)} on any one charge.")
    lines.append(f"Open to {_category_phrase(rules)}.")
    if rules.registration_cities or rules.registration_regions:
        places = sorted(rules.registration_cities) + sorted(rules.registration_regions)
        lines.append(f"The applicant must be registered in {' or '.join(places)}.")
    if rules.eligible_providers:
        lines.append(f"Only compute from the programme's {len(rules.eligible_providers)} partner providers counts.")
    if rules.eligible_sites or rules.eligible_hubs:
        named = []
        if rules.eligible_sites:
            named.append(f"{len(rules.eligible_sites)} named computing centres")
        if rules.eligible_hubs:
            named.append("the hubs " + ", ".join(sorted(rules.eligible_hubs)))
        lines.append("Only compute at " + " or ".join(named) + " counts.")
    lines.append("Buyer and provider must be unrelated parties (非关联方).")
    if rules.stacking_group:
        lines.append(
            f"Combines with other programmes of the group {rules.stacking_group!r}, together at most "
            f"{percent(rules.combined_max_ratio)} of a charge."
        )
    else:
        lines.append("Does not combine with any other subsidy on the same spend.")
    return tuple(lines)


# --- application checks --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One automatic check on an application. A failed ``hard`` check rejects
    the application at once; a failed soft one is for the reviewer."""

    name: str
    passed: bool
    hard: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "hard": self.hard, "detail": self.detail}


def application_checks(
    rules: ProgrammeRules,
    applicant: Applicant,
    *,
    requested: Decimal,
    granted_this_year: Decimal,
    has_open_application: bool,
    budget_available: Decimal,
    at: datetime,
) -> tuple[Check, ...]:
    """The automatic checks, in the order shown to applicant and reviewer."""
    requested = _money(requested, "requested", positive=True)
    window = _window_reason(rules, at)
    category = (
        "Providers sell compute; vouchers are for buyers of compute."
        if applicant.category == "provider"
        else _category_reason(rules, applicant)
    )
    region = _region_reason(rules, applicant)
    checks = [
        Check("window", window is None, True, window or "The programme is open for applications."),
        Check("category", category is None, True, category or f"Open to {_category_phrase(rules)}."),
        Check("region", region is None, True, region or "Registered in an eligible place."),
        Check(
            "credit_code",
            applicant.credit_code_valid,
            True,
            "The Unified Social Credit Code's check character is valid."
            if applicant.credit_code_valid
            else "The Unified Social Credit Code does not pass its check character.",
        ),
        Check(
            "not_provider",
            applicant.category != "provider",
            True,
            "The applicant is not a provider."
            if applicant.category != "provider"
            else "The applicant is a provider; vouchers are for buyers.",
        ),
        Check(
            "no_duplicate",
            not has_open_application,
            True,
            "An application to this programme is already under review."
            if has_open_application
            else "No other application to this programme is under review.",
        ),
    ]
    if rules.per_org_yearly_cap is None:
        checks.append(Check("yearly_cap", True, False, "The programme has no per-organisation cap."))
    else:
        left = max(rules.per_org_yearly_cap - granted_this_year, ZERO)
        if left <= 0:
            checks.append(
                Check(
                    "yearly_cap",
                    False,
                    True,
                    f"This year's cap of {yuan(rules.per_org_yearly_cap)} is used up "
                    f"({yuan(granted_this_year)} granted).",
                )
            )
        elif requested > left:
            checks.append(
                Check(
                    "yearly_cap",
                    False,
                    False,
                    f"{yuan(requested)} is more than the {yuan(left)} left of this year's cap; "
                    f"the reviewer may grant at most {yuan(left)}.",
                )
            )
        else:
            checks.append(Check("yearly_cap", True, False, f"Within this year's cap ({yuan(left)} left)."))
    if budget_available <= 0:
        checks.append(Check("budget", False, True, "The programme's budget is fully committed."))
    elif requested > budget_available:
        checks.append(
            Check(
                "budget",
                False,
                False,
                f"Only {yuan(budget_available)} of the budget is left; the reviewer may grant at most that.",
            )
        )
    else:
        checks.append(Check("budget", True, False, f"{yuan(budget_available)} of the budget is left."))
    return tuple(checks)


def hard_failures(checks: Iterable[Check]) -> tuple[Check, ...]:
    return tuple(c for c in checks if c.hard and not c.passed)


def grantable(
    rules: ProgrammeRules, *, requested: Decimal, granted_this_year: Decimal, budget_available: Decimal
) -> Decimal:
    """The most a reviewer may grant: the request, within the yearly cap left and the budget left."""
    most = min(requested, max(budget_available, ZERO))
    if rules.per_org_yearly_cap is not None:
        most = min(most, max(rules.per_org_yearly_cap - granted_this_year, ZERO))
    return most


# --- which vouchers pay a charge ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoucherState:
    """A voucher as the decision sees it: its programme, balance and validity
    [valid_from, expires_at), and the flags its holder was granted (e.g. start-up)."""

    voucher_id: int
    programme_id: int
    balance: Decimal
    valid_from: datetime
    expires_at: datetime
    flags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _set(self, "balance", _money(self.balance, "balance"))
        _set(self, "flags", frozenset(self.flags))


@dataclass(frozen=True, slots=True)
class ChargeFacts:
    """A charge as the decision sees it. ``related_parties``: buyer and
    provider are the same organisation, share a credit code or have a declared
    relation. ``yearly_used``: per programme, what its vouchers already paid
    for this buyer this year."""

    gross: Decimal
    compute_class: str
    domestic: bool
    provider_id: int
    site_id: int
    hub: str
    at: datetime
    related_parties: bool = False
    yearly_used: Mapping[int, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _set(self, "gross", _money(self.gross, "gross"))


@dataclass(frozen=True, slots=True)
class Subsidy:
    voucher_id: int
    programme_id: int
    amount: Decimal
    ratio: Decimal


@dataclass(frozen=True, slots=True)
class Skipped:
    voucher_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class SubsidyDecision:
    """Which vouchers pay how much of ``gross``; the buyer pays the rest."""

    gross: Decimal
    subsidies: tuple[Subsidy, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    @property
    def total(self) -> Decimal:
        return sum((s.amount for s in self.subsidies), ZERO)

    @property
    def buyer_share(self) -> Decimal:
        return self.gross - self.total

    def by_programme(self) -> dict[int, Decimal]:
        totals: dict[int, Decimal] = {}
        for s in self.subsidies:
            totals[s.programme_id] = totals.get(s.programme_id, ZERO) + s.amount
        return totals

    @property
    def money(self) -> Money:
        return Money(self.total)


def charge_ineligibility(rules: ProgrammeRules, charge: ChargeFacts, *, flags: Iterable[str] = ()) -> str | None:
    """Why the programme pays nothing of this charge (None: it pays its ratio)."""
    if charge.related_parties:
        return "Buyer and provider are the same or related organisations; vouchers never pay for self-dealing."
    if rules.eligible_providers and charge.provider_id not in rules.eligible_providers:
        return f"The provider is not on {rules.name}'s partner list."
    if (rules.eligible_sites or rules.eligible_hubs) and not (
        charge.site_id in rules.eligible_sites or charge.hub in rules.eligible_hubs
    ):
        return f"The compute runs at a centre {rules.name} does not name."
    if rules.eligible_classes and charge.compute_class not in rules.eligible_classes:
        classes = ", ".join(sorted(rules.eligible_classes))
        return f"{rules.name} pays only for {classes} compute, not {charge.compute_class}."
    if rules.ratio_for(compute_class=charge.compute_class, domestic=charge.domestic, flags=flags) <= 0:
        return f"{rules.name} pays nothing on this kind of compute."
    return None


def decide(
    charge: ChargeFacts, vouchers: Sequence[VoucherState], programmes: Mapping[int, ProgrammeRules]
) -> SubsidyDecision:
    """Which vouchers pay how much of ``charge`` (see the module docstring for
    the rules). Fen-exact; ``buyer_share + total == gross``."""
    gross = charge.gross
    subsidies: list[Subsidy] = []
    skipped: list[Skipped] = []
    paying: list[ProgrammeRules] = []
    paid_by: dict[int, Decimal] = {}
    total = ZERO
    for voucher in sorted(vouchers, key=lambda v: (v.expires_at, v.voucher_id)):
        rules = programmes.get(voucher.programme_id)
        if rules is None:
            skipped.append(Skipped(voucher.voucher_id, "The voucher's programme is not known."))
            continue
        reason = _voucher_reason(voucher, rules, charge, paying)
        if reason is None:
            ratio = rules.ratio_for(compute_class=charge.compute_class, domestic=charge.domestic, flags=voucher.flags)
            already = paid_by.get(rules.programme_id, ZERO)
            amount, reason = _amount(voucher, rules, charge, ratio, already, total, paying)
            if amount > 0:
                subsidies.append(Subsidy(voucher.voucher_id, rules.programme_id, amount, ratio))
                paid_by[rules.programme_id] = paid_by.get(rules.programme_id, ZERO) + amount
                total += amount
                if all(p.programme_id != rules.programme_id for p in paying):
                    paying.append(rules)
                continue
        skipped.append(Skipped(voucher.voucher_id, reason or "The voucher pays nothing of this charge."))
    return SubsidyDecision(gross=gross, subsidies=tuple(subsidies), skipped=tuple(skipped))


def _voucher_reason(
    voucher: VoucherState, rules: ProgrammeRules, charge: ChargeFacts, paying: list[ProgrammeRules]
) -> str | None:
    if charge.gross <= 0:
        return "Nothing to pay."
    if charge.at < voucher.valid_from:
        return "The voucher is not valid yet."
    if charge.at >= voucher.expires_at:
        return "The voucher has expired."
    if voucher.balance <= 0:
        return "The voucher is used up."
    reason = charge_ineligibility(rules, charge, flags=voucher.flags)
    if reason:
        return reason
    for other in paying:
        if not rules.combines_with(other):
            return f"{rules.name} does not combine with {other.name}, which already pays on this charge."
    return None


def _amount(
    voucher: VoucherState,
    rules: ProgrammeRules,
    charge: ChargeFacts,
    ratio: Decimal,
    paid_by_programme: Decimal,
    paid_in_total: Decimal,
    paying: list[ProgrammeRules],
) -> tuple[Decimal, str | None]:
    """What the voucher pays and, if nothing, which limit stops it."""
    gross = charge.gross
    combined = min([ONE, rules.combined_max_ratio, *(p.combined_max_ratio for p in paying)])
    limits = [
        (voucher.balance, "The voucher is used up."),
        (floor_fen(ratio * gross) - paid_by_programme, f"{rules.name} already pays its share of this charge."),
        (floor_fen(combined * gross) - paid_in_total, "The programmes together already pay their combined maximum."),
    ]
    if rules.per_charge_cap is not None:
        limits.append((rules.per_charge_cap - paid_by_programme, f"{rules.name}'s per-charge cap is reached."))
    if rules.per_org_yearly_cap is not None:
        used = charge.yearly_used.get(rules.programme_id, ZERO) + paid_by_programme
        limits.append((rules.per_org_yearly_cap - used, f"This year's cap of {rules.name} is reached."))
    amount, reason = min(limits, key=lambda limit: limit[0])
    return (amount, None) if amount > 0 else (ZERO, reason)


# --- refunds ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundSplit:
    """How a refund of part of a charge is unwound, fen-exact: what the
    provider and the platform give back (``provider_share + commission ==
    amount``), and where it goes: each voucher's share back to that voucher,
    the rest to the buyer (``sum(to_vouchers) + to_buyer == amount``)."""

    amount: Decimal
    provider_share: Decimal
    commission: Decimal
    to_vouchers: tuple[tuple[int, Decimal], ...]
    to_buyer: Decimal


def refund_split(
    *,
    amount: Decimal,
    gross: Decimal,
    commission: Decimal,
    refundable_by_voucher: Sequence[tuple[int, Decimal]],
    refundable_by_buyer: Decimal,
) -> RefundSplit:
    """Split a refund of ``amount`` of a charge of ``gross`` (with its
    ``commission``) in proportion: the provider and the platform give back
    their shares of it, and it returns to the vouchers and the buyer in
    proportion to what each paid and has not had back yet (largest remainder,
    so the parts add up exactly). A voucher's share never goes to the buyer."""
    amount = _money(amount, "amount", positive=True)
    refundable = sum((a for _, a in refundable_by_voucher), ZERO) + refundable_by_buyer
    if amount > refundable:
        raise SubsidyError(
            f"At most {yuan(refundable)} of this charge can still be refunded, not {yuan(amount)}.", field="amount"
        )
    if gross > 0:
        commission_back, provider_back = Money(amount).allocate([commission, gross - commission])
    else:
        commission_back, provider_back = Money(ZERO), Money(amount)
    weights = [a for _, a in refundable_by_voucher] + [refundable_by_buyer]
    parts = Money(amount).allocate(weights)
    return RefundSplit(
        amount=amount,
        provider_share=provider_back.amount,
        commission=commission_back.amount,
        to_vouchers=tuple((vid, part.amount) for (vid, _), part in zip(refundable_by_voucher, parts, strict=False)),
        to_buyer=parts[-1].amount,
    )
