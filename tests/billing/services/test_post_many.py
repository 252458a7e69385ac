"""Posting many ledger transactions at once: the same guarantees per draft as
posting them one by one (idempotent per key, balanced, never below zero),
all or nothing for the call. Runs on SQLite and on PostgreSQL."""

from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Sum

from billing import checks, services
from billing.domain import ledger
from billing.models import Account, LedgerTransaction, Posting
from core.errors import Conflict
from tests import factories

pytestmark = pytest.mark.django_db


def code(org_id: int, kind: str) -> str:
    return services.account_code(org_id, kind)


def hold(org_id: int, amount: str, reference: str) -> ledger.TransactionDraft:
    return ledger.hold(
        available=code(org_id, "available"), held=code(org_id, "held"), amount=Decimal(amount), reference=reference
    )


def release(org_id: int, amount: str, reference: str) -> ledger.TransactionDraft:
    return ledger.release(
        held=code(org_id, "held"), available=code(org_id, "available"), amount=Decimal(amount), reference=reference
    )


def balances(org_id: int) -> tuple[Decimal, Decimal]:
    return services.balance(code(org_id, "available")), services.balance(code(org_id, "held"))


def books_balance() -> bool:
    """check_ledger's checks of the postings themselves (the holds drafted here have no Hold rows)."""
    return not (checks.unbalanced_transactions() or checks.stale_balances() or checks.forbidden_negative_balances())


def ledger_state() -> tuple[int, int, list[tuple[str, Decimal]]]:
    """Transactions, postings and every balance that is not zero (an account
    opened for a refused movement may stay, empty)."""
    return (
        LedgerTransaction.objects.count(),
        Posting.objects.count(),
        list(Account.objects.exclude(balance=0).order_by("code").values_list("code", "balance")),
    )


@pytest.fixture
def buyer_id() -> int:
    return factories.buyer(funds=Decimal("100.00")).organisation_id


def test_a_batch_moves_each_draft_once_and_the_books_balance(buyer_id):
    drafts = [hold(buyer_id, "1.10", f"lease:{i}") for i in range(30)]

    results = services.post_many(drafts, data=[{"lease": i} for i in range(30)])

    assert [created for _row, created in results] == [True] * 30
    rows = [row for row, _created in results]
    assert [row.key for row in rows] == [f"hold:lease:{i}" for i in range(30)]
    assert [LedgerTransaction.objects.get(pk=row.pk).data for row in rows] == [{"lease": i} for i in range(30)]
    assert balances(buyer_id) == (Decimal("67.00"), Decimal("33.00"))
    for tx in LedgerTransaction.objects.filter(kind="hold"):
        assert tx.postings.aggregate(total=Sum("amount"))["total"] == 0
    assert books_balance()


def test_a_retried_batch_returns_the_first_rows_and_moves_nothing(buyer_id):
    drafts = [hold(buyer_id, "2.00", f"lease:{i}") for i in range(10)]
    first = services.post_many(drafts)
    before = ledger_state()

    again = services.post_many(drafts)

    assert [row.pk for row, _ in again] == [row.pk for row, _ in first]
    assert not any(created for _, created in again)
    assert ledger_state() == before
    # One by one, the same keys are the same transactions too.
    row, created = services.post(drafts[3])
    assert (row.pk, created) == (first[3][0].pk, False)


def test_a_batch_mixing_posted_and_new_keys_moves_only_the_new(buyer_id):
    services.post_many([hold(buyer_id, "5.00", f"lease:{i}") for i in range(3)])

    results = services.post_many([hold(buyer_id, "5.00", f"lease:{i}") for i in range(5)])

    assert [created for _, created in results] == [False, False, False, True, True]
    assert balances(buyer_id) == (Decimal("75.00"), Decimal("25.00"))


def test_the_same_draft_twice_in_one_batch_is_posted_once(buyer_id):
    draft = hold(buyer_id, "7.00", "lease:1")

    results = services.post_many([draft, hold(buyer_id, "1.00", "lease:2"), draft])

    assert [created for _, created in results] == [True, True, False]
    assert results[0][0].pk == results[2][0].pk
    assert balances(buyer_id) == (Decimal("92.00"), Decimal("8.00"))


def test_a_key_reused_for_another_movement_in_the_batch_is_a_conflict_and_nothing_is_written(buyer_id):
    before = ledger_state()
    with pytest.raises(Conflict) as refused:
        services.post_many([hold(buyer_id, "1.00", "lease:1"), hold(buyer_id, "2.00", "lease:1")])
    assert refused.value.field == "key" and "hold:lease:1" in refused.value.detail
    assert ledger_state() == before


def test_a_key_posted_earlier_for_another_movement_refuses_the_whole_batch(buyer_id):
    services.post(hold(buyer_id, "1.00", "lease:1"))
    before = ledger_state()

    with pytest.raises(Conflict) as refused:
        services.post_many([hold(buyer_id, "3.00", "lease:2"), hold(buyer_id, "9.99", "lease:1")])

    assert "hold:lease:1" in refused.value.detail
    assert ledger_state() == before  # lease 2's hold, new and valid, was not written either
    assert not LedgerTransaction.objects.filter(key="hold:lease:2").exists()


def test_a_batch_one_draft_of_which_overdraws_the_wallet_writes_nothing(buyer_id):
    before = ledger_state()
    drafts = [
        hold(buyer_id, "40.00", "lease:1"),
        hold(buyer_id, "40.00", "lease:2"),
        hold(buyer_id, "40.00", "lease:3"),
    ]

    with pytest.raises(services.InsufficientFunds) as refused:
        services.post_many(drafts)

    assert refused.value.status == 402
    assert code(buyer_id, "available") in refused.value.detail and "40.00" in refused.value.detail
    assert ledger_state() == before
    assert balances(buyer_id) == (Decimal("100.00"), Decimal("0.00"))


def test_an_account_may_not_dip_below_zero_inside_a_batch_even_if_it_ends_above(buyer_id):
    # 120 held out of 100, then 50 released: the batch ends at 30 available, but the
    # first draft alone could not be posted, so neither can the batch.
    before = ledger_state()
    with pytest.raises(services.InsufficientFunds):
        services.post_many([hold(buyer_id, "120.00", "lease:1"), release(buyer_id, "50.00", "lease:0")])
    assert ledger_state() == before

    # The same movements in an order that never overdraws are fine.
    services.post_many([hold(buyer_id, "60.00", "lease:2"), release(buyer_id, "50.00", "lease:2")])
    assert balances(buyer_id) == (Decimal("90.00"), Decimal("10.00"))


def test_a_refused_post_inside_a_transaction_leaves_it_usable(buyer_id):
    with transaction.atomic():
        services.post(hold(buyer_id, "30.00", "lease:1"))
        with pytest.raises(services.InsufficientFunds):
            services.post(hold(buyer_id, "80.00", "lease:2"))
        with pytest.raises(services.InsufficientFunds):
            services.post_many([hold(buyer_id, "10.00", "lease:3"), hold(buyer_id, "70.00", "lease:4")])
        services.post(hold(buyer_id, "70.00", "lease:5"))
    assert balances(buyer_id) == (Decimal("0.00"), Decimal("100.00"))
    assert set(LedgerTransaction.objects.filter(kind="hold").values_list("key", flat=True)) == {
        "hold:lease:1",
        "hold:lease:5",
    }
    assert books_balance()


def test_balances_stay_exact_to_the_fen_over_many_small_movements(buyer_id):
    drafts = [hold(buyer_id, "0.01", f"c:{i}") for i in range(999)] + [hold(buyer_id, "90.00", "rest")]

    services.post_many(drafts)
    services.post(hold(buyer_id, "0.01", "last"))

    assert balances(buyer_id) == (Decimal("0.00"), Decimal("100.00"))
    with pytest.raises(services.InsufficientFunds):
        services.post(hold(buyer_id, "0.01", "one-too-many"))


def test_an_unbalanced_draft_refuses_the_batch_before_anything_is_sent(buyer_id):
    bad = ledger.TransactionDraft(
        key="hold:bad",
        kind="hold",
        postings=(ledger.Posting(code(buyer_id, "available"), Decimal("-1.00")), ledger.Posting("platform:x", 2)),
    )
    before = ledger_state()
    with pytest.raises(ledger.LedgerError):
        services.post_many([hold(buyer_id, "1.00", "lease:1"), bad])
    assert ledger_state() == before


def test_accounts_are_created_on_first_use(buyer_id):
    provider = factories.provider().organisation_id
    assert not Account.objects.filter(code=code(provider, "payable")).exists()
    draft = ledger.transfer(
        kind=ledger.TransactionKind.ADJUSTMENT,
        source=code(buyer_id, "available"),
        destination=code(provider, "payable"),
        amount=Decimal("12.34"),
        reference="x",
        memo="a first payment to a new provider",
    )

    services.post_many([draft])

    assert Account.objects.get(code=code(provider, "payable")).balance == Decimal("12.34")
    assert books_balance()
