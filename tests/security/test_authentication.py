"""Credentials: a browser session cannot be ridden by another site (CSRF),
a deactivated account's token stops working at once."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests import factories

pytestmark = pytest.mark.django_db


def test_a_signed_in_browser_cannot_be_made_to_write_without_the_csrf_token():
    factories.market()
    buyer = factories.buyer()
    browser = Client(enforce_csrf_checks=True)
    browser.get("/accounts/login/")  # the sign-in page sets the CSRF cookie
    browser.force_login(buyer)
    assert browser.get("/api/v1/jobs").status_code == 200  # reading needs no token
    forged = browser.post("/api/v1/jobs", factories.job_values(), content_type="application/json")
    assert forged.status_code == 403
    assert "CSRF" in forged.json()["detail"]
    own = browser.post(
        "/api/v1/jobs",
        factories.job_values(),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value,
    )
    assert own.status_code == 201


def test_a_deactivated_account_loses_its_api_access_at_once():
    buyer = factories.buyer(funds=0)
    token = Token.objects.create(user=buyer)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/v1/me").status_code == 200
    buyer.is_active = False
    buyer.save(update_fields=["is_active"])
    assert api.get("/api/v1/me").status_code == 401
    again = APIClient().post("/api/v1/auth/token", {"username": buyer.username, "password": factories.PASSWORD})
    assert again.status_code == 400
    assert again.json() == {"code": "invalid", "detail": "unknown username or wrong password", "field": "password"}
