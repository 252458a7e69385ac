"""The agent against a fake platform: the stories a provider and the platform would notice."""

from __future__ import annotations

import itertools
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.daemon import START_FAILED_EXIT_CODE, TIME_LIMIT_EXIT_CODE, Agent
from agent.metering import sign
from tests.agent.conftest import AgentThread, python, wait_for
from tests.agent.fake_platform import SECRET, FakePlatform

HALF_WAY = python(
    "import time\nprint('loading data')\nprint('CX-PROGRESS 50 half way')\ntime.sleep(0.7)\nprint('all done')\n"
)
SLEEPER = python("import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
STUBBORN = python(
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def assert_contiguous_and_within_capacity(samples: list[dict[str, Any]], ncu: Decimal) -> None:
    """Sequences strictly increase, each sample starts where the previous ended, none over-reports."""
    sequences = [s["sequence"] for s in samples]
    assert sequences == sorted(set(sequences))
    for before, after in itertools.pairwise(samples):
        assert after["start"] == before["end"]
    for sample in samples:
        start, end = datetime.fromisoformat(sample["start"]), datetime.fromisoformat(sample["end"])
        micros = Decimal((end - start) // timedelta(microseconds=1))
        assert Decimal(sample["ncu_hours"]) <= ncu * micros / Decimal(3_600_000_000)


def test_a_short_workload_goes_ack_progress_usage_complete(platform: FakePlatform, make_agent) -> None:
    lease = platform.add_lease(11, HALF_WAY, ncu="2.5", devices=2)
    agent = make_agent()

    AgentThread(agent, once=True).join()

    kinds = [c.path.rsplit("/", 1)[-1] for c in platform.calls if "/leases/11/" in c.path]
    assert kinds[0] == "ack"
    assert kinds.index("progress") < kinds.index("complete")
    assert kinds[-1] == "complete"
    assert [c.body for c in platform.calls_to("progress", 11)] == [{"percent": 50, "message": "half way"}]
    samples = platform.recorded(11)
    assert len(samples) >= 2  # periodic samples and the final one
    assert_contiguous_and_within_capacity(samples, lease.ncu)
    for sample in samples:
        message = "|".join(
            [
                "11",
                str(sample["sequence"]),
                sample["start"],
                sample["end"],
                sample["device_seconds"],
                sample["ncu_hours"],
                "",
            ]
        )
        assert sample["signature"] == sign(SECRET, message)
    ran = sum(Decimal(s["device_seconds"]) for s in samples) / 2
    assert Decimal("0.6") < ran < Decimal("3")
    [completion] = platform.completions(11)
    assert completion.body["exit_code"] == 0
    assert "all done" in completion.body["message"]
    assert lease.status == "completed"
    assert all(c.status < 400 for c in platform.calls), [c for c in platform.calls if c.status >= 400]
    log = (agent.config.state_dir / "leases" / "11" / "output.log").read_text()
    assert "loading data" in log and "CX-PROGRESS 50 half way" in log


def test_the_workload_sees_its_lease_but_not_the_agent_credentials(
    platform: FakePlatform, make_agent, monkeypatch
) -> None:
    monkeypatch.setenv("CX_AGENT_SECRET", SECRET)
    monkeypatch.setenv("CX_AGENT_TOKEN", "token")
    platform.add_lease(
        12,
        python(
            "import json, os\n"
            "seen = {k: v for k, v in os.environ.items() if k.startswith('CX_')}\n"
            "print(json.dumps({'env': seen, 'cwd': os.getcwd()}))"
        ),
        allocations=[{"node": 3, "devices": [2, 5], "milli": 1000, "cpu_milli": 4000, "memory_mib": 1024}],
    )
    agent = make_agent()

    AgentThread(agent, once=True).join()

    [completion] = platform.completions(12)
    printed = json.loads(completion.body["message"].splitlines()[-1])
    seen = printed["env"]
    assert "CX_AGENT_SECRET" not in seen and "CX_AGENT_TOKEN" not in seen
    assert seen["CX_LEASE_ID"] == "12"
    assert seen["CX_JOB_ID"] == "1012"
    assert seen["CX_DEVICES"] == "2,5"
    assert datetime.fromisoformat(seen["CX_LEASE_END"]) == platform.leases[12].end
    assert json.loads(seen["CX_ALLOCATIONS"])[0]["node"] == 3
    assert Path(printed["cwd"]) == (agent.config.state_dir / "leases" / "12" / "work").resolve()


def test_the_time_limit_stops_a_sleeping_workload_and_fails_the_lease(platform: FakePlatform, make_agent) -> None:
    lease = platform.add_lease(21, SLEEPER, seconds=2.0)
    agent = make_agent()
    runner = AgentThread(agent, once=True)
    pid = wait_for(lambda: agent._running.get(21) and agent._running[21].workload.pid, what="the workload")

    runner.join()

    assert not alive(pid)
    [completion] = platform.completions(21)
    assert completion.body["exit_code"] == TIME_LIMIT_EXIT_CODE != 0
    assert "lease time ran out" in completion.body["message"]
    assert completion.at >= lease.end
    assert lease.status == "failed"
    samples = platform.recorded(21)
    assert_contiguous_and_within_capacity(samples, lease.ncu)
    assert datetime.fromisoformat(samples[-1]["end"]) == lease.end


def test_a_workload_ignoring_sigterm_is_killed_after_the_grace_period(platform: FakePlatform, make_agent) -> None:
    platform.add_lease(22, STUBBORN, seconds=1.5)
    agent = make_agent(grace_seconds=0.5)
    runner = AgentThread(agent, once=True)
    running = wait_for(
        lambda: "ignoring" in _log(agent, 22) and agent._running.get(22), what="the workload to ignore SIGTERM"
    )
    pid = running.workload.pid

    runner.join()

    assert not alive(pid)
    [completion] = platform.completions(22)
    assert completion.body["exit_code"] == TIME_LIMIT_EXIT_CODE


def test_stop_from_the_heartbeat_terminates_without_completing(platform: FakePlatform, make_agent) -> None:
    lease = platform.add_lease(31, SLEEPER)
    agent = make_agent()
    runner = AgentThread(agent)
    wait_for(lambda: platform.calls_to("heartbeat", 31), what="a heartbeat")
    pid = agent._running[31].workload.pid

    platform.set_status(31, "cancelled")
    cancelled_at = datetime.now(UTC)
    wait_for(lambda: not alive(pid), what="the workload to stop")
    wait_for(lambda: 31 not in agent.running_leases, what="the agent to let go of the lease")
    wait_for(lambda: not getattr(agent.state.get(31), "outbox", None), what="the last usage to be delivered")
    runner.stop()

    assert platform.calls_to("complete", 31) == []
    assert lease.status == "cancelled"
    samples = platform.recorded(31)
    assert_contiguous_and_within_capacity(samples, lease.ncu)
    assert datetime.fromisoformat(samples[-1]["end"]) > cancelled_at  # usage is reported up to the stop


def test_an_outage_loses_no_sample_and_duplicates_none(platform: FakePlatform, make_agent) -> None:
    lease = platform.add_lease(41, python("import time\nfor i in range(8):\n    time.sleep(0.2)\n"))
    agent = make_agent()
    runner = AgentThread(agent, once=True)
    wait_for(lambda: platform.recorded(41), what="a first sample")

    platform.outage(0.9)
    runner.join()

    refused = [c for c in platform.calls if c.status == 503]
    assert refused, "the outage was not noticed"
    samples = platform.recorded(41)
    assert_contiguous_and_within_capacity(samples, lease.ncu)
    assert [s["sequence"] for s in samples] == list(range(1, len(samples) + 1))
    first, last = datetime.fromisoformat(samples[0]["start"]), datetime.fromisoformat(samples[-1]["end"])
    assert last - first > timedelta(seconds=1.5)  # the whole run is covered, outage included
    [completion] = platform.completions(41)
    assert completion.body["exit_code"] == 0
    posted = [c.body["sequence"] for c in platform.calls_to("usage", 41) if c.status in (200, 201)]
    assert len(posted) == len(set(posted))  # nothing sent again once the platform had it


def test_a_lost_answer_is_resent_with_the_same_number_and_counted_once(platform: FakePlatform, make_agent) -> None:
    lease = platform.add_lease(42, python("import time\ntime.sleep(0.7)\n"))
    platform.lose_response_for = {(42, 1)}
    agent = make_agent()

    AgentThread(agent, once=True).join()

    first_sample_posts = [c.status for c in platform.calls_to("usage", 42) if c.body["sequence"] == 1]
    assert first_sample_posts[:2] == [503, 200]  # recorded, answer lost; the resend is recognised
    samples = platform.recorded(42)
    assert [s["sequence"] for s in samples] == list(range(1, len(samples) + 1))
    assert_contiguous_and_within_capacity(samples, lease.ncu)


def test_a_sample_the_platform_refuses_is_dropped_not_retried_forever(platform: FakePlatform, make_agent) -> None:
    platform.add_lease(43, python("import time\ntime.sleep(0.7)\n"))
    platform.refuse_sequences = {(43, 2)}
    agent = make_agent()

    AgentThread(agent, once=True).join()

    assert [c.status for c in platform.calls_to("usage", 43) if c.body["sequence"] == 2] == [400]
    assert 2 not in [s["sequence"] for s in platform.recorded(43)]
    assert max(s["sequence"] for s in platform.recorded(43)) > 2
    assert platform.completions(43)


def test_a_restarted_agent_numbers_samples_above_the_persisted_ones(platform: FakePlatform, make_agent) -> None:
    lease = platform.add_lease(51, SLEEPER)
    first = make_agent()
    runner = AgentThread(first)
    wait_for(lambda: len(platform.recorded(51)) >= 2, what="two samples")
    old_pid = first._running[51].workload.pid
    platform.outage(30)  # the last samples of this run stay queued
    wait_for(lambda: len(first.state.get(51).outbox) >= 2, what="samples queued during the outage")

    runner.stop()

    assert not alive(old_pid)
    assert platform.calls_to("complete", 51) == []  # shutdown does not complete: the lease may be resumed
    queued = [entry["sample"]["sequence"] for entry in json.loads(_state(first))["leases"][0]["outbox"]]
    persisted_next = json.loads(_state(first))["leases"][0]["next_sequence"]
    assert queued and persisted_next == max(queued) + 1
    delivered_before = {s["sequence"] for s in platform.recorded(51)}
    assert max(delivered_before) < min(queued)

    platform.outage(0)
    second = make_agent()
    runner = AgentThread(second)
    wait_for(lambda: 51 in second.running_leases, what="the lease to start again")
    wait_for(lambda: any(s["sequence"] > persisted_next for s in platform.recorded(51)), what="new samples")
    runner.stop()

    recorded = [s["sequence"] for s in platform.recorded(51)]
    assert set(queued) <= set(recorded)  # what the first run queued is delivered by the second
    new = [s for s in recorded if s >= persisted_next]
    assert new and min(new) == persisted_next  # continuing, not reusing
    assert len(platform.calls_to("ack", 51)) == 2
    assert _log(second, 51).count("starting") == 2  # started again from scratch
    assert lease.status == "running"


def test_numbers_continue_above_the_platforms_last_sequence_when_the_state_is_lost(
    platform: FakePlatform, make_agent
) -> None:
    lease = platform.add_lease(52, python("import time\ntime.sleep(0.5)\n"), status="running")
    lease.last_sequence_floor = 7
    agent = make_agent()

    AgentThread(agent, once=True).join()

    assert min(s["sequence"] for s in platform.recorded(52)) == 8


def test_a_workload_left_by_a_crashed_agent_is_killed_before_the_lease_restarts(
    platform: FakePlatform, make_agent
) -> None:
    platform.add_lease(53, SLEEPER)
    crashed = make_agent()
    wait_for(lambda: crashed.tick() or 53 in crashed.running_leases, what="the workload")
    orphan = crashed._running[53].workload.pid
    crashed.state.close()  # the agent dies here: no shutdown, its workload keeps running
    crashed._closed = True

    second = make_agent()

    assert not alive(orphan)
    runner = AgentThread(second)
    wait_for(lambda: 53 in second.running_leases, what="the restart")
    assert second._running[53].workload.pid != orphan
    runner.stop()


def test_a_lease_starting_later_waits_for_its_start(platform: FakePlatform, make_agent) -> None:
    start = datetime.now(UTC) + timedelta(seconds=0.6)
    platform.add_lease(61, python("print('on time')"), start=start, seconds=30)
    agent = make_agent()

    runner = AgentThread(agent)
    wait_for(lambda: platform.completions(61), what="the completion")
    runner.stop()

    [ack] = platform.calls_to("ack", 61)
    assert ack.at >= start
    samples = platform.recorded(61)
    assert datetime.fromisoformat(samples[0]["start"]) >= start


def test_a_command_that_cannot_start_fails_the_lease(platform: FakePlatform, make_agent) -> None:
    platform.add_lease(71, ["/nonexistent/train.sh", "--epochs", "3"])
    agent = make_agent()

    AgentThread(agent, once=True).join()

    [completion] = platform.completions(71)
    assert completion.body["exit_code"] == START_FAILED_EXIT_CODE
    assert "could not be started" in completion.body["message"]
    assert platform.recorded(71) == []


def test_a_failing_workload_reports_its_exit_code_and_last_output(platform: FakePlatform, make_agent) -> None:
    platform.add_lease(
        72, python("import sys\nprint('epoch 1')\nprint('CUDA out of memory', file=sys.stderr)\nsys.exit(3)")
    )
    agent = make_agent()

    AgentThread(agent, once=True).join()

    [completion] = platform.completions(72)
    assert completion.body["exit_code"] == 3
    assert completion.body["message"].endswith("CUDA out of memory")
    assert platform.leases[72].status == "failed"


def test_only_leases_headed_on_the_agents_node_are_run(platform: FakePlatform, make_agent) -> None:
    on_other = [{"node": 4, "devices": [0], "milli": 1000, "cpu_milli": 0, "memory_mib": 0}]
    platform.add_lease(81, python("print('mine')"))
    platform.add_lease(82, python("print('not mine')"), allocations=on_other)
    agent = make_agent(nodes=frozenset({0}))

    AgentThread(agent, once=True).join()

    assert platform.completions(81)
    assert platform.calls_to("ack", 82) == []


def test_only_leases_on_the_agents_pools_are_run(platform: FakePlatform, make_agent) -> None:
    platform.add_lease(83, python("print('mine')"), pool="CX-JJJ-00001-001-0001-00")
    platform.add_lease(84, python("print('not mine')"), pool="CX-CDY-00002-001-0001-00")
    agent = make_agent(pools=frozenset({"CX-JJJ-00001-001-0001-00"}))

    AgentThread(agent, once=True).join()

    assert platform.completions(83)
    assert platform.calls_to("ack", 84) == []


def _log(agent: Agent, lease_id: int) -> str:
    path = agent.config.state_dir / "leases" / str(lease_id) / "output.log"
    return path.read_text() if path.exists() else ""


def _state(agent: Agent) -> str:
    return (agent.config.state_dir / "state.json").read_text()


def test_a_lease_whose_window_already_ended_is_closed_without_running(platform: FakePlatform, make_agent) -> None:
    start = datetime.now(UTC) - timedelta(seconds=10)
    platform.add_lease(91, python("open('ran', 'w').write('yes')"), start=start, seconds=5)
    agent = make_agent()

    AgentThread(agent, once=True).join()

    [completion] = platform.completions(91)
    assert completion.body["exit_code"] == TIME_LIMIT_EXIT_CODE
    assert "lease time ran out" in completion.body["message"]
    assert not (agent.config.state_dir / "leases" / "91" / "work" / "ran").exists()
    assert platform.recorded(91) == []
