"""Request rate limits per scope (submit, quote, login, register), counted in
the shared Django cache so every API process sees the same counts.

A view names its scope per method (``throttle_scopes = {"POST": "quote"}``);
the rate of each scope comes from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``
(set from ``CX_THROTTLE_*``), read at request time. Signed-in callers are
counted per user, anonymous ones per client address. Counts are fixed windows
kept with an atomic increment (``INCR`` on Redis), so concurrent requests on
several workers are never lost. A request over the limit is refused with 429,
a ``Retry-After`` header and the error body saying when to try again."""

from __future__ import annotations

import logging
import math
import time

from django.core.cache import cache
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PERIOD_NAMES = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"600/min"`` → (600, 60): requests allowed per window of that many seconds."""
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip()[0].lower()]


def rate_of(scope: str) -> str | None:
    """The scope's rate, or None when it has none or it is "off"."""
    rate = (api_settings.DEFAULT_THROTTLE_RATES or {}).get(scope)
    return None if rate is None or rate.strip().lower() in {"", "off", "none"} else rate


class ScopedThrottle(BaseThrottle):
    """Counts requests of the view's scope for the method being called."""

    def scope_for(self, request: Request, view: object) -> str | None:
        scopes = getattr(view, "throttle_scopes", None) or {}
        return scopes.get(request.method)

    def allow_request(self, request: Request, view: object) -> bool:
        scope = self.scope_for(request, view)
        rate = rate_of(scope) if scope else None
        if not rate:
            return True
        limit, window = parse_rate(rate)
        user = getattr(request, "user", None)
        who = f"user-{user.pk}" if user is not None and user.is_authenticated else f"ip-{self.get_ident(request)}"
        now = time.time()
        index = int(now // window)
        key = f"throttle:{scope}:{who}:{window}:{index}"
        count = self._increment(key, window)
        if count <= limit:
            return True
        wait = max(1, math.ceil((index + 1) * window - now))
        per = PERIOD_NAMES[window]
        # DRF adds "Expected available in <wait> seconds." to the sentence.
        raise Throttled(wait=wait, detail=f"Too many {scope} requests: at most {limit} per {per}.")

    @staticmethod
    def _increment(key: str, window: int) -> int:
        """The request's number in its window; 0 when the cache cannot be
        reached (limits are for fairness: an outage of the cache lets requests through)."""
        try:
            for _ in range(3):
                cache.add(key, 0, timeout=window + 1)
                try:
                    return cache.incr(key)
                except ValueError:  # expired between add and incr
                    continue
        except Exception:
            logger.warning("rate limits not counted: the cache is unreachable", exc_info=True)
        return 0
