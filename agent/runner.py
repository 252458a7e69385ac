"""Running one workload: a subprocess in its own process group, its output logged and scanned for progress
lines, its exit time recorded the moment it happens.

Progress line format (stdout or stderr of the workload, one line)::

    CX-PROGRESS <percent> [message]

``percent`` is an integer or decimal from 0 to 100; the message is optional free text. Any other line, or a
``CX-PROGRESS`` line whose percent is not a number from 0 to 100, is ordinary output.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "CX-PROGRESS"
PROGRESS_MESSAGE_CHARS = 200
MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Progress:
    percent: Decimal
    message: str

    def json_percent(self) -> int | float:
        """The percent as a JSON number: an integer when whole, else two decimals (rounded down)."""
        if self.percent == self.percent.to_integral_value():
            return int(self.percent)
        return float(self.percent.quantize(Decimal("0.01"), rounding=ROUND_DOWN))


def parse_progress(line: str) -> Progress | None:
    """The progress a ``CX-PROGRESS <percent> [message]`` line reports; None for any other line."""
    parts = line.rstrip("\r\n").split(maxsplit=2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX or not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        percent = Decimal(parts[1])
    except InvalidOperation:
        return None
    if not percent.is_finite() or not Decimal(0) <= percent <= Decimal(100):
        return None
    message = parts[2].strip() if len(parts) == 3 else ""
    return Progress(percent=percent, message=message[:PROGRESS_MESSAGE_CHARS])


def exit_status(returncode: int) -> int:
    """A process's exit code as a shell reports it: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def utcnow() -> datetime:
    return datetime.now(UTC)


def container_argv(
    runtime: str,
    *,
    name: str,
    image: str,
    command: Sequence[str],
    workdir: Path,
    env_names: Sequence[str],
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``docker run``/``podman run`` arguments running ``command`` in ``image`` with the work dir at /work."""
    argv = [runtime, "run", "--rm", "--init", "--name", name, "-v", f"{workdir}:/work", "-w", "/work"]
    for env_name in env_names:
        argv += ["-e", env_name]  # value taken from the runtime client's environment
    return [*argv, *extra_args, image, *command]


def stop_stale_workload(pid: int, lease_id: int) -> bool:
    """Kill a workload an earlier run of the agent left behind (its process group), if ``pid`` is still that
    workload: on Linux, a process whose environment has this lease's ``CX_LEASE_ID``. True if one was killed."""
    environ = b""
    for _ in range(20):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False  # gone (or not Linux: then it cannot be told from an unrelated process, so leave it)
        if environ:
            break
        time.sleep(0.05)  # some kernels briefly show a running process's environment as empty: look again
    if f"CX_LEASE_ID={lease_id}".encode() not in environ.split(b"\0"):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
        log.warning("lease %s: killed workload process group %s left by an earlier agent run", lease_id, pid)
        return True
    return False


class Workload:
    """One workload process. ``start()`` launches it; a reader thread logs its output (stdout and stderr merged)
    to ``log_path`` and keeps the latest progress; a waiter thread records the exit moment and then kills any
    process still left in its process group."""

    def __init__(
        self,
        *,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        tail_lines: int = 40,
        on_exit: Callable[[], None] | None = None,
        stop_container: Sequence[str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.log_path = log_path
        self.started_at: datetime | None = None
        self.exited_at: datetime | None = None
        self.returncode: int | None = None
        self._on_exit = on_exit
        self._stop_container = list(stop_container) if stop_container else None
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._progress: Progress | None = None
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the workload has not started")
        return self._process.pid

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def start(self) -> None:
        """Launch the process; raises OSError when it cannot be started (missing program, bad cwd…)."""
        if not self.argv:
            raise OSError("the job has no command")
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed by the reader thread)
        log_file.write(f"--- {utcnow().isoformat()} starting {self.argv!r}\n".encode())
        log_file.flush()
        try:
            self._process = subprocess.Popen(  # noqa: S603 (the lease's command is what the agent exists to run)
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            log_file.write(f"--- could not start: {error}\n".encode())
            log_file.close()
            raise
        self.started_at = utcnow()
        self._reader = threading.Thread(target=self._read, args=(log_file,), name=f"read-{self.pid}", daemon=True)
        self._reader.start()
        threading.Thread(target=self._wait, name=f"wait-{self.pid}", daemon=True).start()

    def _read(self, log_file: BinaryIO) -> None:
        assert self._process is not None and self._process.stdout is not None  # noqa: S101
        stream = self._process.stdout
        with log_file:
            for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
                log_file.write(raw)
                log_file.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                progress = parse_progress(line)
                with self._lock:
                    self._tail.append(line)
                    if progress is not None:
                        self._progress = progress
            stream.close()

    def _wait(self) -> None:
        assert self._process is not None  # noqa: S101
        returncode = self._process.wait()
        with self._lock:
            self.exited_at = utcnow()
            self.returncode = returncode
        # The workload is its process group: nothing of it outlives its main process.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit()

    def take_progress(self) -> Progress | None:
        """The latest progress line not yet taken."""
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def tail(self, max_chars: int = 1000) -> str:
        """The last lines of output (at most ``max_chars`` characters), once the output is drained."""
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        with self._lock:
            text = "\n".join(self._tail)
        return text[-max_chars:]

    def terminate(self) -> None:
        """SIGTERM to the workload's process group."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the workload's process group (and ``<runtime> kill`` for a container)."""
        self._signal(signal.SIGKILL)
        if self._stop_container:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(self._stop_container, capture_output=True, timeout=30, check=False)  # noqa: S603

    def wait(self, timeout: float | None = None) -> bool:
        """True once the process has exited (within ``timeout`` seconds)."""
        return self._exited.wait(timeout)

    def _signal(self, signum: int) -> None:
        if self._process is None or self.exited:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)
