"""Which vouchers pay how much of a charge: properties and the rules behind them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vouchers.domain.subsidy import (
    Applicant,
    ChargeFacts,
    ProgrammeRules,
    RatioRule,
    SubsidyError,
    VoucherState,
    application_checks,
    decide,
    describe,
    eligible,
    floor_fen,
    grantable,
    hard_failures,
    ratio_rules_from_data,
    refund_split,
)

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
D = Decimal


def programme(pid: int = 1, **overrides) -> ProgrammeRules:
    values = {"programme_id": pid, "name": f"Programme {pid}", "ratio_rules": (RatioRule(D("0.30")),)}
    values.update(overrides)
    return ProgrammeRules(**values)


def voucher(vid: int, pid: int = 1, balance: str = "1000.00", days: int = 30, **overrides) -> VoucherState:
    values = {
        "voucher_id": vid,
        "programme_id": pid,
        "balance": D(balance),
        "valid_from": NOW - timedelta(days=1),
        "expires_at": NOW + timedelta(days=days),
    }
    values.update(overrides)
    return VoucherState(**values)


def charge(gross: str = "1000.00", **overrides) -> ChargeFacts:
    values = {
        "gross": D(gross),
        "compute_class": "intelligent",
        "domestic": False,
        "provider_id": 50,
        "site_id": 60,
        "hub": "GZ",
        "at": NOW,
    }
    values.update(overrides)
    return ChargeFacts(**values)


# --- properties ---------------------------------------------------------------------------------------------------

money = st.decimals(min_value=D("0.00"), max_value=D("100000.00"), places=2)
ratios = st.decimals(min_value=D("0"), max_value=D("1"), places=2)


@st.composite
def scenarios(draw):
    n_programmes = draw(st.integers(1, 4))
    groups = draw(st.lists(st.sampled_from(["", "a", "b"]), min_size=n_programmes, max_size=n_programmes))
    programmes = {}
    for pid in range(1, n_programmes + 1):
        rules = tuple(
            RatioRule(
                ratio=draw(ratios),
                compute_class=draw(st.sampled_from([None, "intelligent", "general"])),
                domestic=draw(st.sampled_from([None, True, False])),
                flagged_ratio=draw(st.one_of(st.none(), ratios)),
            )
            for _ in range(draw(st.integers(1, 3)))
        )
        programmes[pid] = programme(
            pid,
            ratio_rules=rules,
            flag="startup",
            per_org_yearly_cap=draw(st.one_of(st.none(), money.filter(lambda m: m > 0))),
            per_charge_cap=draw(st.one_of(st.none(), money.filter(lambda m: m > 0))),
            stacking_group=groups[pid - 1],
            combined_max_ratio=draw(ratios),
            eligible_providers=draw(st.sampled_from([frozenset(), frozenset({50}), frozenset({51})])),
        )
    vouchers = [
        voucher(
            vid,
            draw(st.integers(1, n_programmes)),
            balance=str(draw(money)),
            days=draw(st.integers(-2, 60)),
            flags=draw(st.sampled_from([frozenset(), frozenset({"startup"})])),
        )
        for vid in range(1, draw(st.integers(0, 6)) + 1)
    ]
    facts = charge(
        str(draw(money)),
        compute_class=draw(st.sampled_from(["intelligent", "general"])),
        domestic=draw(st.booleans()),
        related_parties=draw(st.booleans()),
        yearly_used={pid: draw(money) for pid in programmes if draw(st.booleans())},
    )
    return facts, vouchers, programmes


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_subsidies_never_break_a_rule_and_the_buyer_pays_exactly_the_rest(scenario):
    facts, vouchers, programmes = scenario
    decision = decide(facts, vouchers, programmes)
    gross = facts.gross
    by_id = {v.voucher_id: v for v in vouchers}
    assert decision.buyer_share + decision.total == gross, "buyer share + subsidies = charge exactly"
    assert decision.buyer_share >= 0
    assert {s.voucher_id for s in decision.subsidies}.isdisjoint({s.voucher_id for s in decision.skipped})
    assert len(decision.subsidies) + len(decision.skipped) == len(vouchers), "every voucher is accounted for"
    for s in decision.subsidies:
        assert s.amount > 0 and s.amount == s.amount.quantize(D("0.01"))
        assert s.amount <= by_id[s.voucher_id].balance, "never above the voucher's balance"
        assert s.amount <= s.ratio * gross
    paying = decision.by_programme()
    for pid, paid in paying.items():
        rules = programmes[pid]
        used_ratios = [s.ratio for s in decision.subsidies if s.programme_id == pid]
        assert paid <= max(used_ratios) * gross, "subsidy ≤ ratio × charge"
        if rules.per_charge_cap is not None:
            assert paid <= rules.per_charge_cap
        if rules.per_org_yearly_cap is not None:
            assert facts.yearly_used.get(pid, D(0)) + paid <= rules.per_org_yearly_cap
    if paying:
        combined = min([D(1)] + [programmes[pid].combined_max_ratio for pid in paying])
        assert decision.total <= combined * gross, "stacked total ≤ combined maximum"
    if len(paying) > 1:
        groups = {programmes[pid].stacking_group for pid in paying}
        assert len(groups) == 1 and "" not in groups, "only programmes of one stacking group combine"
    if facts.related_parties:
        assert decision.total == 0, "no subsidy for self-dealing"
    for s in decision.subsidies:
        v = by_id[s.voucher_id]
        assert v.valid_from <= facts.at < v.expires_at
        assert not programmes[s.programme_id].eligible_providers or 50 in programmes[s.programme_id].eligible_providers


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_earlier_expiring_vouchers_of_a_programme_are_used_up_first(scenario):
    facts, vouchers, programmes = scenario
    decision = decide(facts, vouchers, programmes)
    by_id = {v.voucher_id: v for v in vouchers}
    paid = {s.voucher_id: s.amount for s in decision.subsidies}
    for later in decision.subsidies:
        for earlier in decision.subsidies:
            a, b = by_id[earlier.voucher_id], by_id[later.voucher_id]
            same_terms = a.programme_id == b.programme_id and a.flags == b.flags
            if same_terms and (a.expires_at, a.voucher_id) < (b.expires_at, b.voucher_id):
                assert paid[a.voucher_id] == a.balance, "a later voucher pays only once the earlier is used up"


@settings(max_examples=200, deadline=None)
@given(gross=money, amount=money, commission_rate=ratios, shares=st.lists(money, min_size=0, max_size=3))
def test_a_refund_returns_each_voucher_share_to_its_voucher_and_adds_up(gross, amount, commission_rate, shares):
    voucher_paid = [paid for paid in shares if paid > 0]
    if sum(voucher_paid) > gross or amount <= 0:
        return
    commission = floor_fen(gross * commission_rate)
    buyer_paid = gross - sum(voucher_paid)
    refundable = [(i + 1, paid) for i, paid in enumerate(voucher_paid)]
    if amount > gross:
        with pytest.raises(SubsidyError):
            refund_split(
                amount=amount,
                gross=gross,
                commission=commission,
                refundable_by_voucher=refundable,
                refundable_by_buyer=buyer_paid,
            )
        return
    split = refund_split(
        amount=amount,
        gross=gross,
        commission=commission,
        refundable_by_voucher=refundable,
        refundable_by_buyer=buyer_paid,
    )
    assert split.provider_share + split.commission == amount
    assert 0 <= split.commission <= commission
    assert sum(a for _, a in split.to_vouchers) + split.to_buyer == amount
    for (vid, back), (_, paid) in zip(split.to_vouchers, refundable, strict=True):
        assert 0 <= back <= paid, f"voucher {vid} gets back at most what it paid"
    assert 0 <= split.to_buyer <= buyer_paid, "the buyer never gets a voucher's share"


# --- rules, one at a time --------------------------------------------------------------------------------------------


def test_a_buyer_with_a_40_percent_voucher_pays_74_07_of_a_123_45_charge():
    decision = decide(charge("123.45"), [voucher(1)], {1: programme(ratio_rules=(RatioRule(D("0.40")),))})
    assert decision.total == D("49.38")
    assert decision.buyer_share == D("74.07")


def test_the_subsidy_is_rounded_down_to_the_fen():
    decision = decide(charge("0.05"), [voucher(1)], {1: programme(ratio_rules=(RatioRule(D("0.30")),))})
    assert decision.total == D("0.01"), "30% of 5 fen is 1.5 fen: the voucher pays 1"
    assert decision.buyer_share == D("0.04")


def test_earliest_expiry_pays_first_and_the_next_voucher_tops_up():
    vouchers = [voucher(1, balance="500.00", days=90), voucher(2, balance="100.00", days=10)]
    decision = decide(charge("1000.00"), vouchers, {1: programme()})
    assert [(s.voucher_id, s.amount) for s in decision.subsidies] == [(2, D("100.00")), (1, D("200.00"))]
    assert decision.buyer_share == D("700.00")


def test_no_voucher_pays_where_buyer_and_provider_are_related():
    decision = decide(charge(related_parties=True), [voucher(1)], {1: programme()})
    assert decision.total == 0
    assert "self-dealing" in decision.skipped[0].reason


def test_a_provider_off_the_partner_list_or_a_site_not_named_gets_no_subsidy():
    off_list = decide(charge(provider_id=7), [voucher(1)], {1: programme(eligible_providers=frozenset({50}))})
    assert off_list.total == 0 and "partner list" in off_list.skipped[0].reason
    elsewhere = decide(charge(site_id=9), [voucher(1)], {1: programme(eligible_sites=frozenset({60}))})
    assert elsewhere.total == 0 and "centre" in elsewhere.skipped[0].reason
    by_hub = decide(charge(site_id=9, hub="CY"), [voucher(1)], {1: programme(eligible_hubs=frozenset({"CY"}))})
    assert by_hub.total == D("300.00")


def test_an_ineligible_class_pays_nothing():
    rules = programme(eligible_classes=frozenset({"intelligent"}))
    decision = decide(charge(compute_class="general"), [voucher(1)], {1: rules})
    assert decision.total == 0 and "intelligent" in decision.skipped[0].reason


def test_expired_and_not_yet_valid_vouchers_pay_nothing():
    expired = voucher(1, days=-1)
    future = voucher(2, valid_from=NOW + timedelta(hours=1))
    decision = decide(charge(), [expired, future], {1: programme()})
    assert decision.total == 0
    assert [s.reason for s in decision.skipped] == ["The voucher has expired.", "The voucher is not valid yet."]


def test_caps_per_charge_and_per_year_bind():
    per_charge = decide(charge(), [voucher(1)], {1: programme(per_charge_cap=D("120.00"))})
    assert per_charge.total == D("120.00")
    yearly = decide(
        charge(yearly_used={1: D("1950.00")}), [voucher(1)], {1: programme(per_org_yearly_cap=D("2000.00"))}
    )
    assert yearly.total == D("50.00")
    used_up = decide(charge(yearly_used={1: D("2000.00")}), [voucher(1)], {1: programme(per_org_yearly_cap=D("2000"))})
    assert used_up.total == 0 and "cap" in used_up.skipped[0].reason


def test_programmes_without_a_shared_stacking_group_do_not_combine():
    programmes = {1: programme(1), 2: programme(2, ratio_rules=(RatioRule(D("0.50")),))}
    decision = decide(charge(), [voucher(1, 1, days=5), voucher(2, 2, days=50)], programmes)
    assert decision.total == D("300.00"), "the earliest-expiring programme pays alone"
    assert "does not combine" in decision.skipped[0].reason


def test_a_stacking_group_combines_up_to_its_combined_maximum():
    group = {"stacking_group": "shanghai", "combined_max_ratio": D("0.80")}
    programmes = {
        1: programme(1, ratio_rules=(RatioRule(D("0.50")),), **group),
        2: programme(2, ratio_rules=(RatioRule(D("0.60")),), **group),
    }
    decision = decide(charge(), [voucher(1, 1, days=5), voucher(2, 2, days=50)], programmes)
    assert [s.amount for s in decision.subsidies] == [D("500.00"), D("300.00")]
    assert decision.buyer_share == D("200.00")


def test_ratios_by_domestic_device_class_and_startup_flag():
    rules = programme(
        flag="startup",
        ratio_rules=(
            RatioRule(D("0.30"), domestic=True),
            RatioRule(D("0.25"), compute_class="intelligent", flagged_ratio=D("0.35")),
            RatioRule(D("0.10")),
        ),
    )
    assert rules.ratio_for(compute_class="general", domestic=True) == D("0.30")
    assert rules.ratio_for(compute_class="intelligent", domestic=False) == D("0.25")
    assert rules.ratio_for(compute_class="intelligent", domestic=False, flags={"startup"}) == D("0.35")
    assert rules.ratio_for(compute_class="general", domestic=False, flags={"startup"}) == D("0.10")
    assert rules.max_ratio == D("0.35")


def test_stored_ratio_rules_are_checked():
    assert ratio_rules_from_data([{"ratio": "0.3", "domestic": True}]) == (RatioRule(D("0.3"), domestic=True),)
    with pytest.raises(SubsidyError):
        ratio_rules_from_data([{"ratio": "1.5"}])
    with pytest.raises(SubsidyError):
        ratio_rules_from_data([{"ratio": "0.2", "typo": 1}])
    with pytest.raises(SubsidyError):
        programme(ratio_rules=())


# --- applicants ----------------------------------------------------------------------------------------------------


def applicant(**overrides) -> Applicant:
    values = {
        "organisation_id": 3,
        "category": "enterprise",
        "is_sme": True,
        "city": "hangzhou",
        "region": "Zhejiang",
    }
    values.update(overrides)
    return Applicant(**values)


def test_eligibility_gives_a_reason_for_each_failed_rule():
    rules = programme(
        eligible_categories=frozenset({"enterprise", "university"}),
        sme_only=True,
        registration_cities=frozenset({"hangzhou"}),
        application_closes=NOW - timedelta(days=1),
        application_opens=NOW - timedelta(days=100),
    )
    assert eligible(rules, applicant(), at=NOW - timedelta(days=2)) == ()
    reasons = eligible(rules, applicant(category="medical_institution", city="beijing"), at=NOW)
    assert len(reasons) == 3
    assert "not medical institutions" in reasons[0]
    assert "registered in hangzhou" in reasons[1]
    assert "closed" in reasons[2]
    assert "small and medium" in eligible(rules, applicant(is_sme=False), at=NOW - timedelta(days=2))[0]
    assert "Providers" in eligible(rules, applicant(category="provider"), at=NOW - timedelta(days=2))[0]


def test_application_checks_reject_hard_failures_and_leave_the_rest_to_the_reviewer():
    rules = programme(per_org_yearly_cap=D("1000.00"))
    ok = application_checks(
        rules,
        applicant(),
        requested=D("800.00"),
        granted_this_year=D("500.00"),
        has_open_application=False,
        budget_available=D("10000.00"),
        at=NOW,
    )
    assert hard_failures(ok) == ()
    cap = next(c for c in ok if c.name == "yearly_cap")
    assert not cap.passed and not cap.hard and "¥500" in cap.detail
    duplicate = application_checks(
        rules,
        applicant(category="provider", credit_code_valid=False),
        requested=D("1.00"),
        granted_this_year=D("1000.00"),
        has_open_application=True,
        budget_available=D("0"),
        at=NOW,
    )
    assert {c.name for c in hard_failures(duplicate)} == {
        "category",
        "credit_code",
        "not_provider",
        "no_duplicate",
        "yearly_cap",
        "budget",
    }
    assert grantable(rules, requested=D("800"), granted_this_year=D("500"), budget_available=D("10000")) == D("500")
    assert grantable(rules, requested=D("800"), granted_this_year=D("0"), budget_available=D("300")) == D("300")


def test_the_programme_is_described_in_plain_language():
    rules = programme(
        ratio_rules=(RatioRule(D("0.30"), domestic=True), RatioRule(D("0.20"))),
        per_org_yearly_cap=D("8000000"),
        eligible_categories=frozenset({"enterprise"}),
        sme_only=True,
        registration_cities=frozenset({"hangzhou"}),
    )
    text = describe(rules)
    assert text[0] == "Pays 30% of charges on domestic-chip compute; 20% of charges on other compute."
    assert "At most ¥8,000,000 per organisation per year." in text
    assert "Open to small and medium-sized enterprises." in text
    assert "Does not combine with any other subsidy on the same spend." in text
