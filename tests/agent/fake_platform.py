"""An in-memory platform speaking the agent side of the HTTP contract, served by http.server in a thread.

It checks what the real platform checks (token, signature, the sample's window, capacity × elapsed, state
changes) and records every call, so tests can assert what the platform saw. Knobs simulate trouble: an outage
(every request answered 503), a response lost after the sample was recorded, a sample refused with 400.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "agent-token-1"
SECRET = "agent-secret-1"
LISTED = {"scheduled", "running", "suspended"}
STOPPING = {"cancelled", "preempted", "suspended", "lost"}


@dataclass
class FakeLease:
    id: int
    command: list[str]
    start: datetime
    end: datetime
    ncu: Decimal
    devices: int
    status: str = "scheduled"
    job_id: int = 0
    image: str = ""
    pool: str = "CX-JJJ-00001-001-0001-00"
    allocations: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[int, dict[str, Any]] = field(default_factory=dict)  # sequence -> body, recorded once
    last_sequence_floor: int = 0  # pretend earlier samples exist

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "job": {
                "id": self.job_id or self.id + 1000,
                "name": f"job {self.id}",
                "image": self.image,
                "command": self.command,
            },
            "pool": self.pool,
            "start": self.start.isoformat().replace("+00:00", "Z"),
            "end": self.end.isoformat().replace("+00:00", "Z"),
            "allocations": self.allocations,
            "ncu": str(self.ncu),
            "devices": self.devices,
            "last_sequence": max([self.last_sequence_floor, *self.usage]),
        }


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any]
    status: int
    answer: dict[str, Any]
    at: datetime


class FakePlatform:
    def __init__(self, *, token: str = TOKEN, secret: str = SECRET) -> None:
        self.token = token
        self.secret = secret
        self.leases: dict[int, FakeLease] = {}
        self.calls: list[Call] = []
        self.lock = threading.RLock()
        self.unavailable_until = 0.0  # monotonic: answer 503 to everything before then
        self.lose_response_for: set[tuple[int, int]] = set()  # (lease, sequence): record, then answer 503
        self.refuse_sequences: set[tuple[int, int]] = set()  # (lease, sequence): answer 400 without recording
        self._server: ThreadingHTTPServer | None = None

    # --- setting up ---

    def add_lease(
        self,
        lease_id: int,
        command: list[str],
        *,
        start: datetime | None = None,
        seconds: float = 60.0,
        ncu: str = "2.5",
        devices: int = 2,
        status: str = "scheduled",
        allocations: list[dict[str, Any]] | None = None,
        image: str = "",
        pool: str = "CX-JJJ-00001-001-0001-00",
    ) -> FakeLease:
        start = start or datetime.now(UTC) - timedelta(seconds=1)
        lease = FakeLease(
            id=lease_id,
            command=command,
            start=start,
            end=start + timedelta(seconds=seconds),
            ncu=Decimal(ncu),
            devices=devices,
            status=status,
            image=image,
            pool=pool,
            allocations=allocations
            if allocations is not None
            else [{"node": 0, "devices": [0, 1], "milli": 1000, "cpu_milli": 8000, "memory_mib": 65536}],
        )
        with self.lock:
            self.leases[lease_id] = lease
        return lease

    def set_status(self, lease_id: int, status: str) -> None:
        with self.lock:
            self.leases[lease_id].status = status

    def outage(self, seconds: float) -> None:
        self.unavailable_until = time.monotonic() + seconds

    # --- what the platform saw ---

    def calls_to(self, kind: str, lease_id: int | None = None) -> list[Call]:
        with self.lock:
            return [
                c
                for c in self.calls
                if c.path.endswith(f"/{kind}") and (lease_id is None or f"/leases/{lease_id}/" in c.path)
            ]

    def recorded(self, lease_id: int) -> list[dict[str, Any]]:
        """The usage samples recorded for a lease, in sequence order."""
        with self.lock:
            usage = self.leases[lease_id].usage
            return [usage[sequence] for sequence in sorted(usage)]

    def completions(self, lease_id: int) -> list[Call]:
        return [c for c in self.calls_to("complete", lease_id) if c.status == 200]

    # --- serving ---

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakePlatform:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer = platform.handle(method, self.path, self.headers.get("Authorization", ""), raw)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the contract ---

    def handle(self, method: str, path: str, authorization: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        with self.lock:
            status, answer = self._answer(method, path, authorization, body)
            self.calls.append(Call(method, path, body, status, answer, datetime.now(UTC)))
        return status, answer

    def _answer(self, method: str, path: str, authorization: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if time.monotonic() < self.unavailable_until:
            return 503, {"code": "unavailable", "detail": "down for maintenance", "field": None}
        if authorization != f"Agent {self.token}":
            return 401, {"code": "not_authenticated", "detail": "bad agent token", "field": None}
        if method == "GET" and path == "/api/v1/agent/leases":
            return 200, {"results": [lease.as_json() for lease in self.leases.values() if lease.status in LISTED]}
        match = re.fullmatch(r"/api/v1/agent/leases/(\d+)/(ack|heartbeat|progress|usage|complete)", path)
        if method != "POST" or match is None:
            return 404, {"code": "not_found", "detail": "no such endpoint", "field": None}
        lease = self.leases.get(int(match.group(1)))
        if lease is None:
            return 404, {"code": "not_found", "detail": "no such lease", "field": None}
        return getattr(self, f"_{match.group(2)}")(lease, body)

    def _ack(self, lease: FakeLease, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if lease.status not in ("scheduled", "running"):
            return 409, {"code": "illegal_transition", "detail": "cannot start", "field": None, "current": lease.status}
        lease.status = "running"
        return 200, lease.as_json()

    def _heartbeat(self, lease: FakeLease, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"status": lease.status, "stop": lease.status in STOPPING}

    def _progress(self, lease: FakeLease, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        percent = body.get("percent")
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            return 400, {"code": "invalid", "detail": "percent is 0..100", "field": "percent"}
        return 200, {}

    def _usage(self, lease: FakeLease, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        def refuse(name: str, detail: str) -> tuple[int, dict[str, Any]]:
            return 400, {"code": "invalid", "detail": detail, "field": name}

        sequence = body.get("sequence")
        if not isinstance(sequence, int) or sequence < 1:
            return refuse("sequence", "sequence >= 1")
        if (lease.id, sequence) in self.refuse_sequences:
            return refuse("ncu_hours", "refused by the test")
        if sequence in lease.usage:
            return 200, {"sequence": sequence, "duplicate": True}
        if lease.status == "scheduled":  # as the platform: usage counts once acknowledged, even after a stop
            return refuse("lease", "the lease has not started: acknowledge it first")
        energy = body.get("energy_kwh")
        message = (
            f"{lease.id}|{sequence}|{body.get('start')}|{body.get('end')}|{body.get('device_seconds')}|"
            f"{body.get('ncu_hours')}|{energy if energy is not None else ''}"
        )
        expected = hmac.new(self.secret.encode(), message.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(body.get("signature", ""))):
            return refuse("signature", "signature does not verify")
        start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
        if end <= start:
            return refuse("end", "end after start")
        if start < lease.start or end > lease.end:
            return refuse("start", "outside the lease window")
        if end > datetime.now(UTC):
            return refuse("end", "in the future")
        ncu_hours = Decimal(body["ncu_hours"])
        if ncu_hours > lease.ncu * Decimal((end - start) // timedelta(microseconds=1)) / Decimal(3_600_000_000):
            return refuse("ncu_hours", "more than the lease held")
        lease.usage[sequence] = body
        if (lease.id, sequence) in self.lose_response_for:
            self.lose_response_for.discard((lease.id, sequence))
            return 503, {"code": "unavailable", "detail": "recorded, but the answer is lost", "field": None}
        return 201, {"sequence": sequence}

    def _complete(self, lease: FakeLease, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if lease.status != "running":
            return 409, {"code": "illegal_transition", "detail": "not running", "field": None, "current": lease.status}
        lease.status = "completed" if body.get("exit_code") == 0 else "failed"
        return 200, lease.as_json()
