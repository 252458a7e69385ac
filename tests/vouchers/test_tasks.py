"""The Celery tasks are thin and idempotent: a second run finds nothing to do."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests import factories
from tests.vouchers import helpers
from vouchers import tasks
from vouchers.models import ChargeSubsidy, Voucher

pytestmark = pytest.mark.django_db


def test_the_expiry_task_expires_what_is_due_once(operator):
    voucher = helpers.voucher(factories.buyer(), helpers.programme(operator, validity_days=1), operator)
    assert tasks.expire_vouchers.apply().get() == []
    past = timezone.now() - timedelta(seconds=1)
    Voucher.objects.filter(pk=voucher.pk).update(valid_from=past - timedelta(days=1), expires_at=past)
    assert tasks.expire_vouchers.apply().get() == [voucher.pk]
    assert tasks.expire_vouchers.apply().get() == []
    assert tasks.expire_voucher.apply(args=[voucher.pk]).get() is False


def test_the_statement_task_puts_yesterdays_redemptions_on_a_statement_once(operator):
    factories.market(nodes=1)
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    helpers.charge(helpers.lease_for(buyer), "1000.00")
    assert tasks.close_redemption_statements.apply().get() == [], "today's period has not ended"
    ChargeSubsidy.objects.update(created_at=timezone.now() - timedelta(days=1))
    (statement_id,) = tasks.close_redemption_statements.apply().get()
    assert ChargeSubsidy.objects.get().statement_id == statement_id
    assert ChargeSubsidy.objects.get().amount == Decimal("300.00")
    assert tasks.close_redemption_statements.apply().get() == []
