"""Wallet endpoints, included under /api/v1/ by config.urls."""

from django.urls import path

from billing import wallet_api

urlpatterns = [
    path("wallet", wallet_api.WalletView.as_view(), name="wallet"),
    path("wallet/top-ups", wallet_api.TopUpView.as_view(), name="wallet-top-up"),
]
