"""The ledger movements of voucher programmes, as transaction drafts for
``billing.services.post`` (see :mod:`billing.domain.ledger` for the sign
convention and idempotency keys).

Accounts (codes)::

    programme:<id>:budget   the programme's uncommitted budget
    programme:<id>:lapsed   balances forfeited at expiry (never reissued)
    voucher:<id>            one voucher's balance

Money flow::

    fund      bank clearing      → programme budget      (the authority's deposit)
    issue     programme budget   → voucher               (发放: committed at issuance)
    redeem    voucher            → provider payable + platform commission
              (核销: part of the charge's capture, next to the buyer's hold and wallet)
    expire    voucher            → programme budget, or → programme lapsed
    clawback  buyer wallet/debt  → programme budget      (a rejected redemption re-billed to the buyer)
              platform adjustments → programme budget    (… or written off by the platform)
    refund    provider payable + platform commission → vouchers (or programme) + buyer wallet

None of these accounts may go below zero (the database refuses it), so the
budget can never be over-committed and no voucher overdrawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from enum import StrEnum

from billing.domain.ledger import LedgerError, Posting, TransactionDraft, validate_transaction
from billing.domain.money import as_decimal, is_fen_exact


class VoucherMovement(StrEnum):
    FUND = "voucher_fund"
    ISSUE = "voucher_issue"
    EXPIRE = "voucher_expire"
    CLAWBACK = "voucher_clawback"
    REFUND = "charge_refund"


def budget_account(programme_id: int) -> str:
    return f"programme:{programme_id}:budget"


def lapsed_account(programme_id: int) -> str:
    return f"programme:{programme_id}:lapsed"


def voucher_account(voucher_id: int) -> str:
    return f"voucher:{voucher_id}"


def _positive(amount: Decimal, what: str) -> Decimal:
    value = as_decimal(amount, "amount")
    if value <= 0 or not is_fen_exact(value):
        raise LedgerError(f"A {what} must be a positive amount in whole fen, not {value}.", field="amount")
    return value


def _draft(
    kind: VoucherMovement, reference: str, postings: Sequence[tuple[str, Decimal]], memo: str
) -> TransactionDraft:
    if not reference.strip():
        raise LedgerError(f"A {kind.value} needs a reference naming its event.", field="reference")
    merged: dict[str, Decimal] = {}
    for account, amount in postings:
        merged[account] = merged.get(account, Decimal(0)) + amount
    return validate_transaction(
        TransactionDraft(
            key=f"{kind.value}:{reference}",
            postings=tuple(Posting(a, v) for a, v in merged.items() if v),
            kind=kind.value,
            memo=memo,
        )
    )


def fund(*, programme_id: int, clearing: str, amount: Decimal, reference: str) -> TransactionDraft:
    """The issuing authority's deposit into a programme's budget."""
    value = _positive(amount, "budget deposit")
    return _draft(
        VoucherMovement.FUND,
        f"programme:{programme_id}:{reference}",
        [(clearing, -value), (budget_account(programme_id), value)],
        f"Budget of {value} CNY deposited for programme {programme_id} ({reference}).",
    )


def issue(*, programme_id: int, voucher_id: int, amount: Decimal) -> TransactionDraft:
    """Issuance (发放): the voucher's amount is committed out of the budget."""
    value = _positive(amount, "voucher")
    return _draft(
        VoucherMovement.ISSUE,
        f"voucher:{voucher_id}",
        [(budget_account(programme_id), -value), (voucher_account(voucher_id), value)],
        f"Voucher {voucher_id} issued for {value} CNY from programme {programme_id}'s budget.",
    )


def expire(*, programme_id: int, voucher_id: int, amount: Decimal, returned: bool) -> TransactionDraft:
    """An expired voucher's balance back to the budget (``returned``) or forfeited."""
    value = _positive(amount, "expiry")
    destination = budget_account(programme_id) if returned else lapsed_account(programme_id)
    verb = "returned to the programme's budget" if returned else "forfeited"
    return _draft(
        VoucherMovement.EXPIRE,
        f"voucher:{voucher_id}",
        [(voucher_account(voucher_id), -value), (destination, value)],
        f"Voucher {voucher_id} expired: {value} CNY {verb}.",
    )


def clawback(
    *, programme_id: int, sources: Sequence[tuple[str, Decimal]], reference: str, memo: str
) -> TransactionDraft:
    """A rejected redemption paid back into the programme's budget by
    ``sources`` (the buyer's wallet and debt, or platform adjustments)."""
    funded = [(account, as_decimal(amount, "source")) for account, amount in sources if amount]
    if not funded or any(amount < 0 for _, amount in funded):
        raise LedgerError("A clawback needs positive sources.", field="sources")
    total = _positive(sum((a for _, a in funded), Decimal(0)), "clawback")
    return _draft(
        VoucherMovement.CLAWBACK,
        reference,
        [*((account, -amount) for account, amount in funded), (budget_account(programme_id), total)],
        memo,
    )


def refund(
    *,
    provider_payable: str,
    platform_commission: str,
    provider_share: Decimal,
    commission: Decimal,
    destinations: Sequence[tuple[str, Decimal]],
    reference: str,
    memo: str,
) -> TransactionDraft:
    """Part of a charge given back: the provider and the platform return their
    shares; it goes to ``destinations`` (each voucher or its programme, and
    the buyer). The two sides must be equal."""
    back = [(provider_payable, -as_decimal(provider_share, "provider_share"))]
    back.append((platform_commission, -as_decimal(commission, "commission")))
    to = [(account, as_decimal(amount, "destination")) for account, amount in destinations]
    if any(amount < 0 for _, amount in to) or any(amount > 0 for _, amount in back):
        raise LedgerError("A refund moves positive amounts back from provider and platform.", field="amount")
    return _draft(VoucherMovement.REFUND, reference, [*back, *to], memo)
