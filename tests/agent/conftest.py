"""Fixtures for the agent's tests: a fake platform on a local port and agents with short intervals."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent, AgentConfig
from tests.agent.fake_platform import SECRET, TOKEN, FakePlatform


def python(code: str) -> list[str]:
    """A workload command: this interpreter running ``code``."""
    return [sys.executable, "-u", "-c", code]


def wait_for(predicate: Callable[[], Any], *, timeout: float = 8.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class AgentThread:
    """An agent's ``run()`` loop in a thread, stopped (and shut down) by ``stop()``."""

    def __init__(self, agent: Agent, *, once: bool = False) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.run_once if once else agent.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.request_stop()
        self.join()

    def join(self, timeout: float = 15.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent did not stop"


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    fake = FakePlatform().start()
    yield fake
    fake.stop()


@pytest.fixture
def make_agent(platform: FakePlatform, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(**overrides: Any) -> Agent:
        options: dict[str, Any] = {
            "server": platform.url,
            "token": TOKEN,
            "secret": SECRET,
            "state_dir": tmp_path / "state",
            "poll_seconds": 0.1,
            "report_seconds": 0.2,
            "grace_seconds": 0.5,
            "progress_seconds": 0.05,
            "backoff_cap": 0.4,
            "request_timeout": 2.0,
        }
        options.update(overrides)
        agent = Agent(AgentConfig(**options))
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.request_stop()
        agent.shutdown()
