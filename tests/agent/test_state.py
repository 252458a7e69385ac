"""The agent's persisted state: durable before sending, one agent per directory, damage survived."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent.metering import UsageSample
from agent.state import Phase, StateLocked, StateStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def sample_at(lease_id: int, seconds: int):
    def build(sequence: int) -> UsageSample:
        return UsageSample.measure(
            lease_id=lease_id,
            sequence=sequence,
            start=T0 + timedelta(seconds=seconds),
            end=T0 + timedelta(seconds=seconds + 10),
            ncu=Decimal("1.5"),
            devices=1,
        )

    return build


def test_a_queued_sample_and_its_number_are_on_disk_when_append_returns(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    first = store.append_usage(7, sample_at(7, 0))
    second = store.append_usage(7, sample_at(7, 10))

    on_disk = json.loads((tmp_path / "state.json").read_text())
    [lease] = on_disk["leases"]
    assert (first.sequence, second.sequence) == (1, 2)
    assert lease["next_sequence"] == 3
    assert [entry["sample"]["sequence"] for entry in lease["outbox"]] == [1, 2]
    assert list(tmp_path.glob(".state.json.*")) == []  # no temporary file left behind
    store.close()


def test_a_new_store_on_the_same_directory_continues_where_the_last_stopped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.append_usage(7, sample_at(7, 0))
    store.append_usage(7, sample_at(7, 10))
    store.pop_outbox(7)
    store.append_completion(7, exit_code=0, message="done")
    store.close()

    again = StateStore(tmp_path)
    record = again.get(7)
    assert record is not None
    assert record.next_sequence == 3
    assert record.phase == Phase.FINISHED
    assert [entry["kind"] for entry in record.outbox] == ["usage", "complete"]
    assert again.append_usage(7, sample_at(7, 20)).sequence == 3
    again.close()


def test_numbers_never_go_below_the_platforms(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.raise_sequence_floor(9, 41)
    assert store.append_usage(9, sample_at(9, 0)).sequence == 42
    store.raise_sequence_floor(9, 10)  # an older view of the platform does not lower it
    assert store.append_usage(9, sample_at(9, 10)).sequence == 43
    store.close()


def test_a_sample_must_carry_the_number_it_was_given(tmp_path: Path) -> None:
    store = StateStore(tmp_path)

    def wrong(sequence: int) -> UsageSample:
        return sample_at(3, 0)(sequence + 1)

    with pytest.raises(ValueError, match="sequence number"):
        store.append_usage(3, wrong)
    assert store.lease(3).next_sequence == 1
    store.close()


def test_two_agents_cannot_share_a_state_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(StateLocked):
        StateStore(tmp_path)
    store.close()
    StateStore(tmp_path).close()  # free again once the first is closed


def test_a_damaged_state_file_is_kept_aside_and_the_agent_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"version": 1, "leases": [{"lease_')
    store = StateStore(tmp_path)
    assert list(store.records()) == []
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    store.close()


def test_forgetting_a_lease_removes_it_from_disk(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.update(4, phase=Phase.STOPPED)
    store.forget(4)
    store.close()
    assert json.loads((tmp_path / "state.json").read_text())["leases"] == []
