from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain.ledger import (
    LedgerError,
    Posting,
    TransactionDraft,
    TransactionKind,
    balance_changes,
    capture,
    hold,
    payout,
    release,
    top_up,
    validate_transaction,
)
from billing.domain.pricing import Charge, LockedPrice, PricingType, charge

PROPERTY = settings(max_examples=200, deadline=None)

BANK = "platform:bank_clearing"
AVAILABLE = "org:12:available"
HELD = "org:12:held"
PAYABLE = "org:7:payable"
COMMISSION = "platform:commission"

positive_fen = st.integers(min_value=1, max_value=10**11).map(lambda n: D(n) * D("0.01"))
references = st.text(min_size=1, max_size=40).filter(str.strip)
rates = st.integers(min_value=0, max_value=1000).map(lambda n: D(n) / 1000)


def draft(*postings: tuple[str, str], key: str = "test:1") -> TransactionDraft:
    return TransactionDraft(key=key, postings=tuple(Posting(a, D(x)) for a, x in postings), kind="adjustment")


def a_charge(gross: D, rate: D) -> Charge:
    locked = LockedPrice(pricing_type=PricingType.ON_DEMAND, unit_price=gross, commission_rate=rate)
    return charge(locked, D(1), month_to_date_ncu_hours=D(0))


def test_a_balanced_transaction_passes():
    balanced = draft((AVAILABLE, "-10.00"), (HELD, "10.00"))
    assert validate_transaction(balanced) is balanced


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (draft((AVAILABLE, "-10.00"), (HELD, "9.99")), "sum to -0.01, not zero"),
        (draft((AVAILABLE, "-10.005"), (HELD, "10.005")), "whole number of fen"),
        (
            draft(
                (AVAILABLE, "0"),
            ),
            "1 posting",
        ),
        (draft(), "0 posting"),
        (draft((AVAILABLE, "-10.00"), (HELD, "10.00"), key=""), "idempotency key"),
        (draft((AVAILABLE, "-10.00"), (HELD, "10.00"), key="   "), "idempotency key"),
        (draft((AVAILABLE, "-10.00"), (AVAILABLE, "10.00")), "appears twice"),
        (draft((AVAILABLE, "-10.00"), (HELD, "10.00"), (PAYABLE, "0.00")), "is zero"),
        (draft(("", "-1.00"), (HELD, "1.00")), "without an account"),
    ],
)
def test_a_broken_transaction_is_refused_with_the_reason(broken, reason):
    with pytest.raises(LedgerError, match=reason):
        validate_transaction(broken)


def test_postings_refuse_floats():
    with pytest.raises(TypeError, match="float"):
        Posting(AVAILABLE, 10.0)  # type: ignore[arg-type]


def test_the_buyers_money_flows_from_top_up_to_payout():
    """A buyer tops up 500, 200 is held for a job, the job uses 123.45 at 8%
    commission, the rest of the hold is released and the provider paid."""
    metered = a_charge(D("123.45"), D("0.08"))
    drafts = [
        top_up(available=AVAILABLE, clearing=BANK, amount=D("500.00"), reference="alipay:2025030300001"),
        hold(available=AVAILABLE, held=HELD, amount=D("200.00"), reference="lease:42"),
        capture(
            held=HELD, provider_payable=PAYABLE, platform_commission=COMMISSION, charge=metered, reference="usage:9001"
        ),
        release(held=HELD, available=AVAILABLE, amount=D("76.55"), reference="lease:42"),
        payout(provider_payable=PAYABLE, clearing=BANK, amount=D("113.57"), reference="statement:2025-03:7"),
    ]
    assert balance_changes(drafts) == {
        AVAILABLE: D("376.55"),
        HELD: D("0.00"),
        PAYABLE: D("0.00"),
        COMMISSION: D("9.88"),
        BANK: D("-386.43"),
    }
    assert [d.kind for d in drafts] == ["top_up", "hold", "capture", "release", "payout"]
    assert drafts[1].key == "hold:lease:42"
    assert drafts[3].key == "release:lease:42"
    assert "113.57 to the provider, 9.88 commission" in drafts[2].memo


def test_the_same_event_gives_the_same_key_and_a_changed_replay_is_detectable():
    first = hold(available=AVAILABLE, held=HELD, amount=D("200.00"), reference="lease:42")
    again = hold(available=AVAILABLE, held=HELD, amount=D("200.00"), reference="lease:42")
    changed = hold(available=AVAILABLE, held=HELD, amount=D("250.00"), reference="lease:42")
    assert first == again
    assert first.key == changed.key == "hold:lease:42"
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint != changed.fingerprint


def test_builders_refuse_amounts_that_move_nothing_or_less_than_a_fen():
    with pytest.raises(LedgerError, match="positive"):
        top_up(available=AVAILABLE, clearing=BANK, amount=D("0"), reference="x")
    with pytest.raises(LedgerError, match="positive"):
        hold(available=AVAILABLE, held=HELD, amount=D("-5.00"), reference="lease:1")
    with pytest.raises(LedgerError, match="whole number of fen"):
        payout(provider_payable=PAYABLE, clearing=BANK, amount=D("1.001"), reference="s:1")
    with pytest.raises(LedgerError, match="reference"):
        release(held=HELD, available=AVAILABLE, amount=D("1.00"), reference=" ")
    with pytest.raises(LedgerError, match="positive"):
        capture(
            held=HELD,
            provider_payable=PAYABLE,
            platform_commission=COMMISSION,
            charge=a_charge(D("0"), D("0.08")),
            reference="usage:1",
        )


def test_a_capture_without_commission_pays_the_provider_everything():
    captured = capture(
        held=HELD,
        provider_payable=PAYABLE,
        platform_commission=COMMISSION,
        charge=a_charge(D("10.00"), D("0")),
        reference="usage:2",
    )
    assert balance_changes([captured]) == {HELD: D("-10.00"), PAYABLE: D("10.00")}


def test_a_capture_refuses_a_charge_that_does_not_split():
    forged = Charge(
        pricing_type=PricingType.ON_DEMAND,
        ncu_hours=D(1),
        unit_price=D(10),
        gross=D("10.00"),
        commission_rate=D("0.08"),
        commission=D("0.80"),
        provider_share=D("9.30"),
    )
    with pytest.raises(LedgerError, match="does not split"):
        capture(held=HELD, provider_payable=PAYABLE, platform_commission=COMMISSION, charge=forged, reference="u:3")


@PROPERTY
@given(positive_fen, references)
def test_every_transfer_builder_balances(amount, reference):
    drafts = [
        top_up(available=AVAILABLE, clearing=BANK, amount=amount, reference=reference),
        hold(available=AVAILABLE, held=HELD, amount=amount, reference=reference),
        release(held=HELD, available=AVAILABLE, amount=amount, reference=reference),
        payout(provider_payable=PAYABLE, clearing=BANK, amount=amount, reference=reference),
    ]
    for built in drafts:
        assert sum(p.amount for p in built.postings) == 0
        assert validate_transaction(built) is built
        assert built.key == f"{built.kind}:{reference}"
    assert len({built.key for built in drafts}) == len(drafts)
    # top-up then hold then release leaves the money available and nothing held
    assert balance_changes(drafts[:3]) == {AVAILABLE: amount, HELD: 0, BANK: -amount}


@PROPERTY
@given(positive_fen, rates, references)
def test_a_capture_splits_the_charge_exactly(gross, rate, reference):
    metered = a_charge(gross, rate)
    captured = capture(
        held=HELD, provider_payable=PAYABLE, platform_commission=COMMISSION, charge=metered, reference=reference
    )
    changes = balance_changes([captured])
    assert sum(changes.values()) == 0
    assert changes[HELD] == -gross
    assert changes.get(PAYABLE, 0) == metered.provider_share
    assert changes.get(COMMISSION, 0) == metered.commission
    assert changes.get(PAYABLE, 0) + changes.get(COMMISSION, 0) == gross
    assert captured.kind is TransactionKind.CAPTURE


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([AVAILABLE, HELD, PAYABLE, BANK]), positive_fen), min_size=1, max_size=6))
def test_validation_accepts_exactly_the_balanced_fen_exact_drafts(lines):
    amounts: dict[str, D] = {}
    for account, amount in lines:
        amounts[account] = amounts.get(account, D(0)) + amount
    postings = [Posting(account, amount) for account, amount in amounts.items()]
    unbalanced = TransactionDraft(key="k", postings=(*postings, Posting(COMMISSION, D("0.01"))), kind="x")
    balanced = TransactionDraft(key="k", postings=(*postings, Posting(COMMISSION, -sum(amounts.values()))), kind="x")
    assert validate_transaction(balanced) is balanced
    with pytest.raises(LedgerError, match="not zero"):
        validate_transaction(unbalanced)
