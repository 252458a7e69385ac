"""Rate limits on login, registration, quotes and job submission: past the
limit the caller gets 429 with Retry-After and an error body saying so; other
callers and other endpoints are not affected."""

from __future__ import annotations

import copy
import uuid

import pytest
from django.conf import settings as django_settings
from django.test import Client
from rest_framework.test import APIClient

from core import throttling
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


# A moment 10 s into a minute, an hour and a day: a test's requests all fall in one window.
MOMENT = 20_000 * 86_400 + 10


@pytest.fixture(autouse=True)
def _one_window(monkeypatch):
    monkeypatch.setattr(throttling, "clock", lambda: MOMENT)


@pytest.fixture
def rates(settings):
    """Set some scopes' rates for one test: rates(quote="3/min")."""

    def set_rates(**scopes: str) -> None:
        rest = copy.deepcopy(django_settings.REST_FRAMEWORK)
        rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], **scopes}
        settings.REST_FRAMEWORK = rest

    return set_rates


def assert_throttled(response, scope: str, window: int = 60) -> None:
    """Refused until the window ends, 10 s after it began."""
    assert response.status_code == 429, response.content
    wait = int(response["Retry-After"])
    assert wait == window - 10
    body = response.json()
    assert body["code"] == "throttled"
    assert body["field"] is None
    assert body["retry_after"] == wait
    assert f"Too many {scope} requests" in body["detail"]
    assert f"Expected available in {wait} second" in body["detail"]


def login(client: APIClient, username: str, password: str = factories.PASSWORD, **extra):
    return client.post("/api/v1/auth/token", {"username": username, "password": password}, **extra)


def test_the_eleventh_sign_in_a_minute_from_one_address_is_refused_by_default():
    user = factories.buyer(funds=0)
    api = APIClient()
    for attempt in range(10):
        answer = login(api, user.username, password="wrong" if attempt % 2 else factories.PASSWORD)
        assert answer.status_code in (200, 400)
    assert_throttled(login(api, user.username), "login")
    # Even the right password: guessing is what the limit is for.
    assert_throttled(login(api, user.username), "login")


def test_sign_in_limits_count_per_client_address_and_a_forged_forwarded_for_does_not_reset_them(rates):
    rates(login="2/min")
    user = factories.buyer(funds=0)
    api = APIClient()
    assert login(api, user.username).status_code == 200
    assert login(api, user.username, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 200
    assert_throttled(login(api, user.username, HTTP_X_FORWARDED_FOR="198.51.100.9"), "login")
    # Another client address is counted on its own.
    assert login(api, user.username, REMOTE_ADDR="192.0.2.44").status_code == 200


def test_registrations_from_one_address_are_limited(rates):
    rates(register="2/hour")
    api = APIClient()

    def register(n: int):
        return api.post(
            "/api/v1/auth/register",
            {
                "name": f"Lab {n}",
                "credit_code": factories.credit_code(),
                "category": "university",
                "city": "beijing",
                "username": f"lab-{uuid.uuid4().hex[:8]}",
                "password": factories.PASSWORD,
            },
        )

    assert register(1).status_code == 201
    assert register(2).status_code == 201
    refused = register(3)
    assert_throttled(refused, "register", window=3600)
    assert "at most 2 per hour" in refused.json()["detail"]


def test_quotes_are_limited_per_buyer_and_other_buyers_are_not_affected(rates):
    rates(quote="3/min")
    factories.market()
    first, second = client_for(factories.buyer()), client_for(factories.buyer())
    for _ in range(3):
        assert first.post("/api/v1/quotes", factories.job_values()).status_code == 200
    assert_throttled(first.post("/api/v1/quotes", factories.job_values()), "quote")
    # Quotes with the voucher subsidy count in the same scope.
    assert_throttled(first.post("/api/v1/voucher-quotes", factories.job_values()), "quote")
    assert second.post("/api/v1/quotes", factories.job_values()).status_code == 200
    # Other endpoints stay open to the throttled buyer.
    assert first.get("/api/v1/jobs").status_code == 200


def test_job_submissions_are_limited_per_buyer_but_reading_jobs_is_not(rates):
    rates(submit="2/min")
    factories.market()
    buyer = client_for(factories.buyer())
    for _ in range(2):
        assert buyer.post("/api/v1/jobs", factories.job_values()).status_code == 201
    assert_throttled(buyer.post("/api/v1/jobs", factories.job_values()), "submit")
    listed = buyer.get("/api/v1/jobs")
    assert listed.status_code == 200 and listed.json()["count"] == 2


def test_a_refused_request_is_not_carried_out(rates):
    rates(submit="1/min")
    factories.market()
    user = factories.buyer()
    buyer = client_for(user)
    assert buyer.post("/api/v1/jobs", factories.job_values(name="first")).status_code == 201
    assert buyer.post("/api/v1/jobs", factories.job_values(name="second")).status_code == 429
    assert [job["name"] for job in buyer.get("/api/v1/jobs").json()["results"]] == ["first"]


def test_a_limit_set_to_off_lifts_it(rates):
    rates(login="1/min")
    user = factories.buyer(funds=0)
    api = APIClient()
    assert login(api, user.username).status_code == 200
    assert login(api, user.username).status_code == 429
    rates(login="off")
    assert login(api, user.username).status_code == 200


@pytest.mark.redis
def test_counts_live_in_the_shared_redis_cache_so_every_api_process_sees_them(settings, rates):
    """The count is one Redis counter: what another API process adds to it
    (here an independent connection) counts against the same buyer."""
    import redis

    rates(quote="2/min")
    prefix = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": django_settings.CELERY_BROKER_URL,
            "KEY_PREFIX": prefix,
        }
    }
    factories.market()
    user = factories.buyer()
    buyer = client_for(user)
    assert buyer.post("/api/v1/quotes", factories.job_values()).status_code == 200
    other_process = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    keys = list(other_process.scan_iter(f"{prefix}:*throttle:quote:user-{user.pk}:*"))
    try:
        assert len(keys) == 1 and int(other_process.get(keys[0])) == 1
        assert 0 < other_process.ttl(keys[0]) <= 61  # the window's counter expires with it
        other_process.incr(keys[0])  # a quote served by another worker
        assert_throttled(buyer.post("/api/v1/quotes", factories.job_values()), "quote")
    finally:
        other_process.delete(*keys)


def test_an_unreachable_cache_lets_requests_through_rather_than_failing_them(settings, rates):
    rates(quote="1/min")
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    factories.market()
    buyer = client_for(factories.buyer())
    assert buyer.post("/api/v1/quotes", factories.job_values()).status_code == 200
    assert buyer.post("/api/v1/quotes", factories.job_values()).status_code == 200


def test_the_sign_in_form_shares_the_limit_of_the_api_sign_in(rates):
    rates(login="2/min")
    user = factories.buyer(funds=0)
    assert login(APIClient(), user.username).status_code == 200
    form = Client()
    assert form.post("/accounts/login/", {"username": user.username, "password": "wrong"}).status_code == 200
    refused = form.post("/accounts/login/", {"username": user.username, "password": factories.PASSWORD})
    assert refused.status_code == 429
    assert refused["Retry-After"] == "50"
    assert "Too many sign-in attempts from your address" in refused.content.decode()
    assert "_auth_user_id" not in form.session
    assert_throttled(login(APIClient(), user.username), "login")


def test_the_operator_console_signs_in_through_the_same_form():
    answer = Client().get("/admin/login/?next=/admin/")
    assert answer.status_code == 302
    assert answer["Location"] == "/accounts/login/?next=/admin/"
    operator = factories.operator()
    form = Client()
    signed_in = form.post(
        "/accounts/login/?next=/admin/", {"username": operator.username, "password": factories.PASSWORD}
    )
    assert signed_in.status_code == 302 and signed_in["Location"] == "/admin/"
    assert form.get("/admin/").status_code == 200


def test_after_waiting_as_told_the_caller_goes_on(rates, monkeypatch):
    rates(login="1/min")
    user = factories.buyer(funds=0)
    api = APIClient()
    assert login(api, user.username).status_code == 200
    refused = login(api, user.username)
    assert_throttled(refused, "login")
    monkeypatch.setattr(throttling, "clock", lambda: MOMENT + int(refused["Retry-After"]) - 1)
    assert login(api, user.username).status_code == 429
    monkeypatch.setattr(throttling, "clock", lambda: MOMENT + int(refused["Retry-After"]))
    assert login(api, user.username).status_code == 200


@pytest.mark.redis
def test_a_thread_counts_through_one_redis_client_until_the_cache_changes(settings, rates):
    """Django's cache makes a Redis client object on every call; the counts keep one per thread."""
    rates(quote="5/min")
    cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": django_settings.CELERY_BROKER_URL}
    settings.CACHES = {"default": {**cache, "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}
    first = throttling._redis_client("a")
    assert throttling._redis_client("b") is first
    who = f"user-{uuid.uuid4().hex}"
    assert [throttling.hit("quote", who) is None for _ in range(6)] == [True] * 5 + [False]
    settings.CACHES = {"default": {**cache, "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}  # a cache of its own again
    assert throttling._redis_client("a") is not first
    assert throttling.hit("quote", who) is None, "counted afresh in the new cache"
