"""The agent's main loop: poll the platform for leases, run each lease's workload, report heartbeats, progress
and usage while it runs, enforce the lease's end, and report completion.

One thread does all the talking to the platform and all the bookkeeping; each workload has a reader and a
waiter thread (see :mod:`agent.runner`) that only record what the process does.

Decisions (also in ``agent/README.md``):

* **Restart of the agent.** A workload cannot be re-attached after the agent restarts. On start the agent kills
  any workload process an earlier run left behind; a lease the platform still lists as ``scheduled`` or
  ``running`` and still within its window is then started again *from scratch*, in the same work directory (a
  workload that checkpoints there can resume). Usage sequence numbers continue from
  ``max(persisted next number, platform's last_sequence + 1)``; the time between the agent's death and the
  restart is not reported (the provider is under-paid, the buyer never over-charged). A lease whose completion
  was reported or queued is never started again.
* **Shutdown of the agent** (SIGTERM/SIGINT): stop polling, stop every workload (SIGTERM, then SIGKILL after the
  grace period), queue a final usage sample up to each exit, try briefly to deliver the outbox, and exit
  *without* reporting completion: the platform's heartbeat timeout re-queues the leases, or the agent, started
  again in time, restarts them as above. Undelivered reports stay in the state file.
* **Outages.** Every report that counts (usage, completion) goes through the persisted outbox and is sent in
  order; while the platform is unreachable (connection errors, 5xx, 408, 429, 401/403) the agent backs off
  exponentially with jitter and keeps supervising its workloads and queueing samples. A report the platform
  refuses with another 4xx is logged and dropped, never retried in a loop. Heartbeats and progress are live
  signals, not queued.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.client import ApiClient, ApiError, Backoff, Refused, Unauthorised, Unavailable
from agent.metering import UsageSample, format_instant, parse_instant, truncate_to_microseconds
from agent.runner import (
    Progress,
    Workload,
    container_argv,
    exit_status,
    stop_stale_workload,
    utcnow,
)
from agent.state import Phase, StateStore

log = logging.getLogger(__name__)

TIME_LIMIT_EXIT_CODE = 124  # as timeout(1)
START_FAILED_EXIT_CODE = 127  # as a shell for a command it cannot run
RUNNABLE = frozenset({"scheduled", "running"})


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token: str
    secret: str
    state_dir: Path
    poll_seconds: float = 5.0
    report_seconds: float = 10.0
    grace_seconds: float = 10.0
    progress_seconds: float = 2.0
    nodes: frozenset[int] = frozenset()  # run only leases whose first allocation is on one of these nodes
    pools: frozenset[str] = frozenset()  # run only leases on these pools (identifiers)
    runtime: str | None = None  # "docker" or "podman": run jobs that name an image in a container
    container_args: tuple[str, ...] = ()  # extra `run` arguments; "{devices}" becomes CX_DEVICES
    request_timeout: float = 10.0
    backoff_cap: float = 30.0
    message_chars: int = 1000

    @property
    def tick_seconds(self) -> float:
        return max(0.02, min(0.5, self.poll_seconds / 4, self.report_seconds / 4))


@dataclass(frozen=True)
class Lease:
    """A lease as ``GET /api/v1/agent/leases`` describes it."""

    id: int
    status: str
    job_id: int
    job_name: str
    pool: str
    image: str
    command: tuple[str, ...]
    start: datetime
    end: datetime
    ncu: Decimal
    devices: int
    allocations: tuple[dict[str, Any], ...]
    last_sequence: int

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Lease:
        job = data["job"]
        command = job.get("command") or []
        if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
            raise ValueError("job.command must be a list of strings")
        ncu = Decimal(str(data["ncu"]))
        if not ncu.is_finite() or ncu < 0:
            raise ValueError(f"ncu {data['ncu']!r} is not a non-negative decimal")
        return cls(
            id=int(data["id"]),
            status=str(data["status"]),
            job_id=int(job["id"]),
            job_name=str(job.get("name", "")),
            pool=str(data.get("pool") or ""),
            image=str(job.get("image") or ""),
            command=tuple(command),
            start=parse_instant(str(data["start"])),
            end=parse_instant(str(data["end"])),
            ncu=ncu,
            devices=int(data.get("devices") or 0),
            allocations=tuple(dict(a) for a in data.get("allocations") or ()),
            last_sequence=int(data.get("last_sequence") or 0),
        )

    def head_allocation(self, nodes: frozenset[int] = frozenset()) -> dict[str, Any] | None:
        """The allocation this agent runs the command on: the first one (on one of ``nodes`` if given)."""
        for allocation in self.allocations:
            if not nodes or _node_of(allocation) in nodes:
                return allocation
        return None


def _node_of(allocation: dict[str, Any]) -> int | None:
    try:
        return int(allocation["node"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Running:
    """A workload this agent supervises."""

    lease: Lease
    workload: Workload
    reported_until: datetime  # usage is queued for the lease's time up to here
    next_report: float  # monotonic
    next_progress: float = 0.0
    pending_progress: Progress | None = None
    stop_reason: str | None = None  # "time", "stopped" (by the platform) or "shutdown" (of the agent)
    kill_at: float | None = None  # monotonic: SIGKILL if still running then


class Agent:
    """The provider's agent. ``run()`` until ``request_stop()``; ``run_once()`` for one pass."""

    def __init__(self, config: AgentConfig, *, client: ApiClient | None = None, backoff: Backoff | None = None):
        self.config = config
        self.client = client or ApiClient(config.server, config.token, timeout=config.request_timeout)
        self.backoff = backoff or Backoff(cap=config.backoff_cap)
        self.state = StateStore(config.state_dir)
        self._known: dict[int, Lease] = {}
        self._running: dict[int, Running] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_poll = 0.0
        self._closed = False
        self._recover_after_restart()

    # --- public ---

    def request_stop(self) -> None:
        """Ask the loop to shut down (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    @property
    def running_leases(self) -> list[int]:
        return sorted(self._running)

    def run(self) -> None:
        """Poll and supervise until :meth:`request_stop`, then shut down."""
        log.info("agent started: server %s, state in %s", self.config.server, self.config.state_dir)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                self.tick()
                self._wake.wait(self.config.tick_seconds)
        finally:
            self.shutdown()

    def run_once(self) -> None:
        """Poll until the platform answers once, run the leases that are due, deliver every report, return."""
        try:
            while not self._stop.is_set() and not self._poll():
                self._wake.wait(max(self.config.tick_seconds, self.backoff.ready_at - time.monotonic()))
            while not self._stop.is_set() and (self._running or self._has_outbox() or self._startable_leases()):
                self._wake.clear()
                self.tick(poll=False)
                self._wake.wait(self.config.tick_seconds)
        finally:
            self.shutdown()

    def tick(self, *, poll: bool = True) -> None:
        """One pass: poll if due, start due leases, supervise workloads, deliver queued reports."""
        if poll and time.monotonic() >= self._next_poll and self._network_ready():
            self._poll()
        for lease in self._startable_leases():
            self._start(lease)
        for running in list(self._running.values()):
            self._supervise(running)
        self._flush()

    def shutdown(self) -> None:
        """Stop every workload without reporting completion, queue final usage, try briefly to deliver, close."""
        if self._closed:
            return
        self._closed = True
        if self._running:
            log.info("stopping %d workload(s) for shutdown", len(self._running))
        for running in self._running.values():
            self._terminate(running, "shutdown")
        deadline = time.monotonic() + self.config.grace_seconds + 5
        while self._running and time.monotonic() < deadline:
            for running in list(self._running.values()):
                if running.workload.exited:
                    self._finish(running)
                elif running.kill_at is not None and time.monotonic() >= running.kill_at:
                    running.workload.kill()
                    running.kill_at = None
            self._wake.wait(0.05)
            self._wake.clear()
        flush_deadline = time.monotonic() + min(self.config.grace_seconds, 5.0)
        while self._has_outbox() and time.monotonic() < flush_deadline:
            self._flush()
            if self._has_outbox():
                time.sleep(min(max(0.05, self.backoff.ready_at - time.monotonic()), 0.5))
        if self._has_outbox():
            log.warning("undelivered reports stay queued in %s for the next start", self.config.state_dir)
        self.state.close()

    # --- polling and starting ---

    def _poll(self) -> bool:
        try:
            items = self.client.leases()
        except ApiError as error:
            self._network_failed(error)
            return False
        self._network_ok()
        self._next_poll = time.monotonic() + self.config.poll_seconds
        known: dict[int, Lease] = {}
        for item in items:
            try:
                lease = Lease.from_api(item)
            except (KeyError, TypeError, ValueError, ArithmeticError) as error:
                log.error("ignoring a lease the agent cannot read (id %r): %s", _lease_id(item), error)
                continue
            if self.config.pools and lease.pool not in self.config.pools:
                continue
            if self.config.nodes and _node_of(lease.head_allocation() or {}) not in self.config.nodes:
                continue
            known[lease.id] = lease
            self.state.raise_sequence_floor(lease.id, lease.last_sequence)
            running = self._running.get(lease.id)
            if running is not None and running.lease.end != lease.end:
                log.info("lease %s: end moved to %s", lease.id, format_instant(lease.end))
                running.lease = replace(running.lease, end=lease.end)
        self._known = known
        for record in list(self.state.records()):
            if record.lease_id not in known and record.lease_id not in self._running and not record.outbox:
                self.state.forget(record.lease_id)
        return True

    def _startable_leases(self) -> list[Lease]:
        now = utcnow()
        startable = []
        for lease in self._known.values():
            record = self.state.get(lease.id)
            if lease.status not in RUNNABLE or lease.id in self._running or lease.start > now:
                continue
            if record is not None and record.phase == Phase.FINISHED:
                continue
            startable.append(lease)
        return startable

    def _start(self, lease: Lease) -> None:
        if not self._network_ready():
            return
        try:
            self.client.ack(lease.id)
        except Refused as error:
            log.warning("lease %s: acknowledgement refused (%s); not starting it", lease.id, error)
            self._network_ok()
            self._known.pop(lease.id, None)
            return
        except Unavailable as error:
            self._network_failed(error)
            return
        self._network_ok()
        self._known.pop(lease.id, None)
        if utcnow() >= lease.end:
            log.warning("lease %s: its window ended at %s before the workload started", lease.id, lease.end)
            message = f"the lease time ran out at {format_instant(lease.end)} before the agent could start the workload"
            self.state.append_completion(lease.id, exit_code=TIME_LIMIT_EXIT_CODE, message=message)
            return
        workload = self._workload(lease)
        try:
            workload.start()
        except OSError as error:
            log.error("lease %s: the workload could not be started: %s", lease.id, error)
            message = f"the workload could not be started: {error}"[: self.config.message_chars]
            self.state.append_completion(lease.id, exit_code=START_FAILED_EXIT_CODE, message=message)
            return
        record = self.state.lease(lease.id)
        self.state.update(lease.id, phase=Phase.RUNNING, pid=workload.pid, starts=record.starts + 1)
        assert workload.started_at is not None  # noqa: S101
        started = truncate_to_microseconds(max(workload.started_at, lease.start))
        self._running[lease.id] = Running(
            lease=lease,
            workload=workload,
            reported_until=started,
            next_report=time.monotonic() + self.config.report_seconds,
        )
        log.info(
            "lease %s: started job %s (%s) as pid %s%s",
            lease.id,
            lease.job_id,
            lease.job_name,
            workload.pid,
            "" if record.starts <= 1 else f", start number {record.starts} (from scratch)",
        )

    def _workload(self, lease: Lease) -> Workload:
        lease_dir = self.config.state_dir / "leases" / str(lease.id)
        workdir = lease_dir / "work"
        head = lease.head_allocation(self.config.nodes) or {}
        devices = ",".join(str(device) for device in head.get("devices") or ())
        lease_env = {
            "CX_LEASE_ID": str(lease.id),
            "CX_JOB_ID": str(lease.job_id),
            "CX_LEASE_END": format_instant(lease.end),
            "CX_DEVICES": devices,
            "CX_ALLOCATIONS": json.dumps(list(lease.allocations)),
        }
        # The workload inherits the agent's environment, minus the agent's own credentials.
        env = {name: value for name, value in os.environ.items() if not name.startswith("CX_AGENT_")}
        env.update(lease_env)
        argv: list[str] = list(lease.command)
        stop_container = None
        if self.config.runtime and lease.image:
            name = f"cx-lease-{lease.id}"
            extra = [arg.replace("{devices}", devices) for arg in self.config.container_args]
            argv = container_argv(
                self.config.runtime,
                name=name,
                image=lease.image,
                command=lease.command,
                workdir=workdir,
                env_names=sorted(lease_env),
                extra_args=extra,
            )
            stop_container = [self.config.runtime, "kill", name]
        return Workload(
            argv=argv,
            cwd=workdir,
            env=env,
            log_path=lease_dir / "output.log",
            on_exit=self._wake.set,
            stop_container=stop_container,
        )

    # --- supervising ---

    def _supervise(self, running: Running) -> None:
        if running.workload.exited:
            self._finish(running)
            return
        if running.stop_reason is None and utcnow() >= running.lease.end:
            log.warning("lease %s: the lease time ran out; stopping the workload", running.lease.id)
            self._terminate(running, "time")
        now = time.monotonic()
        if running.kill_at is not None and now >= running.kill_at:
            grace = self.config.grace_seconds
            log.warning("lease %s: the workload ignored SIGTERM for %ss; killing it", running.lease.id, grace)
            running.workload.kill()
            running.kill_at = None
        self._report_progress(running)
        if now >= running.next_report:
            running.next_report = now + self.config.report_seconds
            if running.stop_reason is None:
                self._heartbeat(running)
            self._queue_usage(running, utcnow())

    def _terminate(self, running: Running, reason: str) -> None:
        if running.stop_reason is not None:
            return
        running.stop_reason = reason
        running.kill_at = time.monotonic() + self.config.grace_seconds
        running.workload.terminate()

    def _heartbeat(self, running: Running) -> None:
        if not self._network_ready():
            return
        lease_id = running.lease.id
        try:
            answer = self.client.heartbeat(lease_id)
        except Refused as error:
            self._network_ok()
            if error.gone:
                log.warning("lease %s: heartbeat refused (%s); stopping the workload", lease_id, error)
                self._terminate(running, "stopped")
            else:
                log.error("lease %s: heartbeat refused: %s", lease_id, error)
            return
        except Unavailable as error:
            self._network_failed(error)
            return
        self._network_ok()
        if answer.get("stop"):
            log.warning("lease %s: the platform says stop (status %s)", lease_id, answer.get("status"))
            self._terminate(running, "stopped")

    def _report_progress(self, running: Running, *, force: bool = False) -> None:
        progress = running.workload.take_progress()
        if progress is not None:
            running.pending_progress = progress
        now = time.monotonic()
        if running.pending_progress is None or (now < running.next_progress and not force):
            return
        if not self._network_ready():
            return
        pending = running.pending_progress
        try:
            self.client.progress(running.lease.id, percent=pending.json_percent(), message=pending.message)
        except Refused as error:
            self._network_ok()
            log.warning("lease %s: progress refused, dropped: %s", running.lease.id, error)
        except Unavailable as error:
            self._network_failed(error)
            return
        else:
            self._network_ok()
        running.pending_progress = None
        running.next_progress = now + self.config.progress_seconds

    def _queue_usage(self, running: Running, until: datetime) -> None:
        """Queue (durably, with its sequence number) the usage from the last queued end up to ``until``."""
        lease = running.lease
        start = running.reported_until
        end = truncate_to_microseconds(min(until, lease.end))
        if end <= start:
            return

        def build(sequence: int) -> UsageSample:
            return UsageSample.measure(
                lease_id=lease.id, sequence=sequence, start=start, end=end, ncu=lease.ncu, devices=lease.devices
            )

        sample = self.state.append_usage(lease.id, build)
        running.reported_until = end
        log.debug("lease %s: queued usage %s [%s, %s)", lease.id, sample.sequence, sample.start, sample.end)

    def _finish(self, running: Running) -> None:
        lease, workload = running.lease, running.workload
        self._running.pop(lease.id, None)
        self._known.pop(lease.id, None)
        assert workload.exited_at is not None and workload.returncode is not None  # noqa: S101
        if running.stop_reason is None:
            self._report_progress(running, force=True)
        self._queue_usage(running, workload.exited_at)
        code = exit_status(workload.returncode)
        tail = workload.tail(self.config.message_chars)
        if running.stop_reason is None:
            log.info("lease %s: the workload exited with code %s", lease.id, code)
            message = tail or f"the workload exited with code {code}"
            self._complete(lease.id, code, message)
        elif running.stop_reason == "time":
            log.info("lease %s: the workload was stopped at the lease's end (its code %s)", lease.id, code)
            message = f"the lease time ran out at {format_instant(lease.end)}; the workload was stopped"
            self._complete(lease.id, TIME_LIMIT_EXIT_CODE, f"{message}\n{tail}" if tail else message)
        elif running.stop_reason == "stopped":
            log.info("lease %s: the workload was stopped as the platform asked (its code %s)", lease.id, code)
            self.state.update(lease.id, phase=Phase.STOPPED, pid=None)
        else:
            log.info("lease %s: the workload was stopped for the agent's shutdown (its code %s)", lease.id, code)
            self.state.update(lease.id, phase=Phase.INTERRUPTED, pid=None)

    def _complete(self, lease_id: int, exit_code: int, message: str) -> None:
        message = clip_message(message, self.config.message_chars)
        self.state.append_completion(lease_id, exit_code=exit_code, message=message)

    # --- delivering ---

    def _has_outbox(self) -> bool:
        return any(record.outbox for record in self.state.records())

    def _flush(self) -> None:
        """Send queued reports, each lease's in order, until done or the platform is unreachable."""
        for record in list(self.state.records()):
            while record.outbox:
                if not self._network_ready():
                    return
                entry = record.outbox[0]
                try:
                    self._deliver(record.lease_id, entry)
                except Unavailable as error:
                    self._network_failed(error)
                    return
                except Refused as error:
                    self._network_ok()
                    log.error("lease %s: the platform refused %s; dropped: %s", record.lease_id, _what(entry), error)
                else:
                    self._network_ok()
                self.state.pop_outbox(record.lease_id)

    def _deliver(self, lease_id: int, entry: dict[str, Any]) -> None:
        if entry.get("kind") == "usage":
            sample = UsageSample.from_record(entry["sample"])
            recorded = self.client.usage(lease_id, sample.body(self.config.secret))
            log.debug("lease %s: usage %s %s", lease_id, sample.sequence, "recorded" if recorded else "already had")
        elif entry.get("kind") == "complete":
            answer = self.client.complete(lease_id, exit_code=int(entry["exit_code"]), message=str(entry["message"]))
            status = answer.get("status")
            log.info("lease %s: completion reported (exit code %s, now %s)", lease_id, entry["exit_code"], status)
        else:
            log.error("lease %s: dropping an outbox entry of unknown kind %r", lease_id, entry.get("kind"))

    # --- the platform's reachability ---

    def _network_ready(self) -> bool:
        return self.backoff.ready(time.monotonic())

    def _network_failed(self, error: ApiError) -> None:
        first = self.backoff.failures == 0
        delay = self.backoff.failed(time.monotonic())
        if isinstance(error, Unauthorised):
            log.error("the platform refused the agent token (%s); retrying in %.1fs", error, delay)
        elif first:
            log.warning("the platform is unreachable (%s); retrying with backoff", error)
        else:
            log.debug("still unreachable (%s); next attempt in %.1fs", error, delay)

    def _network_ok(self) -> None:
        if self.backoff.failures:
            log.info("the platform is reachable again")
        self.backoff.succeeded()

    # --- restart ---

    def _recover_after_restart(self) -> None:
        """Kill workloads an earlier run left behind; they are started again from scratch when still due."""
        for record in list(self.state.records()):
            if record.pid is not None:
                stop_stale_workload(record.pid, record.lease_id)
                phase = Phase.INTERRUPTED if record.phase == Phase.RUNNING else record.phase
                self.state.update(record.lease_id, pid=None, phase=phase)
            elif record.phase == Phase.RUNNING:
                self.state.update(record.lease_id, phase=Phase.INTERRUPTED)
            if record.outbox:
                log.info("lease %s: %d report(s) queued before the restart", record.lease_id, len(record.outbox))


def clip_message(message: str, limit: int) -> str:
    """At most ``limit`` characters: the first line (the reason) and the end of the rest (the latest output)."""
    if len(message) <= limit:
        return message
    head, _, rest = message.partition("\n")
    if not rest or len(head) + 1 >= limit:
        return message[-limit:] if not rest else head[:limit]
    return f"{head}\n{rest[len(rest) - (limit - len(head) - 1) :]}"


def _lease_id(item: Any) -> Any:
    return item.get("id") if isinstance(item, dict) else None


def _what(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "usage":
        return f"usage sample {entry.get('sample', {}).get('sequence')}"
    return str(entry.get("kind"))
