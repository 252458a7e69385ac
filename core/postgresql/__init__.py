"""PostgreSQL through Django's own backend, with a health check that asks the
server only when the server has said something (see :mod:`.base`)."""
