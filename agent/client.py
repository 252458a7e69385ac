"""The agent's side of the HTTP contract, over ``urllib``, with error classes that say what to do next.

* :class:`Unavailable` — the platform could not be reached or answered 5xx, 408 or 429: try again later, keep
  the report.
* :class:`Unauthorised` — 401/403: the token was refused (revoked or rotated). Also kept and retried later, so
  a provider who restarts the agent with new credentials loses no usage.
* :class:`Refused` — any other 4xx: the platform will never accept this request as it is. 404 (not this
  provider's lease) and 409 (illegal state change, ``current`` names the lease's state) are ``gone``.

:class:`Backoff` spaces out attempts after failures: exponential, capped, with jitter.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

USER_AGENT = "cx-agent/1"


class ApiError(Exception):
    def __init__(self, message: str, *, status: int | None = None, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload or {}


class Unavailable(ApiError):
    """Connection failure, timeout, 5xx, 408 or 429: retry later."""


class Unauthorised(Unavailable):
    """401/403: the agent token was refused. Retried later too (see the module docstring)."""


class Refused(ApiError):
    """A 4xx the platform will not change its mind about."""

    @property
    def gone(self) -> bool:
        """404 or 409: the lease is not (or no longer) in a state that takes this report."""
        return self.status in (404, 409)


def _describe(status: int, payload: dict[str, Any]) -> str:
    parts = [f"HTTP {status}"]
    for key in ("code", "detail", "field", "current"):
        if payload.get(key) not in (None, ""):
            parts.append(f"{key}={payload[key]}")
    return " ".join(parts)


class ApiClient:
    """Calls to the platform's agent endpoints, authenticated with ``Authorization: Agent <token>``."""

    def __init__(self, server: str, token: str, *, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server must be an http(s) URL, not {server!r}")
        self.server = server.rstrip("/")
        self._token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON payload) of a 2xx answer; raises :class:`ApiError` subclasses otherwise."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Agent {self._token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status, _json(response.read())
        except urllib.error.HTTPError as error:
            status = error.code
            try:
                payload = _json(error.read())
            except (OSError, ValueError):
                payload = {}
            finally:
                error.close()
            message = f"{method} {path}: {_describe(status, payload)}"
            if status in (401, 403):
                raise Unauthorised(message, status=status, payload=payload) from None
            if status >= 500 or status in (408, 429):
                raise Unavailable(message, status=status, payload=payload) from None
            raise Refused(message, status=status, payload=payload) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            # Connection refused or reset, DNS failure, timeout, or a body that is not JSON (a proxy's error page).
            raise Unavailable(f"{method} {path}: {error}") from None

    # --- the contract's endpoints ---

    def leases(self) -> list[dict[str, Any]]:
        _, payload = self.request("GET", "/api/v1/agent/leases")
        results = payload.get("results")
        if not isinstance(results, list):
            raise Unavailable("GET /api/v1/agent/leases: the answer has no results list")
        return results

    def ack(self, lease_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/agent/leases/{lease_id}/ack", {})[1]

    def heartbeat(self, lease_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/agent/leases/{lease_id}/heartbeat", {})[1]

    def progress(self, lease_id: int, *, percent: int | float, message: str) -> None:
        self.request("POST", f"/api/v1/agent/leases/{lease_id}/progress", {"percent": percent, "message": message})

    def usage(self, lease_id: int, body: dict[str, Any]) -> bool:
        """Send one signed sample; True when newly recorded (201), False when the platform already had it (200)."""
        status, _ = self.request("POST", f"/api/v1/agent/leases/{lease_id}/usage", body)
        return status == 201

    def complete(self, lease_id: int, *, exit_code: int, message: str) -> dict[str, Any]:
        body = {"exit_code": exit_code, "message": message}
        return self.request("POST", f"/api/v1/agent/leases/{lease_id}/complete", body)[1]


def _json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    payload = json.loads(raw.decode("utf-8"))
    return payload if isinstance(payload, dict) else {"results": payload}


class Backoff:
    """When the next attempt may go out after consecutive failures: ``base × 2^n`` capped at ``cap``, each delay
    drawn uniformly from its upper half (jitter, so many agents do not retry in step after an outage)."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self.ready_at = 0.0
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)

    def ready(self, now: float) -> bool:
        return now >= self.ready_at

    def failed(self, now: float) -> float:
        """Record a failure at monotonic time ``now``; the delay before the next attempt."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        self.failures += 1
        self.ready_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.ready_at = 0.0
