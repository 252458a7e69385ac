"""Wallet endpoints, included under /api/v1/ by config.urls."""

from django.urls import path

from billing import wallet_api

urlpatterns = [
    path("wallet", wallet_api.WalletView.as_view(), name="wallet"),
    path("wallet/top-ups", wallet_api.TopUpView.as_view(), name="wallet-top-up"),
    path("wallet/top-ups/<int:pk>/confirm", wallet_api.TopUpConfirmView.as_view(), name="wallet-top-up-confirm"),
    path("wallet/top-ups/<int:pk>/reject", wallet_api.TopUpRejectView.as_view(), name="wallet-top-up-reject"),
]
