"""Double-entry postings: the invariants every ledger transaction must keep,
and builders for the standard movements, for the ledger's tables to call.

**Sign convention.** A posting's amount is **positive for a debit** and
**negative for a credit**. Every account is a bucket of money on the
platform's books: a debit puts money into it, a credit takes money out, and an
account's balance is the plain sum of its postings. So a buyer's available
account holds what its postings add up to (never below zero once the ledger
enforces it), and the external bank clearing account, which stands for the
world outside the platform, goes negative by the money paid in and not yet
paid out. In every transaction the postings sum to zero: money moves between
accounts, it is never created or lost.

**Money flow** (account names are strings the caller chooses, such as
``"org:12:available"``)::

    top_up   bank clearing      → buyer available
    hold     buyer available    → buyer held          (escrow when a job is scheduled)
    capture  buyer held         → provider payable + platform commission  (合作分成)
    release  buyer held         → buyer available     (the unused part of a hold)
    payout   provider payable   → bank clearing

**Idempotency keys** are ``"<kind>:<reference>"``, where the reference names
the business event: the payment's reference for a top-up, the lease for a hold
or release, the usage sample for a capture, the settlement statement for a
payout (``"lease:42"``, ``"usage:9001"``). The same event always yields the
same key, so the unique key on the ledger's table turns a replay into a no-op;
a replay whose postings differ is a conflict, which comparing
:attr:`TransactionDraft.fingerprint` reveals. A second hold on the same lease
needs its own reference (``"lease:42:extension:1"``).

Amounts are fen-exact CNY :class:`~decimal.Decimal`; see
:mod:`billing.domain.money` for the rounding rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from billing.domain.money import FEN, as_decimal, is_fen_exact
from billing.domain.pricing import Charge
from core.errors import InvalidInput

KEY_MAX_LENGTH = 255


class LedgerError(InvalidInput):
    code = "ledger_invalid"


class TransactionKind(StrEnum):
    TOP_UP = "top_up"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    PAYOUT = "payout"
    DEBT_REPAYMENT = "debt_repayment"
    DISPUTE = "dispute"
    DISPUTE_RESOLVED = "dispute_resolved"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class Posting:
    """One line of a transaction: positive ``amount`` debits ``account``
    (money in), negative credits it (money out)."""

    account: str
    amount: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", as_decimal(self.amount, "amount"))


@dataclass(frozen=True, slots=True)
class TransactionDraft:
    """A transaction ready to be written: its idempotency ``key``, postings,
    ``kind`` (a :class:`TransactionKind` value for the standard movements) and
    a human ``memo``."""

    key: str
    postings: tuple[Posting, ...]
    kind: str
    memo: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "postings", tuple(self.postings))

    @property
    def fingerprint(self) -> str:
        """A digest of kind, key and postings (order-insensitive, memo ignored):
        two valid drafts with the same fingerprint move the same money."""
        lines = sorted(f"{p.account}\t{p.amount.quantize(FEN)}" for p in self.postings)
        text = "\n".join([str(self.kind), self.key, *lines])
        return hashlib.sha256(text.encode()).hexdigest()


def validate_transaction(draft: TransactionDraft) -> TransactionDraft:
    """Return ``draft`` if it keeps the ledger's invariants, else raise
    :class:`LedgerError` saying which one it breaks."""
    if not isinstance(draft.key, str) or not draft.key.strip():
        raise LedgerError("A ledger transaction needs a non-empty idempotency key.", field="key")
    if len(draft.key) > KEY_MAX_LENGTH:
        raise LedgerError(
            f"The idempotency key is {len(draft.key)} characters long; the limit is {KEY_MAX_LENGTH}.", field="key"
        )
    if not isinstance(draft.kind, str) or not draft.kind.strip():
        raise LedgerError(f"Transaction {draft.key} needs a kind.", field="kind")
    if len(draft.postings) < 2:
        raise LedgerError(
            f"Transaction {draft.key} has {len(draft.postings)} posting(s); double entry needs at least two.",
            field="postings",
        )
    seen: set[str] = set()
    for posting in draft.postings:
        if not isinstance(posting.account, str) or not posting.account.strip():
            raise LedgerError(f"Transaction {draft.key} has a posting without an account.", field="postings")
        if posting.account in seen:
            raise LedgerError(
                f"Account {posting.account} appears twice in transaction {draft.key}; post its net amount once.",
                field="postings",
            )
        seen.add(posting.account)
        if not is_fen_exact(posting.amount):
            raise LedgerError(
                f"Posting of {posting.amount} to {posting.account} in transaction {draft.key} is not a whole number "
                "of fen.",
                field="postings",
            )
        if posting.amount == 0:
            raise LedgerError(
                f"Posting to {posting.account} in transaction {draft.key} is zero; leave it out.", field="postings"
            )
    total = sum((posting.amount for posting in draft.postings), Decimal(0))
    if total != 0:
        raise LedgerError(
            f"Postings of transaction {draft.key} sum to {total}, not zero: every debit needs an equal credit.",
            field="postings",
        )
    return draft


def balance_changes(drafts: Iterable[TransactionDraft]) -> dict[str, Decimal]:
    """How much each account's balance moves over ``drafts`` (sum of postings)."""
    changes: dict[str, Decimal] = {}
    for draft in drafts:
        for posting in draft.postings:
            changes[posting.account] = changes.get(posting.account, Decimal(0)) + posting.amount
    return changes


# --- the standard movements ---------------------------------------------------------


def _positive(amount: Decimal, what: str) -> Decimal:
    value = as_decimal(amount, "amount")
    if value <= 0:
        raise LedgerError(f"A {what} must be a positive amount, not {value}.", field="amount")
    if not is_fen_exact(value):
        raise LedgerError(f"A {what} must be a whole number of fen, not {value}.", field="amount")
    return value


def _key(kind: TransactionKind, reference: str) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise LedgerError(f"A {kind.value.replace('_', '-')} needs a reference naming its event.", field="reference")
    return f"{kind.value}:{reference}"


def _transfer(
    kind: TransactionKind, *, source: str, destination: str, amount: Decimal, reference: str, memo: str
) -> TransactionDraft:
    return validate_transaction(
        TransactionDraft(
            key=_key(kind, reference),
            postings=(Posting(source, -amount), Posting(destination, amount)),
            kind=kind,
            memo=memo,
        )
    )


def top_up(*, available: str, clearing: str, amount: Decimal, reference: str) -> TransactionDraft:
    """Money paid in by a buyer: bank ``clearing`` → the buyer's ``available``."""
    value = _positive(amount, "top-up")
    return _transfer(
        TransactionKind.TOP_UP,
        source=clearing,
        destination=available,
        amount=value,
        reference=reference,
        memo=f"Top-up of {value} CNY ({reference}).",
    )


def hold(*, available: str, held: str, amount: Decimal, reference: str) -> TransactionDraft:
    """Escrow for a scheduled job: the buyer's ``available`` → ``held``."""
    value = _positive(amount, "hold")
    return _transfer(
        TransactionKind.HOLD,
        source=available,
        destination=held,
        amount=value,
        reference=reference,
        memo=f"Hold of {value} CNY for {reference}.",
    )


def capture(
    *, held: str, provider_payable: str, platform_commission: str, charge: Charge, reference: str
) -> TransactionDraft:
    """A metered charge paid out of the buyer's ``held`` funds: the provider
    share to ``provider_payable``, the commission to ``platform_commission``.
    A zero charge moves no money and is refused; skip it instead. A line of
    zero (no commission, or all commission) is left out."""
    return capture_funded(
        sources=((held, _positive(charge.gross, "capture")),),
        provider_payable=provider_payable,
        platform_commission=platform_commission,
        charge=charge,
        reference=reference,
    )


def capture_funded(
    *,
    sources: tuple[tuple[str, Decimal], ...],
    provider_payable: str,
    platform_commission: str,
    charge: Charge,
    reference: str,
) -> TransactionDraft:
    """A metered charge paid from several sources in order (the buyer's held
    funds, then available balance, then a debt account that goes negative by
    what is owed): the provider share to ``provider_payable``, the commission
    to ``platform_commission``. Sources of zero are left out; they must add up
    to the gross exactly."""
    gross = _positive(charge.gross, "capture")
    commission = as_decimal(charge.commission, "commission")
    provider_share = as_decimal(charge.provider_share, "provider_share")
    if commission < 0 or provider_share < 0 or commission + provider_share != gross:
        raise LedgerError(
            f"The charge does not split: commission {commission} + provider share {provider_share} "
            f"is not the gross {gross}.",
            field="charge",
        )
    funded = [(account, as_decimal(amount, "source")) for account, amount in sources]
    if any(amount < 0 for _, amount in funded) or sum((a for _, a in funded), Decimal(0)) != gross:
        raise LedgerError(f"The sources of capture {reference} do not add up to its gross {gross}.", field="sources")
    postings = [Posting(account, -amount) for account, amount in funded if amount]
    if provider_share:
        postings.append(Posting(provider_payable, provider_share))
    if commission:
        postings.append(Posting(platform_commission, commission))
    return validate_transaction(
        TransactionDraft(
            key=_key(TransactionKind.CAPTURE, reference),
            postings=tuple(postings),
            kind=TransactionKind.CAPTURE,
            memo=(
                f"Capture of {gross} CNY for {charge.ncu_hours} NCU-hours ({charge.pricing_type.value}, {reference}): "
                f"{provider_share} to the provider, {commission} commission."
            ),
        )
    )


def release(*, held: str, available: str, amount: Decimal, reference: str) -> TransactionDraft:
    """The unused part of a hold back to the buyer: ``held`` → ``available``."""
    value = _positive(amount, "release")
    return _transfer(
        TransactionKind.RELEASE,
        source=held,
        destination=available,
        amount=value,
        reference=reference,
        memo=f"Release of {value} CNY held for {reference}.",
    )


def payout(*, provider_payable: str, clearing: str, amount: Decimal, reference: str) -> TransactionDraft:
    """A provider's settlement paid out: ``provider_payable`` → bank ``clearing``."""
    value = _positive(amount, "payout")
    return _transfer(
        TransactionKind.PAYOUT,
        source=provider_payable,
        destination=clearing,
        amount=value,
        reference=reference,
        memo=f"Payout of {value} CNY ({reference}).",
    )


def transfer(
    *, kind: TransactionKind, source: str, destination: str, amount: Decimal, reference: str, memo: str
) -> TransactionDraft:
    """A plain movement of a positive amount between two accounts (debt
    repayment, dispute hold-back and its resolution, operator adjustments)."""
    return _transfer(
        kind,
        source=source,
        destination=destination,
        amount=_positive(amount, kind.value),
        reference=reference,
        memo=memo,
    )
