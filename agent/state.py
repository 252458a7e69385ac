"""The agent's persisted state: per lease, the next usage sequence number and the outbox of reports not yet
delivered.

Everything lives in one JSON file, ``<state-dir>/state.json``, rewritten atomically (temporary file, fsync,
``os.replace``) on every change. A usage sample takes its sequence number and enters the outbox in the same
write, before it is sent: a crash after sending can never reuse that number, and a resend after a crash uses the
same number (the platform counts a sequence once).

A lock file (``<state-dir>/agent.lock``, ``flock``) keeps a second agent off the same state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.metering import UsageSample

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOCK_FILE = "agent.lock"
FORMAT_VERSION = 1


class Phase:
    """What the agent last did with a lease's workload."""

    NEW = "new"  # known, never started by this agent
    RUNNING = "running"  # a workload was started (and may still be running, or the agent died)
    FINISHED = "finished"  # completion is reported or queued: never start it again
    STOPPED = "stopped"  # the platform said stop; started again only if the platform lists it as runnable again
    INTERRUPTED = "interrupted"  # the agent shut down; restarted from scratch if still within its window


class StateLocked(RuntimeError):
    """Another agent holds this state directory."""


@dataclass
class LeaseRecord:
    lease_id: int
    next_sequence: int = 1
    phase: str = Phase.NEW
    pid: int | None = None  # the workload's process (and process group) while it runs
    starts: int = 0  # how many times a workload was started for this lease
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "next_sequence": self.next_sequence,
            "phase": self.phase,
            "pid": self.pid,
            "starts": self.starts,
            "outbox": self.outbox,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseRecord:
        return cls(
            lease_id=int(data["lease_id"]),
            next_sequence=int(data.get("next_sequence", 1)),
            phase=str(data.get("phase", Phase.NEW)),
            pid=None if data.get("pid") is None else int(data["pid"]),
            starts=int(data.get("starts", 0)),
            outbox=list(data.get("outbox", [])),
        )


class StateStore:
    """The persisted state of one agent. Not thread-safe: the agent's main loop is its only user."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = open(self.directory / LOCK_FILE, "a+")  # noqa: SIM115 (held for the store's lifetime)
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self._lock.close()
            raise StateLocked(f"another agent is using {self.directory}") from error
        self._path = self.directory / STATE_FILE
        self._leases: dict[int, LeaseRecord] = self._load()

    # --- reading ---

    def get(self, lease_id: int) -> LeaseRecord | None:
        return self._leases.get(lease_id)

    def lease(self, lease_id: int) -> LeaseRecord:
        """The record of a lease, created (unsaved) if the agent has none."""
        record = self._leases.get(lease_id)
        if record is None:
            record = self._leases[lease_id] = LeaseRecord(lease_id=lease_id)
        return record

    def records(self) -> Iterator[LeaseRecord]:
        yield from sorted(self._leases.values(), key=lambda r: r.lease_id)

    # --- changing (every change is saved before the method returns) ---

    def update(self, lease_id: int, **changes: Any) -> LeaseRecord:
        record = self.lease(lease_id)
        for name, value in changes.items():
            setattr(record, name, value)
        self.save()
        return record

    def raise_sequence_floor(self, lease_id: int, server_last_sequence: int) -> None:
        """Never number a sample at or below what the platform already has."""
        record = self.lease(lease_id)
        if server_last_sequence + 1 > record.next_sequence:
            record.next_sequence = server_last_sequence + 1
            self.save()

    def append_usage(self, lease_id: int, build: Callable[[int], UsageSample]) -> UsageSample:
        """Give the next sequence number to the sample ``build`` makes and queue it, in one durable write."""
        record = self.lease(lease_id)
        sample = build(record.next_sequence)
        if sample.sequence != record.next_sequence:
            raise ValueError("the sample must carry the sequence number it was given")
        record.next_sequence += 1
        record.outbox.append({"kind": "usage", "sample": sample.to_record()})
        self.save()
        return sample

    def append_completion(self, lease_id: int, *, exit_code: int, message: str) -> None:
        record = self.lease(lease_id)
        record.outbox.append({"kind": "complete", "exit_code": exit_code, "message": message})
        record.phase = Phase.FINISHED
        record.pid = None
        self.save()

    def pop_outbox(self, lease_id: int) -> None:
        """Drop the first queued report of a lease (delivered, or refused for good)."""
        record = self.lease(lease_id)
        record.outbox.pop(0)
        self.save()

    def forget(self, lease_id: int) -> None:
        if self._leases.pop(lease_id, None) is not None:
            self.save()

    def save(self) -> None:
        data = {"version": FORMAT_VERSION, "leases": [r.to_json() for r in self.records()]}
        temporary = self._path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()

    # --- loading ---

    def _load(self) -> dict[int, LeaseRecord]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            records = [LeaseRecord.from_json(item) for item in data["leases"]]
        except (ValueError, KeyError, TypeError) as error:
            # Keep the damaged file for a human; sequence numbers then restart from the platform's last_sequence.
            aside = self._path.with_name(f"{STATE_FILE}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self._path, aside)
            log.error("state file %s is unreadable (%s); moved to %s and starting empty", self._path, error, aside)
            return {}
        return {record.lease_id: record for record in records}
