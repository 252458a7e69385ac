"""The five real programmes, expressed as data (vouchers/fixtures/demo_programmes.json),
each with a buyer's story."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from vouchers.domain.subsidy import Applicant, ChargeFacts, VoucherState, decide, eligible, rules_from_data

DATA = Path(__file__).resolve().parents[3] / "vouchers" / "fixtures" / "demo_programmes.json"
NOW = datetime(2026, 6, 1, 4, tzinfo=UTC)
PARTNER, OUTSIDER, NAMED_SITE, OTHER_SITE = 101, 102, 201, 202
D = Decimal


@pytest.fixture(scope="module")
def programmes():
    data = json.loads(DATA.read_text(encoding="utf-8"))
    found = {}
    for pid, item in enumerate(data, start=1):
        item = {**item, "application_opens": NOW - timedelta(days=150), "application_closes": NOW + timedelta(days=200)}
        found[item["name"].split()[0]] = rules_from_data(
            pid,
            item,
            providers=[PARTNER] if item.get("partners") else [],
            sites=[NAMED_SITE] if item.get("named_sites") else [],
        )
    return found


def holding(rules, balance="10000000.00", days=300, flags=(), vid=None):
    return VoucherState(
        voucher_id=vid or rules.programme_id,
        programme_id=rules.programme_id,
        balance=D(balance),
        valid_from=NOW - timedelta(days=1),
        expires_at=NOW + timedelta(days=days),
        flags=frozenset(flags),
    )


def spend(gross="1000.00", **facts):
    values = {
        "gross": D(gross),
        "compute_class": "intelligent",
        "domestic": False,
        "provider_id": PARTNER,
        "site_id": NAMED_SITE,
        "hub": "JJJ",
        "at": NOW,
    }
    values.update(facts)
    return ChargeFacts(**values)


def buyer(city, region, category="enterprise", is_sme=True):
    return Applicant(organisation_id=1, category=category, is_sme=is_sme, city=city, region=region)


def test_all_five_city_programmes_and_the_district_one_load_as_data(programmes):
    assert set(programmes) == {"Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Shanghai", "Pudong"}


def test_a_beijing_lab_pays_800_of_1000_of_intelligent_compute_from_a_partner(programmes):
    beijing = programmes["Beijing"]
    assert eligible(beijing, buyer("beijing", "Beijing", "research_institute", False), at=NOW) == ()
    decision = decide(spend(), [holding(beijing)], {beijing.programme_id: beijing})
    assert decision.buyer_share == D("800.00")


def test_beijing_pays_nothing_off_the_partner_list_on_general_compute_or_between_related_parties(programmes):
    beijing = programmes["Beijing"]
    rules = {beijing.programme_id: beijing}
    assert decide(spend(provider_id=OUTSIDER), [holding(beijing)], rules).total == 0
    assert decide(spend(compute_class="general"), [holding(beijing)], rules).total == 0
    assert decide(spend(related_parties=True), [holding(beijing)], rules).total == 0
    assert "registered in beijing" in eligible(beijing, buyer("tianjin", "Tianjin"), at=NOW)[0]


def test_beijing_stops_at_two_million_a_year(programmes):
    beijing = programmes["Beijing"]
    decision = decide(
        spend("1000000.00", yearly_used={beijing.programme_id: D("1950000.00")}),
        [holding(beijing)],
        {beijing.programme_id: beijing},
    )
    assert decision.total == D("50000.00"), "20% would be ¥200,000; only ¥50,000 of the year's cap is left"


def test_beijing_allows_no_other_subsidy_on_the_same_spend(programmes):
    beijing, shenzhen = programmes["Beijing"], programmes["Shenzhen"]
    decision = decide(
        spend(),
        [holding(beijing, days=10), holding(shenzhen, days=20)],
        {beijing.programme_id: beijing, shenzhen.programme_id: shenzhen},
    )
    assert decision.total == D("200.00")
    assert "does not combine" in decision.skipped[0].reason


def test_a_shenzhen_startup_pays_400_of_1000_and_an_established_firm_500(programmes):
    shenzhen = programmes["Shenzhen"]
    rules = {shenzhen.programme_id: shenzhen}
    assert decide(spend(), [holding(shenzhen, flags={"startup"})], rules).buyer_share == D("400.00")
    assert decide(spend(), [holding(shenzhen)], rules).buyer_share == D("500.00")
    assert shenzhen.per_org_yearly_cap == D("10000000.00")


def test_a_hangzhou_sme_charged_1000_on_ascend_910b_pays_700_and_on_h800_pays_800(programmes):
    hangzhou = programmes["Hangzhou"]
    rules = {hangzhou.programme_id: hangzhou}
    assert eligible(hangzhou, buyer("hangzhou", "Zhejiang"), at=NOW) == ()
    assert decide(spend(domestic=True), [holding(hangzhou)], rules).buyer_share == D("700.00")
    assert decide(spend(domestic=False), [holding(hangzhou)], rules).buyer_share == D("800.00")
    assert "small and medium" in eligible(hangzhou, buyer("hangzhou", "Zhejiang", is_sme=False), at=NOW)[0]


def test_a_chengdu_hospital_pays_400_on_domestic_chips_at_a_named_centre_and_full_price_elsewhere(programmes):
    chengdu = programmes["Chengdu"]
    rules = {chengdu.programme_id: chengdu}
    hospital = buyer("chengdu", "Sichuan", "medical_institution", False)
    assert eligible(chengdu, hospital, at=NOW) == ()
    assert decide(spend(domestic=True, hub="CY"), [holding(chengdu)], rules).buyer_share == D("400.00")
    assert decide(spend(hub="CY"), [holding(chengdu)], rules).buyer_share == D("600.00")
    assert decide(spend(compute_class="general", hub="CY"), [holding(chengdu)], rules).buyer_share == D("700.00")
    assert decide(spend(site_id=OTHER_SITE, hub="CY"), [holding(chengdu)], rules).total == 0


def test_a_shanghai_lab_with_city_and_district_vouchers_pays_nothing_but_never_below_zero(programmes):
    city, district = programmes["Shanghai"], programmes["Pudong"]
    rules = {city.programme_id: city, district.programme_id: district}
    decision = decide(spend(), [holding(city, days=30), holding(district, days=60)], rules)
    assert [s.amount for s in decision.subsidies] == [D("500.00"), D("500.00")]
    assert decision.buyer_share == 0, "50% + 60% is capped at the combined 100%"
    district_first = decide(spend(), [holding(city, days=60), holding(district, days=30)], rules)
    assert [s.amount for s in district_first.subsidies] == [D("600.00"), D("400.00")]
    general = decide(spend(compute_class="general"), [holding(city), holding(district, days=60)], rules)
    assert general.total == D("600.00"), "the city programme pays only for intelligent compute"
