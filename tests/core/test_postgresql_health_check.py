"""The per-request health check of persistent PostgreSQL connections: a quiet
connection is used without a round trip; one the server has closed (an
operator's ``pg_terminate_backend``, a restart) is found and replaced before
the request uses it. Real connections to PostgreSQL."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connections

from core.postgresql.base import DatabaseWrapper

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def wrapper() -> Iterator[DatabaseWrapper]:
    """A connection of its own, as a request of a server process would hold it between requests."""
    own = connections.create_connection("default")
    assert isinstance(own, DatabaseWrapper)
    own.ensure_connection()
    own.health_check_enabled = True
    yield own
    own.close()


def _server_pid(wrapper: DatabaseWrapper) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _round_trips(wrapper: DatabaseWrapper, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []
    original = wrapper.is_usable

    def counted() -> bool:
        asked.append("SELECT 1")
        return original()

    monkeypatch.setattr(wrapper, "is_usable", counted)
    return asked


def _next_request(wrapper: DatabaseWrapper) -> None:
    """What Django does between two requests of a persistent connection, then at the next one's first query."""
    wrapper.close_if_unusable_or_obsolete()
    wrapper.close_if_health_check_failed()


def test_a_quiet_connection_is_used_without_asking_the_server(wrapper, monkeypatch):
    pid = _server_pid(wrapper)
    asked = _round_trips(wrapper, monkeypatch)

    _next_request(wrapper)

    assert asked == []
    assert wrapper.connection is not None
    assert _server_pid(wrapper) == pid


def test_a_connection_the_server_closed_is_replaced_before_the_request_uses_it(wrapper, monkeypatch):
    pid = _server_pid(wrapper)
    dsn = wrapper.get_connection_params()
    with psycopg.connect(
        dbname=dsn["dbname"], user=dsn.get("user"), host=dsn.get("host"), port=dsn.get("port"), autocommit=True
    ) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
    deadline = time.monotonic() + 5
    while not select.select([wrapper.connection.pgconn.socket], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, "the server never closed the terminated session"
    asked = _round_trips(wrapper, monkeypatch)

    _next_request(wrapper)

    assert asked == ["SELECT 1"]  # the server had spoken: Django's own check ran, and failed
    assert wrapper.connection is None
    assert _server_pid(wrapper) != pid  # the request runs on a new session


def test_a_transaction_left_open_is_checked_the_old_way(wrapper, monkeypatch):
    wrapper.connection.execute("BEGIN")
    asked = _round_trips(wrapper, monkeypatch)

    wrapper.health_check_done = False
    wrapper.close_if_health_check_failed()

    assert asked == ["SELECT 1"]
    wrapper.connection.execute("ROLLBACK")
