"""What a quote reads of the buyer in one statement: the NCU-hours charged
this month (as the billing selector counts them) and whether it holds a
usable voucher."""

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from billing.selectors import month_to_date_ncu_hours
from scheduler import selectors
from tests import factories
from tests.vouchers import helpers
from vouchers.models import Voucher, VoucherStatus

pytestmark = pytest.mark.django_db


def buyer_quote_facts(buyer_id: int, *, at: datetime) -> tuple[Decimal, bool]:
    """The buyer's facts as a quote at ``at`` reads them, with the market's fingerprint."""
    _prepared, charged, has_vouchers = selectors.buyer_quote_market(buyer_id, now=at)
    return charged, has_vouchers


def test_a_new_buyer_has_nothing_charged_and_no_voucher():
    buyer = factories.buyer()
    charged, has_vouchers = buyer_quote_facts(buyer.organisation_id, at=timezone.now())
    assert charged == 0
    assert has_vouchers is False


def test_charges_this_month_are_counted_to_the_fen_as_the_billing_selector_counts_them(operator):
    factories.market(pools=1, nodes=2)
    buyer, other = factories.buyer(), factories.buyer()
    lease = helpers.lease_for(buyer, use_vouchers=False)
    for sequence, ncu_hours in enumerate(("1.5", "0.2501", "2"), start=1):
        sample, _ = billing.usage_record(
            lease=lease,
            sequence=sequence,
            start=lease.start + timedelta(minutes=sequence),
            end=lease.start + timedelta(minutes=sequence + 1),
            ncu_hours=Decimal(ncu_hours),
        )
        billing.charge_sample(sample_id=sample.pk, commission_rate=helpers.RATE)
    now = timezone.now()
    charged, _ = buyer_quote_facts(buyer.organisation_id, at=now)
    assert charged == Decimal("3.7501")
    assert charged == month_to_date_ncu_hours(buyer.organisation_id, now)
    assert buyer_quote_facts(other.organisation_id, at=now)[0] == 0
    next_month = now.replace(day=1) + timedelta(days=40)
    assert buyer_quote_facts(buyer.organisation_id, at=next_month)[0] == 0


def test_a_voucher_counts_only_while_it_is_usable(operator):
    buyer = factories.buyer()
    voucher = helpers.voucher(buyer, helpers.programme(operator), operator)
    now = timezone.now()
    assert buyer_quote_facts(buyer.organisation_id, at=now)[1] is True
    assert buyer_quote_facts(buyer.organisation_id, at=voucher.expires_at)[1] is False
    assert buyer_quote_facts(buyer.organisation_id, at=voucher.valid_from - timedelta(seconds=1))[1] is False
    Voucher.objects.filter(pk=voucher.pk).update(status=VoucherStatus.EXPIRED)
    assert buyer_quote_facts(buyer.organisation_id, at=now)[1] is False


def test_the_facts_read_with_the_market_fingerprint_are_the_buyers_own(operator):
    factories.market(pools=1, nodes=2)
    buyer, other = factories.buyer(), factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    lease = helpers.lease_for(buyer, use_vouchers=False)
    sample, _ = billing.usage_record(
        lease=lease, sequence=1, start=lease.start, end=lease.start + timedelta(minutes=1), ncu_hours=Decimal("0.75")
    )
    billing.charge_sample(sample_id=sample.pk, commission_rate=helpers.RATE)
    now = timezone.now()
    for who in (buyer, other):
        charged, _ = buyer_quote_facts(who.organisation_id, at=now)
        assert charged == month_to_date_ncu_hours(who.organisation_id, now)
    assert selectors.buyer_quote_market(buyer.organisation_id, now=now)[1:] == (Decimal("0.7500"), True)
    assert selectors.buyer_quote_market(other.organisation_id, now=now)[1:] == (Decimal(0), False)


def test_a_quote_on_an_unchanged_market_asks_the_database_twice(django_assert_max_num_queries):
    """The token with its user and organisation, then the market's fingerprint with the buyer's facts."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    factories.market(pools=2, nodes=2)
    buyer = factories.buyer()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=buyer).key}")
    body = factories.job_values(accelerators_per_node=1)
    assert client.post("/api/v1/quotes", body, format="json").status_code == 200  # the snapshot is read once
    with django_assert_max_num_queries(2):
        response = client.post("/api/v1/quotes", body, format="json")
    assert response.status_code == 200
    assert response.data["options"]
