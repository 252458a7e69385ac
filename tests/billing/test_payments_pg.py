"""Operators confirming the same payment at the same moment credit it once (PostgreSQL)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import payments
from billing.models import Account, LedgerTransaction, PaymentNotice
from core.errors import IllegalTransition, InvalidInput
from tests import factories
from tests.concurrency import run_together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_confirmations_credit_a_payment_exactly_once():
    buyer = factories.buyer(funds=Decimal(0))
    operators = [factories.operator() for _ in range(6)]
    notice, _ = payments.payment_notice_submit(
        organisation=buyer.organisation, amount=Decimal("4321.09"), reference="ABC-2026-11-23", user=buyer
    )

    run_together(lambda i: payments.payment_notice_confirm(notice=notice, actor=operators[i]), len(operators))

    notice.refresh_from_db()
    assert notice.status == "confirmed"
    assert (
        LedgerTransaction.objects.filter(kind="top_up", postings__account__organisation=buyer.organisation).count() == 1
    )
    assert Account.objects.get(organisation=buyer.organisation, kind="available").balance == Decimal("4321.09")


def test_a_confirmation_racing_a_rejection_ends_one_way_only():
    buyer = factories.buyer(funds=Decimal(0))
    operator = factories.operator()
    notice, _ = payments.payment_notice_submit(
        organisation=buyer.organisation, amount=Decimal("10.00"), reference="RACE-1", user=buyer
    )

    def review(i: int) -> str:
        try:
            if i % 2:
                return payments.payment_notice_reject(notice=notice, actor=operator, reason="not found").status
            return payments.payment_notice_confirm(notice=notice, actor=operator).status
        except IllegalTransition:
            return "refused"

    outcomes = run_together(review, 8)

    final = PaymentNotice.objects.get(pk=notice.pk).status
    assert set(outcomes) == {final, "refused"}
    credited = Account.objects.filter(organisation=buyer.organisation, kind="available").first()
    assert (credited.balance if credited else Decimal(0)) == (Decimal("10.00") if final == "confirmed" else 0)


def test_a_payment_past_what_a_wallet_can_hold_is_refused_naming_the_amount_and_moves_nothing():
    buyer = factories.buyer(funds=Decimal(0))
    operator = factories.operator()
    most = Decimal("9999999999999999.99")  # the largest balance a money column holds
    first, _ = payments.payment_notice_submit(organisation=buyer.organisation, amount=most, reference="A", user=buyer)
    payments.payment_notice_confirm(notice=first, actor=operator)
    more, _ = payments.payment_notice_submit(
        organisation=buyer.organisation, amount=Decimal("1.00"), reference="B", user=buyer
    )

    with pytest.raises(InvalidInput) as refused:
        payments.payment_notice_confirm(notice=more, actor=operator)

    assert refused.value.field == "amount" and "too large" in refused.value.detail
    assert PaymentNotice.objects.get(pk=more.pk).status == "pending"
    assert Account.objects.get(organisation=buyer.organisation, kind="available").balance == most
