"""Request rate limits per scope (submit, quote, login, register), counted in
the shared Django cache so every API process sees the same counts.

A view names its scope (``throttle_scope = "quote"``, every method) or its
scopes per method (``throttle_scopes = {"POST": "submit"}``); the rate of
each scope comes from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (set from
``CX_THROTTLE_*``), read at request time. Signed-in callers are
counted per user, anonymous ones per client address. Counts are fixed windows
kept with an atomic increment (``INCR`` on Redis), so concurrent requests on
several workers are never lost. A request over the limit is refused with 429,
a ``Retry-After`` header and the error body saying when to try again."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

clock = time.time  # seconds since the epoch; windows start at whole multiples of their length

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


@dataclass(frozen=True)
class Refusal:
    """A request over its scope's limit: at most ``limit`` per ``period``; ``wait`` seconds until the next window."""

    scope: str
    limit: int
    period: str
    wait: int

    @property
    def sentence(self) -> str:
        return f"Too many {self.scope} requests: at most {self.limit} per {self.period}."


def hit(scope: str, who: str) -> Refusal | None:
    """Count one request of ``who`` (``user-<id>`` or ``ip-<address>``) in
    ``scope``; the refusal if that goes over the scope's limit."""
    rate = rate_of(scope)
    if not rate:
        return None
    limit, window = parse_rate(rate)
    now = clock()
    index = int(now // window)
    count = _increment(f"throttle:{scope}:{who}:{window}:{index}", window)
    if count <= limit:
        return None
    return Refusal(scope, limit, PERIOD_NAMES[window], max(1, math.ceil((index + 1) * window - now)))


def _increment(key: str, window: int) -> int:
    """The request's number in its window; 0 when the cache cannot be
    reached (limits are for fairness: an outage of the cache lets requests through)."""
    try:
        client = _redis_client(key)
        if client is not None:  # one round trip: INCR, and the window's expiry set by the first
            stored = caches["default"].make_and_validate_key(key)
            pipe = client.pipeline(transaction=False)
            pipe.incr(stored)
            pipe.expire(stored, window + 1, nx=True)
            return int(pipe.execute()[0])
        for _ in range(3):
            cache.add(key, 0, timeout=window + 1)
            try:
                return cache.incr(key)
            except ValueError:  # expired between add and incr
                continue
    except Exception:
        logger.warning("rate limits not counted: the cache is unreachable", exc_info=True)
    return 0


_clients = threading.local()  # per thread: (Django's Redis cache client, the Redis client it made)


def _redis_client(key: str) -> Any:
    """The Redis client behind Django's Redis cache, or None for another cache;
    made once per thread and kept while the cache's client is the same (Django
    makes a new one on every call: 0.17 ms, a twentieth of a quote's CPU).
    A Redis client takes a connection from the cache's pool per command."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return None
    cache_client = backend._cache
    kept = getattr(_clients, "kept", None)
    if kept is None or kept[0] is not cache_client:
        kept = _clients.kept = (cache_client, cache_client.get_client(key, write=True))
    return kept[1]


def client_address(request: HttpRequest) -> str:
    """The address per-address limits count (``NUM_PROXIES`` back in X-Forwarded-For)."""
    return BaseThrottle().get_ident(request)


class ScopedThrottle(BaseThrottle):
    """Counts requests of the view's scope (for the method being called)."""

    def allow_request(self, request: Request, view: object) -> bool:
        scopes = getattr(view, "throttle_scopes", None)
        scope = scopes.get(request.method) if scopes is not None else getattr(view, "throttle_scope", None)
        if not scope:
            return True
        user = getattr(request, "user", None)
        who = f"user-{user.pk}" if user is not None and user.is_authenticated else f"ip-{client_address(request)}"
        refusal = hit(scope, who)
        if refusal is None:
            return True
        # DRF adds "Expected available in <wait> seconds." to the sentence.
        raise Throttled(wait=refusal.wait, detail=refusal.sentence)
