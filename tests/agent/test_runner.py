"""Workload supervision: progress lines, output, exit codes, process groups, container commands."""

from __future__ import annotations

import os
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from agent.runner import Progress, Workload, container_argv, exit_status, parse_progress, stop_stale_workload
from tests.agent.conftest import python, wait_for


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("CX-PROGRESS 50 half way", Progress(Decimal(50), "half way")),
        ("CX-PROGRESS 12.5", Progress(Decimal("12.5"), "")),
        ("CX-PROGRESS 100   done, saving  \n", Progress(Decimal(100), "done, saving")),
        ("CX-PROGRESS 0 starting\r\n", Progress(Decimal(0), "starting")),
    ],
)
def test_progress_lines_are_read(line: str, expected: Progress) -> None:
    assert parse_progress(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "CX-PROGRESS",
        "CX-PROGRESS 101 too far",
        "CX-PROGRESS -1",
        "CX-PROGRESS NaN",
        "CX-PROGRESS half",
        "CX-PROGRESSX 50",
        "  CX-PROGRESS 50 indented",
        "epoch 3: CX-PROGRESS 50",
        "cx-progress 50",
    ],
)
def test_other_lines_are_ordinary_output(line: str) -> None:
    assert parse_progress(line) is None


def test_progress_messages_are_kept_short() -> None:
    progress = parse_progress("CX-PROGRESS 5 " + "x" * 1000)
    assert progress is not None and len(progress.message) == 200


def test_percent_goes_out_as_a_json_number() -> None:
    assert Progress(Decimal(50), "").json_percent() == 50
    assert isinstance(Progress(Decimal("50.0"), "").json_percent(), int)
    assert Progress(Decimal("12.345"), "").json_percent() == 12.34
    assert Progress(Decimal("99.999"), "").json_percent() == 99.99  # not done until it says so


def test_exit_codes_read_as_a_shell_reports_them() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-9) == 137  # killed by SIGKILL
    assert exit_status(-15) == 143


def test_a_workload_logs_its_output_and_keeps_the_latest_progress(tmp_path: Path) -> None:
    exited = threading.Event()
    workload = Workload(
        argv=python(
            "import sys\nprint('a')\nprint('CX-PROGRESS 10 one')\nprint('CX-PROGRESS 20 two')\n"
            "print('oops', file=sys.stderr)\nsys.exit(4)"
        ),
        cwd=tmp_path / "work",
        env=dict(os.environ),
        log_path=tmp_path / "out.log",
        on_exit=exited.set,
    )
    workload.start()
    assert workload.wait(5)

    assert exited.is_set()
    assert workload.returncode == 4
    assert workload.exited_at is not None and workload.started_at is not None
    assert workload.exited_at >= workload.started_at
    assert workload.tail().splitlines()[-1] == "oops"
    assert workload.take_progress() == Progress(Decimal(20), "two")
    assert workload.take_progress() is None  # taken once
    log = (tmp_path / "out.log").read_text()
    assert "CX-PROGRESS 10 one" in log and "oops" in log


def test_the_tail_is_the_end_of_the_output(tmp_path: Path) -> None:
    workload = Workload(
        argv=python("for i in range(500):\n    print(f'line {i}')"),
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "out.log",
    )
    workload.start()
    workload.wait(5)
    tail = workload.tail(max_chars=30)
    assert len(tail) <= 30
    assert tail.endswith("line 499")


def test_nothing_of_a_workload_outlives_its_main_process(tmp_path: Path) -> None:
    workload = Workload(
        argv=python(
            "import subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
        ),
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "out.log",
    )
    workload.start()
    workload.wait(5)
    child = int(workload.tail().split()[-1])
    wait_for(lambda: not _alive(child), timeout=5, what="the left-over child to be killed")


def test_terminate_reaches_the_whole_process_group(tmp_path: Path) -> None:
    workload = Workload(
        argv=python("import time\nprint('up', flush=True)\ntime.sleep(60)"),
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "out.log",
    )
    workload.start()
    wait_for(lambda: "up" in (tmp_path / "out.log").read_text(), what="the workload")
    workload.terminate()
    assert workload.wait(5)
    assert exit_status(workload.returncode) == 143


def test_a_missing_program_cannot_start(tmp_path: Path) -> None:
    workload = Workload(argv=["/no/such/program"], cwd=tmp_path, env={}, log_path=tmp_path / "out.log")
    with pytest.raises(OSError):
        workload.start()
    with pytest.raises(OSError, match="no command"):
        Workload(argv=[], cwd=tmp_path, env={}, log_path=tmp_path / "x.log").start()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stale_workload_is_killed_only_if_it_belongs_to_the_lease(tmp_path: Path) -> None:
    env = {**os.environ, "CX_LEASE_ID": "5"}
    workload = Workload(
        argv=python("import time\nprint('up', flush=True)\ntime.sleep(60)"),
        cwd=tmp_path,
        env=env,
        log_path=tmp_path / "out.log",
    )
    workload.start()
    wait_for(lambda: "up" in (tmp_path / "out.log").read_text(), what="the workload")

    assert stop_stale_workload(workload.pid, 55) is False  # another lease's process is left alone
    assert not workload.exited
    assert stop_stale_workload(workload.pid, 5) is True
    assert workload.wait(5)


def test_a_container_command_mounts_the_work_dir_and_passes_the_lease_variables() -> None:
    argv = container_argv(
        "podman",
        name="cx-lease-9",
        image="registry.example.cn/train:1",
        command=["python", "train.py"],
        workdir=Path("/var/lib/cx-agent/leases/9/work"),
        env_names=["CX_DEVICES", "CX_LEASE_ID"],
        extra_args=["--device", "nvidia.com/gpu=0"],
    )
    assert argv[:3] == ["podman", "run", "--rm"]
    assert argv[argv.index("--name") + 1] == "cx-lease-9"
    assert "/var/lib/cx-agent/leases/9/work:/work" in argv
    assert argv[argv.index("-w") + 1] == "/work"
    assert argv[argv.index("CX_DEVICES") - 1 : argv.index("CX_DEVICES") + 1] == ["-e", "CX_DEVICES"]
    assert argv[-3:] == ["registry.example.cn/train:1", "python", "train.py"]
    assert argv.index("--device") < argv.index("registry.example.cn/train:1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
