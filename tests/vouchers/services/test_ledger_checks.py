"""Every voucher movement keeps the books sound by the platform's own ledger checks."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import checks
from tests import factories
from tests.vouchers import helpers
from vouchers import redemption, services, statements

pytestmark = pytest.mark.django_db


def test_issue_redeem_refund_claw_back_and_expire_leave_no_breach(operator):
    factories.market(nodes=1)
    buyer = factories.buyer()
    programme = helpers.programme(operator, validity_days=1)
    voucher = helpers.voucher(buyer, programme, operator, amount="5000.00")
    lease = helpers.lease_for(buyer)
    first = helpers.charge(lease, "1000.00")
    helpers.charge(lease, "123.45")
    redemption.charge_refund(charge=first, amount=Decimal("100.00"), reason="slow", reference="R1", actor=operator)
    statement = statements.redemption_close(programme=programme, end=timezone.now() + timedelta(seconds=1))
    statements.redemption_reject(statement=statement, actor=operator, reason="audit failed")
    services.voucher_expire(voucher_id=voucher.pk, now=timezone.now() + timedelta(days=2))
    assert checks.ledger_breaches() == []
