"""``python -m agent``: credentials from the environment, one pass with --once, a real process with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.__main__ import build_parser, default_state_dir, main
from tests.agent.conftest import python, wait_for
from tests.agent.fake_platform import SECRET, TOKEN, FakePlatform

REPO = Path(__file__).resolve().parents[2]


def test_once_runs_the_due_leases_with_credentials_from_the_environment(
    platform: FakePlatform, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CX_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("CX_AGENT_SECRET", SECRET)
    platform.add_lease(1, python("print('CX-PROGRESS 100 done')"))

    code = main(["--server", platform.url, "--state-dir", str(tmp_path), "--once", "--report-seconds", "0.2"])

    assert code == 0
    assert [c.body["exit_code"] for c in platform.completions(1)] == [0]
    assert platform.recorded(1)  # signed with the secret from the environment, or the platform would refuse it
    assert (tmp_path / "state.json").exists()


def test_without_credentials_the_agent_refuses_to_start(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.delenv("CX_AGENT_TOKEN", raising=False)
    monkeypatch.delenv("CX_AGENT_SECRET", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--server", "http://127.0.0.1:9", "--state-dir", str(tmp_path), "--token", "only-the-token"])
    assert exit_.value.code == 2
    assert "CX_AGENT_SECRET" in capsys.readouterr().err


def test_intervals_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--server", "http://x", "--report-seconds", "0"])


def test_the_state_directory_follows_systemd(monkeypatch) -> None:
    monkeypatch.delenv("CX_AGENT_STATE_DIR", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/cx-agent")
    assert default_state_dir() == Path("/var/lib/cx-agent")
    monkeypatch.setenv("CX_AGENT_STATE_DIR", "/srv/agent")
    assert default_state_dir() == Path("/srv/agent")


def test_sigterm_stops_the_agent_and_its_workload_without_completing(platform: FakePlatform, tmp_path: Path) -> None:
    lease = platform.add_lease(2, python("import os, time\nprint('working', os.getpid(), flush=True)\ntime.sleep(60)"))
    env = {**os.environ, "CX_AGENT_TOKEN": TOKEN, "CX_AGENT_SECRET": SECRET}
    argv = [sys.executable, "-m", "agent", "--server", platform.url, "--state-dir", str(tmp_path)]
    argv += ["--poll-seconds", "0.1", "--report-seconds", "0.2", "--grace-seconds", "1"]
    agent = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: platform.recorded(2), what="the agent to report usage")
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    assert agent.returncode == 0
    assert "SIGTERM" in stderr
    assert "stopped for the agent's shutdown" in stderr
    assert platform.calls_to("complete", 2) == []
    assert lease.status == "running"  # left to the platform's heartbeat timeout, or to the agent's next start
    workload_pid = int((tmp_path / "leases" / "2" / "output.log").read_text().split("working ")[1].split()[0])
    assert not _alive(workload_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
