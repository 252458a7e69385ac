"""The demo programmes load as data, and buyers' stories hold end to end:
apply, be approved, run a job, be charged."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command

from tests import factories
from tests.vouchers import helpers
from vouchers import selectors, services
from vouchers.models import VoucherProgramme

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def demo(operator):
    """A Beijing partner with an H800 pool, a Chengdu centre, a Guizhou provider
    with Ascend 910B nodes, and the demo programmes."""
    beijing = factories.provider(home_hub="JJJ", city="beijing")
    beijing_site = factories.site(beijing, hub="JJJ", city="beijing", name="Yizhuang AI centre")
    factories.offer(beijing, factories.pool(beijing, beijing_site, node_count=1, name="H800"))
    chengdu = factories.provider(home_hub="CY", city="chengdu")
    factories.site(chengdu, hub="CY", city="chengdu", name="Chengdu intelligent computing centre")
    guizhou = factories.provider()
    ascend = factories.pool(
        guizhou,
        factories.site(guizhou),
        node_count=1,
        name="Ascend 910B",
        accelerator_model=factories.device("huawei-ascend-910b"),
    )
    factories.offer(guizhou, ascend)
    out = io.StringIO()
    call_command("load_demo_vouchers", stdout=out)
    return {p.name.split()[0]: p for p in VoucherProgramme.objects.all()}, out.getvalue()


def granted(buyer, programme, operator, amount="1000000.00", flags=()):
    application = services.application_submit(
        user=buyer, programme=programme, requested_amount=D(amount), intended_use="training", flags=flags
    )
    assert application.status == "pending_review", application.reason
    return services.application_approve(application=application, actor=operator, flags=flags)


def test_the_demo_programmes_load_once_with_their_partners_and_named_centres(demo):
    programmes, output = demo
    assert set(programmes) == {"Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Shanghai", "Pudong"}
    assert "loaded" in output
    assert [p.home_hub for p in programmes["Beijing"].eligible_providers.all()] == ["JJJ"]
    assert [s.hub for s in programmes["Chengdu"].eligible_sites.all()] == ["CY"]
    assert selectors.budget_available(programmes["Shenzhen"].pk) == D("500000000.00")
    again = io.StringIO()
    call_command("load_demo_vouchers", stdout=again)
    assert "already loaded" in again.getvalue()
    assert VoucherProgramme.objects.count() == 6


def test_a_hangzhou_sme_charged_1000_on_ascend_910b_pays_700(demo, operator):
    programmes, _ = demo
    buyer = factories.buyer(city="hangzhou")
    granted(buyer, programmes["Hangzhou"], operator)
    lease = helpers.lease_for(buyer, software_stack="cann", allowed_hubs=["GZ"])
    charge = helpers.charge(lease, "1000.00")
    assert charge.gross - charge.voucher_funded == D("700.00")


def test_a_beijing_lab_pays_800_at_a_partner_and_everything_elsewhere(demo, operator):
    programmes, _ = demo
    lab = factories.buyer(category="research_institute", city="beijing")
    granted(lab, programmes["Beijing"], operator)
    at_partner = helpers.lease_for(lab, allowed_hubs=["JJJ"])
    assert helpers.charge(at_partner, "1000.00").voucher_funded == D("200.00")
    elsewhere = helpers.lease_for(lab, software_stack="cann", allowed_hubs=["GZ"])
    assert helpers.charge(elsewhere, "1000.00").voucher_funded == 0


def test_a_shenzhen_startup_confirmed_by_the_reviewer_pays_400(demo, operator):
    programmes, _ = demo
    startup = factories.buyer(city="shenzhen")
    granted(startup, programmes["Shenzhen"], operator, flags=["startup"])
    lease = helpers.lease_for(startup, allowed_hubs=["JJJ"])
    assert helpers.charge(lease, "1000.00").voucher_funded == D("600.00")


def test_a_shanghai_lab_with_city_and_district_vouchers_pays_nothing_on_intelligent_compute(demo, operator):
    programmes, _ = demo
    lab = factories.buyer(category="university", city="shanghai")
    city = granted(lab, programmes["Shanghai"], operator)
    district = granted(lab, programmes["Pudong"], operator)
    lease = helpers.lease_for(lab, allowed_hubs=["JJJ"])
    charge = helpers.charge(lease, "1000.00")
    assert charge.voucher_funded == D("1000.00")
    assert helpers.voucher_balance(city) == D("999500.00"), "the earlier-expiring city voucher pays its 50%"
    assert helpers.voucher_balance(district) == D("999500.00"), "the district tops up to the combined 100%"


def test_a_chengdu_applicant_must_be_registered_in_sichuan(demo, operator):
    programmes, _ = demo
    application = services.application_submit(
        user=factories.buyer(category="medical_institution", city="beijing"),
        programme=programmes["Chengdu"],
        requested_amount=D("1000.00"),
        intended_use="imaging",
    )
    assert application.status == "rejected" and "Sichuan" in application.reason
