"""Health checks beyond the database: the Celery broker must accept connections."""

import dataclasses

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable


@dataclasses.dataclass
class Broker(HealthCheck):
    """Connects to the configured Celery broker (Redis, or the embedded filesystem broker)."""

    def run(self) -> None:
        from config.celery import app

        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:
            raise ServiceUnavailable(f"broker unreachable: {type(exc).__name__}") from exc
