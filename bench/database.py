"""The benches' own PostgreSQL databases: named in the server's URL, created
afresh and dropped, and Django set up on one."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead (query and all else kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _admin(url: str, statement: str, *names: str) -> None:
    """Run ``statement`` with ``names`` as identifiers, connected to the server's ``postgres`` database."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    dsn = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(*(sql.Identifier(name) for name in names)))


def drop_database(url: str, name: str) -> None:
    _admin(url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def recreate_database(url: str, name: str, *, template: str | None = None) -> None:
    """Drop ``name`` and create it afresh (a copy of ``template`` if given)."""
    drop_database(url, name)
    if template:
        _admin(url, "CREATE DATABASE {} TEMPLATE {}", name, template)
    else:
        _admin(url, "CREATE DATABASE {}", name)


def django_setup(url: str, *, conn_max_age: int | None = None) -> None:
    """Django on the database of ``url``, quiet logs (``conn_max_age``: keep connections that long)."""
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if conn_max_age is not None:
        os.environ.setdefault("CONN_MAX_AGE", str(conn_max_age))
    import django

    django.setup()
