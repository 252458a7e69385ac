"""The wallet: what an organisation's accounts hold, with the history of
every ledger transaction that touched them and what it meant, and a buyer's
notices of money paid in (an external payment reference, confirmed by an
operator; no payment gateway)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import payments
from billing.domain.ledger import TransactionKind
from billing.models import Account, AccountKind, LedgerTransaction, PaymentNotice, PaymentNoticeStatus, Posting
from core.api import MAX_OFFSET, Page, paginate, query_filters, query_whole_number
from core.permissions import IsBuyer, IsMember, IsOperator, role_of

MAX_PAGE = 200

# What each kind of transaction means to the organisation whose accounts it touched.
MEANINGS: dict[str, str] = {
    TransactionKind.TOP_UP: "Money paid in from outside the platform.",
    TransactionKind.HOLD: "Money set aside in escrow for a scheduled lease.",
    TransactionKind.CAPTURE: "Metered usage charged: the buyer pays, the provider earns, the platform its commission.",
    TransactionKind.RELEASE: "The unused part of a lease's escrow returned to the wallet.",
    TransactionKind.DEBT_REPAYMENT: "Usage owed from earlier repaid out of new money.",
    TransactionKind.PAYOUT: "A settlement statement paid out to the provider's bank account.",
    TransactionKind.DISPUTE: "Earnings held back while an operator reviews a dispute.",
    TransactionKind.DISPUTE_RESOLVED: "Earnings held back under dispute released.",
    TransactionKind.ADJUSTMENT: "An operator's adjustment of a settlement statement.",
}

# The accounts a wallet shows, by kind; "owed" is shown positive (the debt account goes negative).
SHOWN = {
    "available": AccountKind.BUYER_AVAILABLE,
    "held": AccountKind.BUYER_HELD,
    "owed": AccountKind.BUYER_DEBT,
    "payable": AccountKind.PROVIDER_PAYABLE,
}


def meaning_of(kind: str) -> str:
    return MEANINGS.get(kind, f"{kind.replace('_', ' ').capitalize()}.")


# --- reads -----------------------------------------------------------------------------------------------------------


def wallet_balances(organisation_id: int) -> dict[str, Decimal]:
    """Available, held, owed (a positive amount) and payable of one organisation, in one query."""
    rows = dict(
        Account.objects.filter(organisation_id=organisation_id, kind__in=SHOWN.values()).values_list("kind", "balance")
    )
    zero = Decimal("0.00")
    amounts = {name: rows.get(kind, zero) for name, kind in SHOWN.items()}
    amounts["owed"] = -amounts["owed"] if amounts["owed"] else zero
    return amounts


def wallet_history(organisation_id: int) -> QuerySet[LedgerTransaction]:
    """Transactions touching the organisation's accounts, newest first, each
    with only the postings to those accounts (``own_postings``)."""
    own = Posting.objects.filter(account__organisation_id=organisation_id)
    return (
        LedgerTransaction.objects.filter(pk__in=own.values("transaction_id"))
        .prefetch_related(
            Prefetch("postings", queryset=own.select_related("account").order_by("id"), to_attr="own_postings")
        )
        .order_by("-id")
    )


# --- output ----------------------------------------------------------------------------------------------------------


class WalletAmount(serializers.Serializer):
    account = serializers.CharField(help_text="available, held, debt, payable, disputed")
    amount = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="CNY; positive in, negative out")


class WalletTransaction(serializers.Serializer):
    id = serializers.IntegerField()
    key = serializers.CharField(help_text="Idempotency key: names the business event it records")
    kind = serializers.CharField()
    meaning = serializers.CharField(help_text="What this kind of transaction means")
    memo = serializers.CharField()
    amounts = WalletAmount(many=True, help_text="What it moved on each of the organisation's accounts")
    created_at = serializers.DateTimeField()


def transaction_view(tx: LedgerTransaction, organisation_id: int) -> dict[str, Any]:
    """A transaction as the organisation sees it: only its own accounts' postings."""
    postings = getattr(tx, "own_postings", None)
    if postings is None:
        postings = tx.postings.select_related("account").filter(account__organisation_id=organisation_id)
    return {
        "id": tx.pk,
        "key": tx.key,
        "kind": tx.kind,
        "meaning": meaning_of(tx.kind),
        "memo": tx.memo,
        "amounts": [{"account": p.account.kind, "amount": p.amount} for p in postings],
        "created_at": tx.created_at,
    }


class WalletHistory(serializers.Serializer):
    count = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    results = WalletTransaction(many=True)


class WalletOutput(serializers.Serializer):
    organisation = serializers.IntegerField()
    currency = serializers.CharField()
    available = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="Free to spend")
    held = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="In escrow for scheduled leases")
    owed = serializers.DecimalField(
        max_digits=18, decimal_places=2, help_text="Usage beyond what the wallet covered; repaid by the next top-up"
    )
    payable = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="Provider earnings not paid out yet")
    history = WalletHistory()


# --- views -----------------------------------------------------------------------------------------------------------


def _paging(request: Request) -> tuple[int, int]:
    limit = query_whole_number(request, "limit", 50, 1)
    offset = query_whole_number(request, "offset", 0, 0, MAX_OFFSET)
    return min(limit, MAX_PAGE), offset


class WalletView(APIView):
    """Your organisation's wallet: available, held, owed and (for providers)
    payable, in CNY, and the transactions that touched its accounts, newest
    first, each with its meaning and what it moved on each account."""

    permission_classes = [IsMember]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1},
                description=f"History page size (at most {MAX_PAGE}, default 50)",
            ),
            OpenApiParameter(
                "offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}, description="History items to skip"
            ),
        ],
        responses=WalletOutput,
    )
    def get(self, request: Request) -> Response:
        org = request.user.organisation_id
        limit, offset = _paging(request)
        history = wallet_history(org)
        page = [transaction_view(tx, org) for tx in history[offset : offset + limit]]
        body = {
            "organisation": org,
            "currency": "CNY",
            **wallet_balances(org),
            "history": {"count": history.count(), "limit": limit, "offset": offset, "results": page},
        }
        return Response(WalletOutput(body).data)


class PaymentNoticeOutput(serializers.ModelSerializer):
    organisation = serializers.IntegerField(source="organisation_id", read_only=True)
    same_reference = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        default=None,
        help_text="Operators' lists: other notices (any organisation) citing the same transfer",
    )
    transaction = serializers.IntegerField(
        source="transaction_id",
        read_only=True,
        allow_null=True,
        help_text="The top-up's ledger transaction, once confirmed",
    )

    class Meta:
        model = PaymentNotice
        fields = (
            "id",
            "organisation",
            "amount",
            "reference",
            "status",
            "created_at",
            "reviewed_at",
            "reason",
            "same_reference",
            "transaction",
        )


class TopUpView(APIView):
    """Buyer (POST): give notice of money paid in to the platform's bank
    account, with the payment's reference (a bank transfer's or payment slip's
    number). Nothing moves yet: 202 with the notice, pending until an operator
    finds the payment and confirms it, which credits the wallet (debt from
    earlier usage is repaid first). Sending the same reference again returns
    that notice with 200; the same reference with another amount is refused
    (409). GET: your organisation's notices (operators: everyone's),
    newest first, optionally by ``status``."""

    pagination_class = Page  # documents paginate()'s pages

    def get_permissions(self) -> list[Any]:
        return [IsBuyer()] if self.request.method == "POST" else [IsMember()]

    class InputSerializer(serializers.Serializer):
        amount = serializers.DecimalField(
            max_digits=18, decimal_places=2, min_value=Decimal("0.01"), help_text="CNY, at most two decimals"
        )
        reference = serializers.CharField(max_length=200, help_text="The external payment's reference")

    class Filters(serializers.Serializer):
        status = serializers.ChoiceField(
            choices=PaymentNoticeStatus.choices,
            required=False,
            allow_blank=True,
            help_text="Only notices in this state",
        )

    @extend_schema(parameters=[Filters], responses=PaymentNoticeOutput(many=True))
    def get(self, request: Request) -> Response:
        notices = PaymentNotice.objects.order_by("-id")
        if role_of(request.user) == "operator":
            notices = notices.annotate(same_reference=payments.same_reference_elsewhere())
        else:
            notices = notices.filter(organisation_id=request.user.organisation_id)
        notices = notices.filter(**query_filters(request, self.Filters))
        return paginate(request, notices, PaymentNoticeOutput)

    @extend_schema(request=InputSerializer, responses={202: PaymentNoticeOutput, 200: PaymentNoticeOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        notice, created = payments.payment_notice_submit(
            organisation=request.user.organisation,
            amount=data.validated_data["amount"],
            reference=data.validated_data["reference"],
            user=request.user,
        )
        return Response(
            PaymentNoticeOutput(notice).data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        )


class PaymentReviewInput(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class _PaymentReview(APIView):
    """An operator's decision on a payment notice, by ``decide`` (a service of billing.payments)."""

    permission_classes = [IsOperator]
    decide: Callable[..., PaymentNotice]

    @extend_schema(request=PaymentReviewInput, responses=PaymentNoticeOutput)
    def post(self, request: Request, pk: int) -> Response:
        data = PaymentReviewInput(data=request.data)
        data.is_valid(raise_exception=True)
        notice = get_object_or_404(PaymentNotice, pk=pk)
        notice = type(self).decide(notice=notice, actor=request.user, reason=data.validated_data["reason"])
        return Response(PaymentNoticeOutput(notice).data)


class TopUpConfirmView(_PaymentReview):
    """Operator: the payment is on the bank statement. Credits the wallet once
    (confirming again changes nothing) and tells the buyer."""

    decide = staticmethod(payments.payment_notice_confirm)


class TopUpRejectView(_PaymentReview):
    """Operator: no such payment arrived. Closes the notice with the reason
    (required; the buyer is told), nothing moves."""

    decide = staticmethod(payments.payment_notice_reject)
