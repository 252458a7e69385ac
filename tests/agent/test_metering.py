"""Usage maths of the agent: never over-report, sign exactly what is sent."""

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.metering import (
    UsageSample,
    device_seconds,
    format_instant,
    ncu_hours,
    parse_instant,
    sign,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def test_instants_are_sent_as_utc_with_microseconds_and_read_back_exactly() -> None:
    moment = datetime(2026, 3, 1, 16, 0, 0, 123456, tzinfo=UTC).astimezone(datetime.now().astimezone().tzinfo)
    text = format_instant(moment)
    assert text == "2026-03-01T16:00:00.123456+00:00"
    assert parse_instant(text) == moment
    assert parse_instant("2026-03-01T16:00:00Z") == datetime(2026, 3, 1, 16, tzinfo=UTC)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        format_instant(datetime(2026, 3, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone"):
        parse_instant("2026-03-01T16:00:00")


def test_ten_seconds_on_two_devices_holding_two_and_a_half_ncu() -> None:
    sample = UsageSample.measure(
        lease_id=7, sequence=3, start=T0, end=T0 + timedelta(seconds=10), ncu=Decimal("2.5"), devices=2
    )
    assert sample.device_seconds == "20.000"
    # 2.5 × 10 / 3600 = 0.006944…, rounded down.
    assert sample.ncu_hours == "0.0069"
    assert sample.start == "2026-03-01T08:00:00.000000+00:00"
    assert sample.end == "2026-03-01T08:00:10.000000+00:00"


def test_a_cpu_only_lease_reports_plain_seconds() -> None:
    end = T0 + timedelta(seconds=90, microseconds=500_000)
    assert device_seconds(start=T0, end=end, devices=0) == Decimal("90.500")


def test_an_empty_interval_is_not_a_sample() -> None:
    with pytest.raises(ValueError, match="end after it starts"):
        UsageSample.measure(lease_id=1, sequence=1, start=T0, end=T0, ncu=Decimal(1), devices=1)


@settings(max_examples=200, deadline=None)
@given(
    ncu=st.decimals(min_value=0, max_value=100_000, places=4, allow_nan=False, allow_infinity=False),
    micros=st.integers(min_value=1, max_value=7 * 24 * 3600 * 1_000_000),
    devices=st.integers(min_value=0, max_value=64),
)
def test_a_sample_never_claims_more_than_capacity_times_elapsed(ncu: Decimal, micros: int, devices: int) -> None:
    end = T0 + timedelta(microseconds=micros)
    held_hours = ncu * Decimal(micros) / Decimal(3_600_000_000)
    reported = ncu_hours(start=T0, end=end, ncu=ncu)
    assert reported <= held_hours
    assert held_hours - reported < Decimal("0.0001")
    held_device_seconds = max(devices, 1) * Decimal(micros) / Decimal(1_000_000)
    assert Decimal(0) <= held_device_seconds - device_seconds(start=T0, end=end, devices=devices) < Decimal("0.001")


def test_the_signature_is_hmac_sha256_of_the_contract_message() -> None:
    sample = UsageSample.measure(
        lease_id=42, sequence=5, start=T0, end=T0 + timedelta(seconds=1), ncu=Decimal("3600"), devices=1
    )
    body = sample.body("s3cret")
    message = f"42|5|{body['start']}|{body['end']}|1.000|1.0000|"
    assert sample.message() == message
    assert body["signature"] == hmac.new(b"s3cret", message.encode(), hashlib.sha256).hexdigest()
    assert body["signature"] == sign("s3cret", message)
    assert body["energy_kwh"] is None
    assert {key: type(value) for key, value in body.items() if key not in ("sequence", "energy_kwh")} == {
        "start": str,
        "end": str,
        "device_seconds": str,
        "ncu_hours": str,
        "signature": str,
    }


def test_a_sample_survives_the_outbox_unchanged() -> None:
    sample = UsageSample.measure(
        lease_id=9, sequence=2, start=T0, end=T0 + timedelta(seconds=3), ncu=Decimal("0.5"), devices=0
    )
    assert UsageSample.from_record(sample.to_record()) == sample
    assert UsageSample.from_record(sample.to_record()).body("k") == sample.body("k")
