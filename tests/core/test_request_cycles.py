"""Requests served by the WSGI application as deployed leave no reference
cycles behind: their objects are freed as each request ends, not found later
by the garbage collector, whose collections pause every thread of a process.

Not yet so: a value refused by one of Django's validators (a number below its
minimum): Django's ValidationError lists itself among its errors, and its
traceback holds the request's frames."""

from __future__ import annotations

import gc
import io
import json
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from rest_framework.authtoken.models import Token

from core.wsgi import Handler
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def application() -> Iterator[Handler]:
    """The deployed handler; the test's transaction stays open (as Django's test client does it)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield Handler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def call(application: Handler, method: str, path: str, token: str | None, body: dict | None = None) -> int:
    """One request as a WSGI server makes it: the body read, then the response closed. The status code."""
    raw = json.dumps(body).encode() if body is not None else b""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Token {token}"
    statuses = []
    body_parts = application(environ, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(body_parts)
    body_parts.close()
    return int(statuses[0].split()[0])


def cyclic_garbage(requests) -> Counter:
    """What the collector finds unreachable after the requests ran: by type."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        requests()
        gc.collect()
        return Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_quotes_submissions_lists_and_refusals_leave_no_reference_cycles(application):
    factories.market(pools=2, nodes=2)
    buyer = factories.buyer()
    token = Token.objects.create(user=buyer).key
    job = {k: v for k, v in factories.job_values().items() if v is not None}
    job["duration_seconds"] = int(job["duration_seconds"])
    asked = [
        ("POST", "/api/v1/quotes", token, job, 200),
        ("POST", "/api/v1/jobs", token, job, 201),
        ("GET", "/api/v1/jobs", token, None, 200),
        ("POST", "/api/v1/quotes", token, {**job, "software_stack": "fortran"}, 400),
        ("POST", "/api/v1/quotes", "not-a-token", job, 401),
        ("GET", "/api/v1/no-such-thing", token, None, 404),
    ]

    def requests() -> None:
        for method, path, key, body, expected in asked:
            assert call(application, method, path, key, body) == expected, (method, path, body)

    requests()  # first use: caches and lazily built objects that live on
    assert cyclic_garbage(requests) == Counter()
