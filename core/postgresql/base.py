"""Django's PostgreSQL backend with a cheaper per-request health check.

With ``CONN_HEALTH_CHECKS`` Django checks a persistent connection before a
request first uses it by sending ``SELECT 1`` and waiting for the answer: one
round trip per request, which on a busy API is a large share of what a short
request asks of the database. A connection idle between requests has nothing
to read from its socket unless the server sent something meanwhile: that is
how a server that restarts, or an operator's ``pg_terminate_backend``,
announces that it closes the session (an error message, then end of file).
So the check looks at the socket first, without waiting:

- idle in no transaction, the session in good order and nothing to read: the
  connection is used as it is;
- anything else (something to read, a transaction left open, a session
  psycopg already knows is broken): Django's own check runs (``SELECT 1``),
  and the connection is closed and opened again if that fails.

A server that vanished without closing its sockets (a network partition) is
not told apart by either check until TCP gives up; the request then fails as
it would have with ``SELECT 1``. After an error, Django's own check still runs
(:meth:`close_if_unusable_or_obsolete` calls :meth:`is_usable` unchanged)."""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def quiet(self) -> bool:
        """Whether the open connection is idle, in good order, and the server has sent nothing since."""
        connection = self.connection
        if connection is None or connection.closed:
            return False
        pgconn = connection.pgconn
        if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            readable, _, _ = select.select([pgconn.socket], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close_if_health_check_failed(self) -> None:
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if not self.quiet() and not self.is_usable():
            self.close()
        self.health_check_done = True
