"""Shared fixtures. Tests marked ``postgres`` or ``redis`` need the real
servers: under CI (CI=true or CX_REQUIRE_SERVICES=1) a missing server is a
failure, elsewhere the test is skipped with the reason."""

from __future__ import annotations

import os

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests import factories

REQUIRE_SERVICES = os.environ.get("CI", "").lower() in {"1", "true", "yes"} or os.environ.get(
    "CX_REQUIRE_SERVICES", ""
).lower() in {"1", "true", "yes"}


def _missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _required_services(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("postgres") and connection.vendor != "postgresql":
        _missing("needs PostgreSQL: set DATABASE_URL=postgres://...")
    if request.node.get_closest_marker("redis"):
        broker = os.environ.get("CELERY_BROKER_URL", "")
        if not broker.startswith("redis://"):
            _missing("needs Redis: set CELERY_BROKER_URL=redis://...")


@pytest.fixture(autouse=True)
def _fresh_quote_snapshot() -> None:
    """Each test builds its own market: no quote snapshot from another test's."""
    from scheduler import selectors

    selectors._quote_snapshot = None
    selectors._lease_rows = {}


@pytest.fixture(autouse=True)
def _quote_snapshot_read_on_the_callers_thread(settings) -> None:
    """A test's data is in its own transaction, which another thread's connection cannot see: the quote
    snapshot is read again on the caller's thread (tests/scheduler/services/test_quote_snapshot.py has the
    background reading, committed)."""
    settings.CX_QUOTE_REFRESH_IN_BACKGROUND = False


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _own_cache(settings, request: pytest.FixtureRequest) -> None:
    """Each test has an empty in-process cache of its own: rate-limit counts
    start from zero and never touch a shared Redis."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": request.node.nodeid}
    }


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def client_for(user: object) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


@pytest.fixture
def operator(db):
    return factories.operator()


@pytest.fixture
def buyer(db):
    return factories.buyer()


@pytest.fixture
def provider(db):
    return factories.provider(verified=True)
