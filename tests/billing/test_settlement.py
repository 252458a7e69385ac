"""Settlement of charges into statements and the operator's review of them."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F, Sum
from django.utils import timezone

from billing import services, settlement
from billing.domain.pricing import CST
from billing.models import (
    Charge,
    LedgerTransaction,
    SettlementPeriod,
    SettlementStatement,
    StatementLine,
)
from core.errors import Conflict, Forbidden, IllegalTransition, InvalidInput
from core.models import AuditEntry
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests import factories

pytestmark = pytest.mark.django_db

RATE = Decimal("0.08")


def payable(org) -> Decimal:
    return services.balance(services.account_code(org.pk, "payable"))


def disputed(org) -> Decimal:
    return services.balance(services.account_code(org.pk, "disputed"))


def charged_leases(count: int, *, buyer=None, provider=None, samples: int = 2):
    """``count`` leases of one buyer on one provider's pool, each with
    ``samples`` usage samples charged. Returns (provider user, buyer user, leases)."""
    if provider is None:
        provider, _pools = factories.market(nodes=count)
    buyer = buyer or factories.buyer()
    services.wallet_top_up(
        organisation=buyer.organisation, amount=Decimal("1000000.00"), reference=f"R{buyer.pk}", actor=buyer
    )
    jobs = [factories.submit(buyer) for _ in range(count)]
    scheduler_services.cycle_run()
    leases = list(Lease.objects.filter(job__in=jobs, pool__site__provider=provider.organisation).order_by("id"))
    assert len(leases) == count
    for lease in leases:
        services.hold_for_lease(lease=lease)
        charge_usage(lease, range(1, samples + 1))
    return provider, buyer, leases


def charge_usage(lease: Lease, sequences) -> list[Charge]:
    charges = []
    for sequence in sequences:
        start = lease.start + timedelta(minutes=10 * (sequence - 1))
        sample, _ = services.usage_record(
            lease=lease,
            sequence=sequence,
            start=start,
            end=start + timedelta(minutes=10),
            ncu_hours=lease.ncu_hours / 20,
        )
        charges.append(services.charge_sample(sample_id=sample.pk, commission_rate=RATE).charge)
    return charges


def close_until_now(start: datetime | None = None) -> SettlementPeriod:
    return settlement.settlement_close(start=start or timezone.now() - timedelta(hours=1), end=timezone.now())


def provider_statement(provider) -> SettlementStatement:
    return SettlementStatement.objects.get(organisation=provider.organisation, role="provider")


# --- periods ---------------------------------------------------------------------------------------------------------


def test_daily_periods_run_from_midnight_to_midnight_china_standard_time():
    start, end = settlement.period_containing(datetime(2026, 3, 1, 17, 30, tzinfo=UTC), hours=24)
    assert start.astimezone(CST) == datetime(2026, 3, 2, tzinfo=CST)  # 01:30 on 2 March in Beijing
    assert end - start == timedelta(hours=24)
    assert start.utcoffset() == timedelta(0)
    six_hourly = settlement.period_containing(datetime(2026, 3, 1, 23, 0, tzinfo=CST), hours=6)
    assert six_hourly[0] == datetime(2026, 3, 1, 18, 0, tzinfo=CST)


def test_a_provider_with_three_leases_in_a_day_is_paid_once_after_approval(operator):
    provider, _buyer, leases = charged_leases(3)
    charges = Charge.objects.filter(provider=provider.organisation)
    totals = charges.aggregate(gross=Sum("gross"), commission=Sum("commission"), net=Sum("provider_share"))

    period = close_until_now()

    assert period.status == "closed"
    statement = provider_statement(provider)
    assert statement.status == "pending_review"
    lines = list(statement.lines.order_by("lease_id"))
    assert [line.lease_id for line in lines] == [lease.pk for lease in leases]
    assert all(line.samples == 2 for line in lines)
    assert statement.samples == 6
    assert (statement.gross, statement.commission, statement.net) == (
        totals["gross"],
        totals["commission"],
        totals["net"],
    )
    assert statement.gross == sum(line.gross for line in lines)
    assert statement.net == statement.gross - statement.commission
    assert payable(provider.organisation) == statement.net
    clearing_before = services.balance(services.BANK_CLEARING)

    paid = settlement.statement_approve(statement=statement, actor=operator, reason="matches the agent's logs")

    assert paid.status == "paid"
    assert payable(provider.organisation) == 0
    assert services.balance(services.BANK_CLEARING) == clearing_before + statement.net
    payout = settlement.statement_payout(paid)
    assert payout.key == f"payout:statement:{statement.pk}" and payout.amount == statement.net
    with pytest.raises(IllegalTransition) as refused:
        settlement.statement_approve(statement=statement, actor=operator)
    assert refused.value.extra["current"] == "paid"
    assert LedgerTransaction.objects.filter(kind="payout").count() == 1
    assert services.balance(services.BANK_CLEARING) == clearing_before + statement.net
    history = settlement.statement_history(statement)
    actions = list(history.values_list("action", "actor_label", "from_state", "to_state"))
    assert actions[1:] == [
        ("statement.approved", operator.username, "pending_review", "approved"),
        ("statement.paid", operator.username, "approved", "paid"),
    ]


def test_the_buyer_gets_a_final_statement_of_its_own_leases():
    _provider, buyer, _leases = charged_leases(2)
    close_until_now()
    statement = SettlementStatement.objects.get(organisation=buyer.organisation, role="buyer")
    assert statement.status == "final"
    assert statement.lines.count() == 2
    assert statement.gross == Charge.objects.filter(buyer=buyer.organisation).aggregate(t=Sum("gross"))["t"]
    assert all(c.buyer_statement_id == statement.pk for c in Charge.objects.all())
    with pytest.raises(IllegalTransition):
        settlement.statement_approve(statement=statement, actor=factories.operator())


def test_each_provider_and_each_buyer_gets_one_statement_with_totals_equal_to_its_lines():
    first_provider, buyer, _ = charged_leases(2)
    second_provider, _pools = factories.market(nodes=2)
    charged_leases(1, buyer=buyer, provider=second_provider)
    _, other_buyer, _ = charged_leases(1, provider=second_provider)
    period = close_until_now()
    statements = SettlementStatement.objects.filter(period=period)
    assert sorted(statements.values_list("organisation_id", "role")) == sorted(
        [
            (first_provider.organisation.pk, "provider"),
            (second_provider.organisation.pk, "provider"),
            (buyer.organisation.pk, "buyer"),
            (other_buyer.organisation.pk, "buyer"),
        ]
    )
    for statement in statements:
        lines = StatementLine.objects.filter(statement=statement)
        sums = lines.aggregate(g=Sum("gross"), c=Sum("commission"), n=Sum("net"), s=Sum("samples"))
        assert (statement.gross, statement.commission, statement.net, statement.samples) == (
            sums["g"],
            sums["c"],
            sums["n"],
            sums["s"],
        )
    assert not Charge.objects.filter(provider_statement__isnull=True).exists()
    assert not Charge.objects.filter(buyer_statement__isnull=True).exists()


def test_statements_show_what_compute_vouchers_funded(operator):
    from tests.vouchers import helpers

    provider, _pools = factories.market(nodes=1)
    buyer = factories.buyer()
    programme = helpers.programme(operator, budget="100000.00")  # a 30% voucher
    helpers.voucher(buyer, programme, operator, amount="5000.00")
    lease = helpers.lease_for(buyer)
    helpers.charge(lease, "1000.00")
    helpers.charge(lease, "100.00")
    close_until_now()
    statement = provider_statement(provider)
    assert (statement.gross, statement.voucher_funded) == (Decimal("1100.00"), Decimal("330.00"))
    buyer_statement = SettlementStatement.objects.get(organisation=buyer.organisation, role="buyer")
    assert buyer_statement.voucher_funded == Decimal("330.00")


def test_closing_the_same_period_twice_creates_nothing_new():
    charged_leases(1)
    start, end = timezone.now() - timedelta(hours=2), timezone.now()
    first = settlement.settlement_close(start=start, end=end)
    counts = (SettlementStatement.objects.count(), StatementLine.objects.count(), AuditEntry.objects.count())
    again = settlement.settlement_close(start=start, end=end)
    assert again.pk == first.pk
    assert (SettlementStatement.objects.count(), StatementLine.objects.count(), AuditEntry.objects.count()) == counts


def test_a_charge_made_after_a_period_closed_lands_in_the_next_periods_statement():
    provider, _buyer, leases = charged_leases(1)
    first = close_until_now()
    late = charge_usage(leases[0], [3])[0]
    second = settlement.settlement_close(start=first.end, end=timezone.now())
    late.refresh_from_db()
    statements = SettlementStatement.objects.filter(organisation=provider.organisation, role="provider")
    assert late.provider_statement == statements.get(period=second)
    assert statements.get(period=second).samples == 1
    assert statements.get(period=first).samples == 2


def test_a_charge_committed_after_its_period_closed_is_settled_in_the_next_period():
    _provider, _buyer, leases = charged_leases(1)
    first = close_until_now()
    straggler = charge_usage(leases[0], [3])[0]
    # Its transaction began before the period ended and committed after it closed.
    Charge.objects.filter(pk=straggler.pk).update(created_at=first.end - timedelta(seconds=1))
    second = settlement.settlement_close(start=first.end, end=timezone.now())
    straggler.refresh_from_db()
    assert straggler.provider_statement.period == second


def test_periods_may_not_overlap_nor_end_in_the_future():
    now = timezone.now()
    settlement.settlement_close(start=now - timedelta(hours=3), end=now - timedelta(hours=1))
    with pytest.raises(Conflict):
        settlement.settlement_close(start=now - timedelta(hours=2), end=now)
    with pytest.raises(InvalidInput):
        settlement.settlement_close(start=now, end=now + timedelta(hours=1))
    with pytest.raises(InvalidInput):
        settlement.settlement_close(start=now, end=now - timedelta(hours=1))


def test_the_task_closes_every_elapsed_day_once(settings):
    settings.CX_SETTLEMENT_PERIOD_HOURS = 24
    provider, _buyer, _ = charged_leases(1)
    # As if the usage had been charged two days ago.
    Charge.objects.update(created_at=F("created_at") - timedelta(days=2))
    closed = settlement.settlement_close_due()
    today, _ = settlement.period_containing(timezone.now())
    assert [p.end for p in closed] == [today - timedelta(days=1), today]
    assert all(p.end - p.start == timedelta(hours=24) for p in closed)
    assert provider_statement(provider).period == closed[0]
    assert settlement.settlement_close_due() == []
    assert SettlementPeriod.objects.count() == 2


def test_the_celery_tasks_close_due_periods_and_a_period_given_by_its_bounds(settings):
    from billing import tasks

    settings.CX_SETTLEMENT_PERIOD_HOURS = 24
    provider, _buyer, _ = charged_leases(1)
    Charge.objects.update(created_at=F("created_at") - timedelta(days=1))
    closed = tasks.close_due_periods()["closed"]
    assert closed == [provider_statement(provider).period_id]
    assert tasks.close_due_periods() == {"closed": []}
    today, _ = settlement.period_containing(timezone.now())
    pk = tasks.close_period(today.isoformat(), timezone.now().isoformat())
    assert SettlementPeriod.objects.get(pk=pk).start == today
    with pytest.raises(InvalidInput):
        tasks.close_period("yesterday", "today")


def test_closing_due_periods_leaves_out_a_period_closed_by_hand(settings):
    settings.CX_SETTLEMENT_PERIOD_HOURS = 24
    today, _ = settlement.period_containing(timezone.now())
    by_hand = settlement.settlement_close(start=today - timedelta(hours=20), end=today - timedelta(hours=10))
    closed = settlement.settlement_close_due()
    assert [(p.start, p.end) for p in closed] == [
        (today - timedelta(hours=24), by_hand.start),
        (by_hand.end, today),
    ]


# --- review ----------------------------------------------------------------------------------------------------------


def test_a_dispute_holds_back_the_amount_until_approval(operator):
    provider, _buyer, _ = charged_leases(2)
    close_until_now()
    statement = provider_statement(provider)
    held_back = Decimal("1.00")
    with pytest.raises(InvalidInput):
        settlement.statement_dispute(statement=statement, actor=operator, reason="", amount=held_back)
    with pytest.raises(InvalidInput):
        settlement.statement_dispute(
            statement=statement, actor=operator, reason="too much", amount=statement.net + Decimal("0.01")
        )

    statement = settlement.statement_dispute(
        statement=statement, actor=operator, reason="node 2 reported usage while down", amount=held_back
    )

    assert statement.status == "disputed"
    assert statement.disputed_amount == held_back
    assert statement.payable == statement.net - held_back
    assert payable(provider.organisation) == statement.net - held_back
    assert disputed(provider.organisation) == held_back
    entry = settlement.statement_history(statement).get(action="statement.disputed")
    assert (entry.reason, entry.actor_label, entry.data["amount"]) == (
        "node 2 reported usage while down",
        operator.username,
        "1.00",
    )
    credit = Decimal("0.50")
    statement = settlement.statement_adjust(statement=statement, actor=operator, amount=credit, reason="goodwill")

    paid = settlement.statement_approve(statement=statement, actor=operator, reason="logs checked")

    assert paid.status == "paid" and paid.disputed_amount == 0
    assert settlement.statement_payout(paid).amount == statement.net + credit
    assert payable(provider.organisation) == 0
    assert disputed(provider.organisation) == 0
    assert LedgerTransaction.objects.get(key=f"dispute_resolved:statement:{statement.pk}")


def test_adjustments_are_ledger_transactions_with_their_reason(operator):
    provider, _buyer, _ = charged_leases(1)
    close_until_now()
    statement = provider_statement(provider)
    adjustments_before = services.balance(services.ADJUSTMENTS)

    statement = settlement.statement_adjust(
        statement=statement, actor=operator, amount=Decimal("12.34"), reason="SLA credit for a late start"
    )
    statement = settlement.statement_adjust(
        statement=statement, actor=operator, amount=Decimal("-2.00"), reason="duplicate sample"
    )

    assert statement.adjustments == Decimal("10.34")
    assert statement.payable == statement.net + Decimal("10.34")
    assert payable(provider.organisation) == statement.net + Decimal("10.34")
    assert services.balance(services.ADJUSTMENTS) == adjustments_before - Decimal("10.34")
    memos = list(LedgerTransaction.objects.filter(kind="adjustment").order_by("id").values_list("memo", flat=True))
    assert len(memos) == 2
    assert memos[0].startswith("Credit of 12.34") and "SLA credit for a late start" in memos[0]
    assert memos[1].startswith("Debit of 2.00") and "duplicate sample" in memos[1]
    reasons = settlement.statement_history(statement).filter(action="statement.adjusted").values_list("reason")
    assert [r for (r,) in reasons] == ["SLA credit for a late start", "duplicate sample"]
    with pytest.raises(InvalidInput):
        settlement.statement_adjust(statement=statement, actor=operator, amount=Decimal("5"), reason=" ")
    with pytest.raises(InvalidInput):
        settlement.statement_adjust(
            statement=statement, actor=operator, amount=-(statement.payable + Decimal("0.01")), reason="too much"
        )
    assert settlement.statement_payout(settlement.statement_approve(statement=statement, actor=operator)).amount == (
        statement.net + Decimal("10.34")
    )
    with pytest.raises(IllegalTransition):
        settlement.statement_adjust(statement=statement, actor=operator, amount=Decimal("1.00"), reason="late")


def test_an_adjustment_retried_with_its_reference_is_made_once(operator):
    provider, _buyer, _ = charged_leases(1)
    close_until_now()
    statement = provider_statement(provider)
    for _ in range(2):
        statement = settlement.statement_adjust(
            statement=statement, actor=operator, amount=Decimal("3.00"), reason="credit", reference="TICKET-7"
        )
    assert statement.adjustments == Decimal("3.00")
    with pytest.raises(Conflict):
        settlement.statement_adjust(
            statement=statement, actor=operator, amount=Decimal("4.00"), reason="credit", reference="TICKET-7"
        )


def test_a_zero_payable_statement_pays_nothing_but_ends_paid(operator):
    provider, _buyer, _ = charged_leases(1)
    close_until_now()
    statement = provider_statement(provider)
    statement = settlement.statement_adjust(
        statement=statement, actor=operator, amount=-statement.net, reason="usage not delivered"
    )
    paid = settlement.statement_approve(statement=statement, actor=operator)
    assert paid.status == "paid"
    assert settlement.statement_payout(paid) is None
    assert not LedgerTransaction.objects.filter(kind="payout").exists()


def test_only_operators_review(provider):
    other, _buyer, _ = charged_leases(1)
    close_until_now()
    statement = provider_statement(other)
    with pytest.raises(Forbidden):
        settlement.statement_approve(statement=statement, actor=other)
    with pytest.raises(Forbidden):
        settlement.statement_dispute(statement=statement, actor=provider, reason="x", amount=Decimal("1.00"))
    assert SettlementStatement.objects.get(pk=statement.pk).status == "pending_review"


def test_a_paid_statement_cannot_be_disputed(operator):
    provider, _buyer, _ = charged_leases(1)
    close_until_now()
    statement = settlement.statement_approve(statement=provider_statement(provider), actor=operator)
    with pytest.raises(IllegalTransition) as refused:
        settlement.statement_dispute(statement=statement, actor=operator, reason="late", amount=Decimal("1.00"))
    assert refused.value.extra == {"current": "paid", "target": "disputed"}


# --- several workers at once (PostgreSQL) -----------------------------------------------------------------------------


def run_together(target, count: int) -> list:
    """``target(i)`` in ``count`` threads released at once, each on its own connection;
    returns results and exceptions in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = target(i)
        except Exception as error:  # returned to the test
            results[i] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a worker did not finish"
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_operators_approving_at_once_pay_the_provider_once():
    provider, _buyer, _ = charged_leases(2)
    close_until_now()
    statement = provider_statement(provider)
    operators = [factories.operator() for _ in range(4)]

    results = run_together(lambda i: settlement.statement_approve(statement=statement, actor=operators[i]), 4)

    assert sum(isinstance(r, SettlementStatement) for r in results) == 1
    assert all(isinstance(r, (SettlementStatement, IllegalTransition)) for r in results), results
    assert LedgerTransaction.objects.filter(kind="payout").count() == 1
    assert payable(provider.organisation) == 0
    assert SettlementStatement.objects.get(pk=statement.pk).status == "paid"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_workers_closing_one_period_at_once_settle_every_charge_once():
    provider, buyer, _ = charged_leases(3)
    start, end = timezone.now() - timedelta(hours=1), timezone.now()

    results = run_together(lambda i: settlement.settlement_close(start=start, end=end), 4)

    assert all(isinstance(r, SettlementPeriod) for r in results), results
    assert len({r.pk for r in results}) == 1
    assert SettlementStatement.objects.count() == 2
    assert StatementLine.objects.count() == 6
    assert not Charge.objects.filter(provider_statement__isnull=True).exists()
    assert provider_statement(provider).samples == Charge.objects.filter(buyer=buyer.organisation).count() == 6
    assert AuditEntry.objects.filter(action="settlement.period_closed").count() == 1
