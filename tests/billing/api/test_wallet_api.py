"""A buyer tops up the wallet and sees what it holds and what each movement meant."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import charging, services
from core.models import AuditEntry
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

WALLET = "/api/v1/wallet"
TOP_UPS = "/api/v1/wallet/top-ups"


@pytest.fixture
def buyer(db):
    """A buyer whose wallet starts empty."""
    return factories.buyer(funds=Decimal(0))


@pytest.fixture
def finance(db):
    """The operator who checks the platform's bank statement."""
    return client_for(factories.operator())


def notify(client, amount: str, reference: str):
    return client.post(TOP_UPS, {"amount": amount, "reference": reference}, format="json")


def top_up(client, amount: str, reference: str):
    """Money paid in: the buyer's notice, confirmed by an operator; the confirmation's answer."""
    notice = notify(client, amount, reference)
    assert notice.status_code in (200, 202), notice.data
    return client_for(factories.operator()).post(f"{TOP_UPS}/{notice.data['id']}/confirm", {}, format="json")


def amounts(item: dict) -> dict[str, Decimal]:
    return {line["account"]: Decimal(line["amount"]) for line in item["amounts"]}


def available(client) -> Decimal:
    return Decimal(client.get(WALLET).data["available"])


def test_a_payment_notice_moves_nothing_until_an_operator_confirms_it_and_then_credits_once(buyer, finance):
    client = client_for(buyer)
    first = notify(client, "1200.50", "ICBC-2026-0001")
    assert first.status_code == 202
    assert first.data["status"] == "pending" and first.data["transaction"] is None
    again = notify(client, "1200.50", " ICBC-2026-0001 ")
    assert again.status_code == 200 and again.data["id"] == first.data["id"]
    assert available(client) == 0 and client.get(WALLET).data["history"]["count"] == 0

    confirmed = finance.post(f"{TOP_UPS}/{first.data['id']}/confirm", {"reason": "on the 23 Nov statement"})
    assert confirmed.status_code == 200 and confirmed.data["status"] == "confirmed"
    twice = finance.post(f"{TOP_UPS}/{first.data['id']}/confirm", {})
    assert twice.status_code == 200 and twice.data["transaction"] == confirmed.data["transaction"]

    wallet = client.get(WALLET).data
    assert Decimal(wallet["available"]) == Decimal("1200.50")
    [item] = wallet["history"]["results"]
    assert item["id"] == confirmed.data["transaction"] and item["kind"] == "top_up"
    assert amounts(item) == {"available": Decimal("1200.50")} and "paid in" in item["meaning"]
    assert client.get("/api/v1/notices").data[0]["title"] == "Payment ICBC-2026-0001 credited"
    actions = AuditEntry.objects.filter(entity_type="billing.paymentnotice").values_list("action", flat=True)
    assert sorted(actions) == ["payment_notice.confirmed", "payment_notice.submitted"]


def test_a_rejected_notice_moves_nothing_and_tells_the_buyer_why(buyer, finance):
    client = client_for(buyer)
    notice = notify(client, "50000.00", "MADE-UP-1").data
    no_reason = finance.post(f"{TOP_UPS}/{notice['id']}/reject", {"reason": " "})
    assert no_reason.status_code == 400 and no_reason.data["field"] == "reason"
    rejected = finance.post(f"{TOP_UPS}/{notice['id']}/reject", {"reason": "not on the bank statement"})
    assert rejected.status_code == 200 and rejected.data["status"] == "rejected"
    late = finance.post(f"{TOP_UPS}/{notice['id']}/confirm", {})
    assert late.status_code == 409
    assert available(client) == 0
    assert client.get("/api/v1/notices").data[0]["message"] == "not on the bank statement"


def test_only_operators_confirm_or_reject_and_buyers_see_only_their_own_notices(buyer, finance, provider):
    client = client_for(buyer)
    mine = notify(client, "10.00", "MINE").data
    other = factories.buyer(funds=Decimal(0))
    theirs = notify(client_for(other), "20.00", "THEIRS").data
    for who in (client, client_for(provider)):
        assert who.post(f"{TOP_UPS}/{mine['id']}/confirm", {}).status_code == 403
        assert who.post(f"{TOP_UPS}/{mine['id']}/reject", {"reason": "x"}).status_code == 403
    assert [n["id"] for n in client.get(TOP_UPS).data["results"]] == [mine["id"]]
    assert {n["id"] for n in finance.get(TOP_UPS, {"status": "pending"}).data["results"]} >= {mine["id"], theirs["id"]}
    assert finance.get(TOP_UPS, {"status": "lost"}).data["field"] == "status"
    assert finance.post(f"{TOP_UPS}/999999/confirm", {}).status_code == 404
    assert available(client) == 0


def test_the_same_reference_with_another_amount_is_refused(buyer):
    client = client_for(buyer)
    assert notify(client, "10.00", "SLIP-9").status_code == 202
    refused = notify(client, "99.00", "SLIP-9")
    assert refused.status_code == 409 and refused.data["code"] == "conflict"
    assert [n["amount"] for n in client.get(TOP_UPS).data["results"]] == ["10.00"]


def test_one_transfer_spelt_two_ways_is_one_notice_and_operators_see_it_cited_elsewhere(buyer, finance):
    client = client_for(buyer)
    first = notify(client, "88.00", "ICBC-2026-0001")
    again = notify(client, "88.00", "icbc 2026 0001")
    assert again.status_code == 200 and again.data["id"] == first.data["id"]
    assert notify(client, "89.00", "Icbc/2026/0001").status_code == 409
    notify(client_for(factories.buyer(funds=Decimal(0))), "88.00", "ICBC20260001")
    listed = {n["id"]: n for n in finance.get(TOP_UPS).data["results"]}
    assert listed[first.data["id"]]["same_reference"] == 1, "the operator sees the transfer cited by another buyer"
    assert client.get(TOP_UPS).data["results"][0]["same_reference"] is None


def test_two_buyers_may_use_the_same_bank_reference(buyer):
    other = factories.buyer(funds=Decimal(0))
    assert top_up(client_for(buyer), "5.00", "0001").status_code == 200
    assert top_up(client_for(other), "7.00", "0001").status_code == 200
    assert available(client_for(other)) == Decimal("7.00")
    assert available(client_for(buyer)) == Decimal("5.00")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "10.001", "reference": "R"}, "amount"),
        ({"amount": "0.00", "reference": "R"}, "amount"),
        ({"amount": "-5", "reference": "R"}, "amount"),
        ({"amount": "abc", "reference": "R"}, "amount"),
        ({"amount": "10.00"}, "reference"),
        ({"amount": "10.00", "reference": "   "}, "reference"),
        ({"amount": "10.00", "reference": "R" * 201}, "reference"),
    ],
)
def test_a_top_up_needs_a_positive_amount_in_fen_and_a_reference(buyer, body, field):
    response = client_for(buyer).post(TOP_UPS, body, format="json")
    assert response.status_code == 400 and response.data["field"] == field
    assert available(client_for(buyer)) == 0 and client_for(buyer).get(TOP_UPS).data["count"] == 0


def test_only_buyers_top_up_and_only_members_see_a_wallet(api, provider):
    assert notify(client_for(provider), "10.00", "R").status_code == 403
    assert api.get(WALLET).status_code in (401, 403)
    assert notify(api, "10.00", "R").status_code in (401, 403)
    assert api.get(TOP_UPS).status_code in (401, 403)


def test_the_wallet_shows_escrow_usage_debt_and_what_each_movement_meant(buyer):
    provider_user, _ = factories.market(nodes=1)
    client = client_for(buyer)
    assert top_up(client, "1000.00", "BANK-1").status_code == 200
    job = factories.submit(buyer)
    scheduler_services.cycle_run()
    lease = Lease.objects.select_related("job", "pool__site").get(job=job)  # its estimated cost is held
    wallet = client.get(WALLET).data
    assert Decimal(wallet["held"]) == lease.estimated_cost > 0
    assert Decimal(wallet["available"]) == Decimal("1000.00") - lease.estimated_cost

    # Usage worth 10.00 more than was paid in: the hold pays first, then the wallet, the rest is owed.
    ncu_hours = (Decimal("1010.00") / lease.unit_price).quantize(Decimal("0.0001"))
    services.usage_record(lease=lease, sequence=1, start=lease.start, end=lease.end, ncu_hours=ncu_hours)
    charging.charge_pending()
    wallet = client.get(WALLET).data
    history = wallet["history"]["results"]
    assert [item["kind"] for item in history] == ["capture", "hold", "top_up"]
    capture = history[0]
    assert Decimal(wallet["owed"]) == Decimal("10.00")
    assert Decimal(wallet["available"]) == 0 and Decimal(wallet["held"]) == 0
    # Only the buyer's own accounts: the provider's share and the commission are not shown.
    assert amounts(capture) == {
        "held": -lease.estimated_cost,
        "available": lease.estimated_cost - Decimal("1000.00"),
        "debt": Decimal("-10.00"),
    }
    assert "usage charged" in capture["meaning"].lower()
    assert "escrow" in history[1]["meaning"]

    assert top_up(client, "100.00", "BANK-2").status_code == 200
    wallet = client.get(WALLET).data
    assert Decimal(wallet["owed"]) == 0
    assert Decimal(wallet["available"]) == Decimal("90.00")
    assert [item["kind"] for item in wallet["history"]["results"][:2]] == ["debt_repayment", "top_up"]

    provider_wallet = client_for(provider_user).get(WALLET).data
    earned = provider_wallet["history"]["results"][0]
    assert earned["kind"] == "capture" and list(amounts(earned)) == ["payable"]
    assert Decimal(provider_wallet["payable"]) == amounts(earned)["payable"] > 0


def test_the_history_is_paged_newest_first_and_shows_only_your_organisation(buyer):
    client = client_for(buyer)
    for n in range(5):
        top_up(client, f"{n + 1}.00", f"R{n}")
    top_up(client_for(factories.buyer(funds=Decimal(0))), "999.00", "theirs")
    page = client.get(WALLET, {"limit": 2, "offset": 1}).data["history"]
    assert page["count"] == 5 and page["limit"] == 2 and page["offset"] == 1
    assert [amounts(item)["available"] for item in page["results"]] == [Decimal("4.00"), Decimal("3.00")]
    bad = client.get(WALLET, {"limit": "many"})
    assert bad.status_code == 400 and bad.data["field"] == "limit"


def test_the_wallet_costs_the_same_queries_however_long_its_history(buyer, django_assert_max_num_queries):
    client = client_for(buyer)
    top_up(client, "1.00", "first")
    with django_assert_max_num_queries(5) as short:
        client.get(WALLET)
    queries = len(short)
    for n in range(30):
        top_up(client, "1.00", f"more-{n}")
    with django_assert_max_num_queries(queries):
        assert len(client.get(WALLET).data["history"]["results"]) == 31
