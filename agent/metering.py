"""Usage maths: what one usage sample reports, and how it is signed.

A sample covers ``[start, end)`` of the lease's wall-clock time. Its figures
are rounded *down* (``device_seconds`` to 3 decimals, ``ncu_hours`` to 4), so
a sample never claims more than the lease held: the platform refuses a sample
whose ``ncu_hours`` exceeds ``ncu × (end − start)`` hours.

Instants are sent as UTC ISO 8601 strings with microseconds; the figures are
computed from exactly those instants, and the signature covers exactly the
strings in the request body.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

DEVICE_SECONDS_PLACES = Decimal("0.001")
NCU_HOURS_PLACES = Decimal("0.0001")
_MICROSECONDS_PER_SECOND = Decimal(1_000_000)
_MICROSECONDS_PER_HOUR = Decimal(3_600_000_000)


def format_instant(moment: datetime) -> str:
    """The UTC ISO 8601 string (microseconds, ``+00:00``) sent and signed for an instant."""
    if moment.tzinfo is None:
        raise ValueError("instants must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_instant(text: str) -> datetime:
    """A timezone-aware UTC datetime from an ISO 8601 string (``Z`` or an offset)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"instant {text!r} has no timezone")
    return moment.astimezone(UTC)


def truncate_to_microseconds(moment: datetime) -> datetime:
    """The instant as it survives a round trip through :func:`format_instant`."""
    return parse_instant(format_instant(moment))


def elapsed_microseconds(start: datetime, end: datetime) -> int:
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def device_seconds(*, start: datetime, end: datetime, devices: int) -> Decimal:
    """Accelerators held × seconds (seconds alone for a CPU-only lease), rounded down to 3 decimals."""
    micros = Decimal(elapsed_microseconds(start, end))
    per_device = Decimal(max(devices, 1))
    return (per_device * micros / _MICROSECONDS_PER_SECOND).quantize(DEVICE_SECONDS_PLACES, rounding=ROUND_DOWN)


def ncu_hours(*, start: datetime, end: datetime, ncu: Decimal) -> Decimal:
    """NCU held × hours, rounded down to 4 decimals: never more than the lease held."""
    micros = Decimal(elapsed_microseconds(start, end))
    return (ncu * micros / _MICROSECONDS_PER_HOUR).quantize(NCU_HOURS_PLACES, rounding=ROUND_DOWN)


def sign(secret: str, message: str) -> str:
    """hex(HMAC-SHA256(secret, message)), both UTF-8."""
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class UsageSample:
    """One usage report, exactly as its fields are sent (strings for instants and decimals)."""

    lease_id: int
    sequence: int
    start: str
    end: str
    device_seconds: str
    ncu_hours: str
    energy_kwh: str | None = None

    @classmethod
    def measure(
        cls, *, lease_id: int, sequence: int, start: datetime, end: datetime, ncu: Decimal, devices: int
    ) -> UsageSample:
        """The sample for ``[start, end)`` of a lease holding ``ncu`` NCU and ``devices`` accelerators."""
        if end <= start:
            raise ValueError("a sample's interval must end after it starts")
        start_text, end_text = format_instant(start), format_instant(end)
        # Compute from the instants as sent, so the server's check sees the same interval.
        start, end = parse_instant(start_text), parse_instant(end_text)
        return cls(
            lease_id=lease_id,
            sequence=sequence,
            start=start_text,
            end=end_text,
            device_seconds=format(device_seconds(start=start, end=end, devices=devices), "f"),
            ncu_hours=format(ncu_hours(start=start, end=end, ncu=ncu), "f"),
        )

    def message(self) -> str:
        """The signed message of the contract: lease|sequence|start|end|device_seconds|ncu_hours|energy_kwh."""
        return (
            f"{self.lease_id}|{self.sequence}|{self.start}|{self.end}|"
            f"{self.device_seconds}|{self.ncu_hours}|{self.energy_kwh or ''}"
        )

    def body(self, secret: str) -> dict[str, Any]:
        """The JSON body of ``POST .../usage``, signed with ``secret``."""
        return {
            "sequence": self.sequence,
            "start": self.start,
            "end": self.end,
            "device_seconds": self.device_seconds,
            "ncu_hours": self.ncu_hours,
            "energy_kwh": self.energy_kwh,
            "signature": sign(secret, self.message()),
        }

    def to_record(self) -> dict[str, Any]:
        """The unsigned fields, as persisted in the agent's outbox."""
        return {
            "lease_id": self.lease_id,
            "sequence": self.sequence,
            "start": self.start,
            "end": self.end,
            "device_seconds": self.device_seconds,
            "ncu_hours": self.ncu_hours,
            "energy_kwh": self.energy_kwh,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> UsageSample:
        return cls(
            lease_id=int(record["lease_id"]),
            sequence=int(record["sequence"]),
            start=str(record["start"]),
            end=str(record["end"]),
            device_seconds=str(record["device_seconds"]),
            ncu_hours=str(record["ncu_hours"]),
            energy_kwh=None if record.get("energy_kwh") is None else str(record["energy_kwh"]),
        )
