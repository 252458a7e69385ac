"""Real processes for the end-to-end tests: the API server (gunicorn), a
scheduling worker with its embedded beat (Celery), and provider agents
(``python -m agent``), all on the pytest test database and a Redis database
of their own. Every process is stopped on the way out, and its log's tail is
printed so a failing test shows what the processes said."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

BIN = Path(sys.executable).parent
REDIS_DB = int(os.environ.get("CX_E2E_REDIS_DB", "7"))  # the broker database these tests own: flushed before and after
STARTUP_DEADLINE = 60  # seconds for a process to come up


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = 60, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _database_url() -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}?application_name=cx-e2e"


def _broker_url() -> str:
    base = settings.CELERY_BROKER_URL.split("?")[0].rstrip("/")
    host = base.removeprefix("redis://").split("/")[0]
    return f"redis://{host}/{REDIS_DB}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Platform:
    """The running platform: its URL, and agents started on demand."""

    url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    workload_pids: list[Path] = field(default_factory=list)

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes[name] = process
        return process

    def start_agent(self, name: str, *, token: str, secret: str) -> subprocess.Popen:
        state = self.logs / f"{name}-state"
        state.mkdir()
        command = [str(BIN / "python"), "-m", "agent", "--server", self.url, "--state-dir", str(state)]
        command += ["--poll-seconds", "1", "--report-seconds", "1", "--grace-seconds", "2", "--progress-seconds", "0.2"]
        return self.spawn(name, command, env={**self.env, "CX_AGENT_TOKEN": token, "CX_AGENT_SECRET": secret})

    def request(self, method: str, path: str, *, token: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(  # noqa: S310 (http to our own server)
            self.url + path,
            data=body,
            method=method,
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:  # noqa: S310
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def stop_all(self) -> None:
        for process in reversed(list(self.processes.values())):
            _stop(process)
        for pid_file in self.workload_pids:
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)

    def print_logs(self, lines: int = 40) -> None:
        for name in self.processes:
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"----- {name} (last {lines} lines) -----")
            print("\n".join(text[-lines:]))


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/?format=json", timeout=5) as answer:  # noqa: S310
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch(running: Platform, port: int) -> None:
    """Start the API server (gunicorn) and a scheduling worker with beat on
    ``running.env``; return once both answer."""
    tmp_path = running.logs
    server = running.spawn(
        "server",
        [str(BIN / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
    )
    worker = running.spawn(
        "worker",
        [
            str(BIN / "celery"),
            "-A",
            "config",
            "worker",
            "--beat",
            "--schedule",
            str(tmp_path / "beat-schedule"),
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "-Q",
            "celery",
            "-n",
            f"e2e-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "info",
        ],
    )
    wait_for(
        "the API server to answer /health/",
        lambda: server.poll() is not None or _health(running.url),
        timeout=STARTUP_DEADLINE,
    )
    assert server.poll() is None, "the API server exited"
    wait_for(
        "the worker to be ready",
        lambda: worker.poll() is not None or " ready." in (tmp_path / "worker.log").read_text(errors="replace"),
        timeout=STARTUP_DEADLINE,
    )
    assert worker.poll() is None, "the worker exited"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """The API server and a scheduling worker with beat, as real processes on the test database."""
    import redis

    if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("the end-to-end platform runs on PostgreSQL and Redis")  # the markers fail it under CI
    broker = _broker_url()
    redis_client = redis.Redis.from_url(broker)
    redis_client.flushdb()
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        "CONN_MAX_AGE": "0",
        "CX_HEARTBEAT_TIMEOUT_SECONDS": "4",
        "CX_WATCH_SECONDS": "1",
        "CX_CYCLE_SECONDS": "1",
        "CX_CHARGE_SECONDS": "1",
    }
    running = Platform(url=f"http://127.0.0.1:{port}", env=env, logs=tmp_path)
    try:
        launch(running, port)
        yield running
    finally:
        running.stop_all()
        running.print_logs()
        redis_client.flushdb()
        redis_client.close()
