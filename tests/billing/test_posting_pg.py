"""Several connections posting at once, on PostgreSQL: the same keys from
every worker move money once; batches racing for one wallet never take it
below zero, each batch wholly posted or wholly refused."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction

from billing import checks, services
from billing.domain import ledger
from billing.models import Account, LedgerTransaction, Posting
from tests import factories
from tests.concurrency import run_together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 4


def top_up(org_id: int, n: int) -> ledger.TransactionDraft:
    return ledger.top_up(
        available=services.account_code(org_id, "available"),
        clearing=services.BANK_CLEARING,
        amount=Decimal(n % 50 + 1) + Decimal("0.01") * (n % 7),
        reference=f"race-{n}",
    )


def test_workers_posting_the_same_keys_in_different_orders_move_each_once():
    buyers = [factories.buyer(funds=Decimal(0)).organisation_id for _ in range(3)]
    drafts = [top_up(buyers[n % 3], n) for n in range(300)]
    expected = {
        b: sum((d.postings[1].amount for d in drafts if f":{b}:" in d.postings[1].account), Decimal(0)) for b in buyers
    }

    def worker(i: int) -> int:
        mine = drafts[:]
        random.Random(i).shuffle(mine)
        created = 0
        if i == 0:  # one worker posts one at a time
            for draft in mine:
                created += services.post(draft)[1]
            return created
        size = 25 * i
        for first in range(0, len(mine), size):
            created += sum(c for _row, c in services.post_many(mine[first : first + size]))
        return created

    created = run_together(worker, WORKERS)

    assert sum(created) == 300  # every key created by exactly one worker
    assert LedgerTransaction.objects.filter(key__startswith="top_up:race-").count() == 300
    assert Posting.objects.filter(transaction__key__startswith="top_up:race-").count() == 600
    for buyer in buyers:
        assert services.balance(services.account_code(buyer, "available")) == expected[buyer]
    assert checks.ledger_breaches() == []
    call_command("check_ledger")


def test_batches_racing_for_one_wallet_never_overdraw_it_and_each_is_all_or_nothing():
    buyer = factories.buyer(funds=Decimal("100.00")).organisation_id
    provider = factories.provider().organisation_id

    def worker(i: int) -> str:
        drafts = [
            ledger.transfer(
                kind=ledger.TransactionKind.ADJUSTMENT,
                source=services.account_code(buyer, "available"),
                destination=services.account_code(provider, "payable"),
                amount=Decimal("3.00"),
                reference=f"race:{i}:{n}",
                memo="three yuan",
            )
            for n in range(10)
        ]
        try:
            services.post_many(drafts)
        except services.InsufficientFunds:
            return "refused"
        return "posted"

    outcomes = run_together(worker, WORKERS)

    assert sorted(outcomes) == ["posted", "posted", "posted", "refused"]
    refused = outcomes.index("refused")
    assert not LedgerTransaction.objects.filter(key__startswith=f"adjustment:race:{refused}:").exists()
    assert LedgerTransaction.objects.filter(key__startswith="adjustment:race:").count() == 30
    assert services.balance(services.account_code(buyer, "available")) == Decimal("10.00")
    assert services.balance(services.account_code(provider, "payable")) == Decimal("90.00")
    assert checks.ledger_breaches() == []


def test_an_account_rolled_back_after_it_was_first_used_is_opened_again():
    buyer = factories.buyer(funds=Decimal("10.00")).organisation_id
    payable = services.account_code(factories.provider().organisation_id, "payable")

    def pay(amount: str, reference: str) -> ledger.TransactionDraft:
        return ledger.transfer(
            kind=ledger.TransactionKind.ADJUSTMENT,
            source=services.account_code(buyer, "available"),
            destination=payable,
            amount=Decimal(amount),
            reference=reference,
            memo="a payment",
        )

    with pytest.raises(RuntimeError), transaction.atomic():
        services.post(pay("1.00", "first"))  # opens the payable account ...
        raise RuntimeError("... and the transaction that opened it is rolled back")
    assert not Account.objects.filter(code=payable).exists()

    services.post(pay("2.00", "second"))
    services.post_many([pay("3.00", "third")])

    assert services.balance(payable) == Decimal("5.00")
    assert services.balance(services.account_code(buyer, "available")) == Decimal("5.00")
    assert checks.ledger_breaches() == []
