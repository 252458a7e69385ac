"""The HTTP client: what each kind of answer means for the agent, and the backoff between attempts."""

from __future__ import annotations

import random
import socket

import pytest

from agent.client import ApiClient, Backoff, Refused, Unauthorised, Unavailable
from tests.agent.fake_platform import TOKEN, FakePlatform


def test_leases_are_listed_with_the_agent_token(platform: FakePlatform) -> None:
    platform.add_lease(5, ["true"])
    client = ApiClient(platform.url, TOKEN)
    [lease] = client.leases()
    assert lease["id"] == 5
    assert platform.calls[-1].path == "/api/v1/agent/leases"


def test_a_refused_token_is_unauthorised_and_retried_later(platform: FakePlatform) -> None:
    with pytest.raises(Unauthorised) as refused:
        ApiClient(platform.url, "revoked").leases()
    assert refused.value.status == 401
    assert isinstance(refused.value, Unavailable)


def test_a_down_platform_is_unavailable(platform: FakePlatform) -> None:
    platform.outage(30)
    with pytest.raises(Unavailable) as down:
        ApiClient(platform.url, TOKEN).leases()
    assert down.value.status == 503
    assert "down for maintenance" in str(down.value)


def test_no_server_listening_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Unavailable):
        ApiClient(f"http://127.0.0.1:{port}", TOKEN, timeout=1).leases()


def test_a_foreign_lease_is_refused_and_gone(platform: FakePlatform) -> None:
    with pytest.raises(Refused) as refused:
        ApiClient(platform.url, TOKEN).heartbeat(404040)
    assert refused.value.status == 404 and refused.value.gone


def test_an_illegal_change_is_refused_with_the_current_state(platform: FakePlatform) -> None:
    platform.add_lease(6, ["true"], status="cancelled")
    with pytest.raises(Refused) as refused:
        ApiClient(platform.url, TOKEN).complete(6, exit_code=0, message="")
    assert refused.value.gone
    assert refused.value.payload["current"] == "cancelled"
    assert "current=cancelled" in str(refused.value)


def test_an_invalid_report_is_refused_for_good(platform: FakePlatform) -> None:
    platform.add_lease(7, ["true"], status="running")
    with pytest.raises(Refused) as refused:
        ApiClient(platform.url, TOKEN).progress(7, percent=150, message="")
    assert refused.value.status == 400 and not refused.value.gone
    assert refused.value.payload["field"] == "percent"


def test_only_http_servers_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        ApiClient("file:///etc/passwd", TOKEN)
    with pytest.raises(ValueError, match="http"):
        ApiClient("exchange.example.cn", TOKEN)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(1))
    delays = [backoff.failed(now=100.0) for _ in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0
    assert backoff.ready_at == pytest.approx(100.0 + delays[-1])
    assert not backoff.ready(100.0)
    backoff.succeeded()
    assert backoff.ready(100.0)
    assert backoff.failed(now=0.0) <= 0.5  # back to the start after a success
