"""``manage.py check_ledger`` passes on sound books made through the services
and names every kind of breach after rows are corrupted behind their back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connection, connections
from django.db.models import F
from django.utils import timezone

from billing import charging, checks, services, settlement
from billing.domain import ledger
from billing.models import (
    Account,
    Charge,
    Hold,
    LedgerTransaction,
    Posting,
    SettlementStatement,
    StatementLine,
    UsageSample,
)
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories

pytestmark = pytest.mark.django_db


@dataclass
class Books:
    rich: object
    poor: object
    lease: Lease
    poor_lease: Lease
    provider_statement: SettlementStatement


def _lease(buyer) -> Lease:
    job = factories.submit(buyer)
    scheduler_services.cycle_run()
    return Lease.objects.select_related("job", "pool__site").get(job=job)


def _meter(lease: Lease, sequence: int, ncu_hours: Decimal) -> UsageSample:
    start = lease.start + timedelta(minutes=sequence)
    sample, _ = services.usage_record(
        lease=lease, sequence=sequence, start=start, end=start + timedelta(minutes=1), ncu_hours=ncu_hours
    )
    return sample


@pytest.fixture
def books() -> Books:
    """A buyer who pays from a hold and a wallet, one who ends up owing, a
    zero-value sample, a closed hold and a settled period."""
    factories.market(pools=2, nodes=1)
    rich, poor = factories.buyer(), factories.buyer(funds=Decimal("100.00"))
    opened = timezone.now() - timedelta(minutes=5)
    services.wallet_top_up(organisation=rich.organisation, amount=Decimal("50000.00"), reference="R", actor=rich)
    lease = _lease(rich)
    poor_lease = _lease(poor)  # its estimated cost is held when it is scheduled
    quarter = (lease.ncu_hours / 4).quantize(Decimal("0.0001"))
    for sequence in range(1, 4):
        _meter(lease, sequence, quarter)
    _meter(lease, 4, Decimal("0"))  # nothing used: settled without a charge
    # 10.00 CNY more than the 100.00 the poor buyer paid in: owed.
    _meter(poor_lease, 1, (Decimal("110.00") / poor_lease.unit_price).quantize(Decimal("0.0001")))
    assert charging.charge_pending(limit=100) == 5
    services.hold_close(lease=lease)
    settlement.settlement_close(start=opened, end=timezone.now())
    statement = SettlementStatement.objects.get(role="provider")
    return Books(rich=rich, poor=poor, lease=lease, poor_lease=poor_lease, provider_statement=statement)


@contextmanager
def constraint_off(model: type, name: str) -> Iterator[None]:
    """Let rows break a CHECK constraint, as a bug in raw SQL or a manual fix
    in the database console could; the test's transaction restores it."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the deferred foreign key checks first
            cursor.execute(f'ALTER TABLE "{model._meta.db_table}" DROP CONSTRAINT "{name}"')
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            yield
        else:
            cursor.execute("PRAGMA ignore_check_constraints = ON")
            try:
                yield
            finally:
                cursor.execute("PRAGMA ignore_check_constraints = OFF")


def breaches() -> str:
    return "\n".join(checks.ledger_breaches())


def assert_command_fails_naming(fragment: str) -> None:
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_ledger", stdout=out, stderr=StringIO())
    assert fragment in out.getvalue()


# --- sound books -----------------------------------------------------------------------------------------------------


def test_sound_books_pass_every_check(books):
    assert Charge.objects.count() == 4 and UsageSample.objects.filter(charged=True).count() == 5
    assert Charge.objects.filter(owed__gt=0).exists(), "the poor buyer owes"
    assert Charge.objects.filter(provider_statement__isnull=True).count() == 0
    assert checks.ledger_breaches() == []
    out = StringIO()
    call_command("check_ledger", stdout=out)
    assert "every check passed" in out.getvalue()


def test_the_command_exits_non_zero_with_one_line_per_breach(books, capsys, monkeypatch):
    monkeypatch.setattr(connections, "close_all", lambda: None)  # keep the test's transaction
    for account in Account.objects.filter(kind="payable"):
        Account.objects.filter(pk=account.pk).update(balance=F("balance") + Decimal("1.00"))
    with pytest.raises(SystemExit) as exit_:
        load_command_class("billing", "check_ledger").run_from_argv(["manage.py", "check_ledger"])
    assert exit_.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [line for line in lines if "caches a balance of" in line]
    assert len(lines) == Account.objects.filter(kind="payable").count() >= 1


def test_the_listing_stops_at_the_limit(books):
    Account.objects.filter(organisation__isnull=False).update(balance=F("balance") + Decimal("1.00"))
    found = checks.stale_balances(limit=2)
    assert len(found) == 3 and found[-1].startswith("… and more")


# --- each breach -----------------------------------------------------------------------------------------------------


def test_a_transaction_whose_postings_do_not_sum_to_zero(books):
    top_up = LedgerTransaction.objects.get(key__startswith="top_up:", data__reference="R")
    Posting.objects.filter(transaction=top_up, amount__gt=0).update(amount=F("amount") + Decimal("0.01"))
    assert f"({top_up.key}) has postings summing to 0.01, not zero" in breaches()
    assert_command_fails_naming(top_up.key)


def test_a_transaction_missing_one_side(books):
    top_up = LedgerTransaction.objects.get(key__startswith="top_up:", data__reference="R")
    Posting.objects.filter(transaction=top_up, amount__lt=0).delete()
    assert f"({top_up.key}) has postings summing to 50000.00, not zero" in breaches()


def test_a_cached_balance_that_is_not_the_sum_of_postings(books):
    code = services.account_code(books.rich.organisation_id, "available")
    Account.objects.filter(code=code).update(balance=F("balance") - Decimal("0.01"))
    assert f"Account {code} caches a balance of" in breaches()


def test_an_account_below_zero_that_may_not_go_negative(books):
    code = services.account_code(books.poor.organisation_id, "available")
    account = Account.objects.get(code=code)
    # The flag that arms the database's check is switched off, then the wallet is overspent.
    Account.objects.filter(pk=account.pk).update(may_go_negative=True)
    services.post(
        ledger.transfer(
            kind=ledger.TransactionKind.ADJUSTMENT,
            source=code,
            destination=services.ADJUSTMENTS,
            amount=account.balance + Decimal("3.00"),
            reference="overspent",
            memo="",
        )
    )
    found = breaches()
    assert f"Account {code} (available) may not go below zero but stands at -3.00" in found
    assert f"Account {code} (available) is flagged as allowed to go negative" in found
    assert "caches a balance" not in found and "summing to" not in found


def test_a_sample_marked_charged_without_a_charge(books):
    sample = _meter(books.lease, 10, Decimal("1.0000"))
    UsageSample.objects.filter(pk=sample.pk).update(charged=True)
    assert f"Usage sample {sample.pk} (lease {books.lease.pk}, sequence 10) is marked charged but has no charge" in (
        breaches()
    )


def test_a_sample_too_cheap_after_the_volume_discount_may_have_no_charge():
    provider = factories.provider()
    pool = factories.pool(provider, factories.site(provider), node_count=1)
    tiers = [{"from_ncu_hours": "0", "discount": "0.60"}]
    factories.offer(provider, pool, price_rules={"volume_tiers": tiers})
    lease = _lease(factories.buyer())
    # Worth 0.015 at the locked price, 0.006 after 60% off: a fen at most, rounded to nothing or one.
    cheap = _meter(lease, 1, (Decimal("0.015") / lease.unit_price).quantize(Decimal("0.0001")))
    dear = _meter(lease, 2, (Decimal("0.030") / lease.unit_price).quantize(Decimal("0.0001")))
    UsageSample.objects.filter(pk__in=[cheap.pk, dear.pk]).update(charged=True)
    found = breaches()
    assert f"Usage sample {cheap.pk} " not in found
    assert f"Usage sample {dear.pk} (lease {lease.pk}, sequence 2) is marked charged but has no charge" in found


def test_a_charge_whose_sample_is_not_marked_charged(books):
    charge = Charge.objects.filter(lease=books.lease).first()
    UsageSample.objects.filter(pk=charge.sample_id).update(charged=False)
    assert f"has charge {charge.pk} but is not marked charged" in breaches()


def test_a_charge_whose_gross_is_not_commission_plus_provider_share(books):
    charge = Charge.objects.filter(lease=books.lease).first()
    with constraint_off(Charge, "charge_split_exact"):
        Charge.objects.filter(pk=charge.pk).update(commission=F("commission") + Decimal("0.01"))
        found = breaches()
    assert f"Charge {charge.pk}: gross {charge.gross} is not commission {charge.commission + Decimal('0.01')}" in found


def test_a_charge_whose_funding_does_not_add_up(books):
    charge = Charge.objects.filter(lease=books.lease).first()
    with constraint_off(Charge, "charge_funded_exactly"):
        Charge.objects.filter(pk=charge.pk).update(from_hold=F("from_hold") + Decimal("1.00"))
        found = breaches()
    assert f"Charge {charge.pk}: gross {charge.gross} is not what funded it" in found
    assert f"Charge {charge.pk} does not match its transaction" in found


def test_a_charge_whose_transaction_moves_other_amounts(books):
    charge = Charge.objects.filter(lease=books.lease).first()
    Charge.objects.filter(pk=charge.pk).update(
        commission=F("commission") + Decimal("0.01"), provider_share=F("provider_share") - Decimal("0.01")
    )
    found = breaches()
    assert f"Charge {charge.pk} does not match its transaction {charge.transaction.key}: to commission" in found


def test_a_charge_whose_transaction_pays_someone_else(books):
    charge = Charge.objects.filter(lease=books.lease).first()
    stranger = Account.objects.get(code=services.account_code(books.poor.organisation_id, "available"))
    posting = charge.transaction.postings.get(amount=charge.provider_share)
    Posting.objects.filter(pk=posting.pk).update(account=stranger)
    found = breaches()
    assert f"Charge {charge.pk} does not match its transaction" in found
    assert "1 posting(s) to accounts that are not the charge's" in found


def test_a_statement_whose_totals_are_not_its_lines(books):
    statement = books.provider_statement
    StatementLine.objects.filter(statement=statement).update(gross=F("gross") + Decimal("1.00"))
    found = breaches()
    assert f"Statement {statement.pk} (provider, organisation {statement.organisation_id}): gross" in found
    assert "but its lines sum to" in found


def test_a_statement_whose_totals_are_not_its_charges(books):
    statement = books.provider_statement
    charge = Charge.objects.filter(provider_statement=statement).first()
    Charge.objects.filter(pk=charge.pk).update(provider_statement=None)
    found = breaches()
    assert f"Statement {statement.pk} (provider, organisation {statement.organisation_id}): gross" in found
    assert "but its charges sum to" in found
    assert "but its lines sum to" not in found


def test_a_hold_captured_and_released_beyond_its_amount(books):
    hold = Hold.objects.get(lease=books.lease)
    with constraint_off(Hold, "hold_not_overdrawn"):
        Hold.objects.filter(pk=hold.pk).update(released=F("released") + Decimal("0.50"))
        found = breaches()
    assert f"Hold {hold.pk} (lease {books.lease.pk}) of {hold.amount}" in found
    assert "0.50 more than it held" in found


def test_a_hold_whose_captured_part_is_not_what_its_charges_drew(books):
    hold = Hold.objects.get(lease=books.lease)
    Hold.objects.filter(pk=hold.pk).update(
        captured=F("captured") - Decimal("0.01"), released=F("released") + Decimal("0.01")
    )
    found = breaches()
    assert f"Hold {hold.pk} (lease {books.lease.pk}) shows {hold.captured - Decimal('0.01')} captured" in found


def test_a_voucher_funded_charge_is_sound_and_its_voucher_leg_is_checked(operator):
    from tests.vouchers import helpers

    factories.market(nodes=1)
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    charge = helpers.charge(helpers.lease_for(buyer), "10.00")
    assert charge.voucher_funded > 0
    assert checks.ledger_breaches() == []
    Charge.objects.filter(pk=charge.pk).update(
        voucher_funded=F("voucher_funded") + Decimal("0.01"), from_hold=F("from_hold") - Decimal("0.01")
    )
    found = breaches()
    assert f"Charge {charge.pk} does not match its transaction" in found
    assert f"out of vouchers {charge.voucher_funded} but the charge's voucher_funded is" in found
