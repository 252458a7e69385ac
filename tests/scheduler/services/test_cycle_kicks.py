"""A burst of submissions asks for one scheduling cycle, not one each: a
submission asks for a cycle only when none is queued and not yet started,
and a cycle that starts lets the next submission ask again, due no sooner
than CX_CYCLE_MIN_GAP_SECONDS after that cycle's start."""

import time

import pytest

from scheduler import tasks
from scheduler.models import Job, JobStatus
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def enqueued(monkeypatch) -> list[tuple]:
    """The cycles asked for, each as (args, not_before, kick)."""
    calls: list[tuple] = []
    monkeypatch.setattr(
        tasks.run_scheduling_cycle,
        "delay",
        lambda *args, **kwargs: calls.append((args, kwargs.get("not_before"), kwargs.get("kick"))),
    )
    return calls


def run_queued(enqueued: list[tuple]) -> None:
    """The last cycle asked for runs (at once: its wait is tested below)."""
    tasks.run_scheduling_cycle(kick=enqueued[-1][2])


def test_submissions_while_a_cycle_is_queued_ask_for_no_other(enqueued):
    factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    run_queued(enqueued)  # the cycle the offers asked for
    for _ in range(5):
        factories.submit(buyer)
    assert len(enqueued) == 2


def test_a_cycle_that_starts_lets_the_next_submission_ask_again_and_places_the_earlier_ones(enqueued):
    factories.market(pools=1, nodes=4)
    buyer = factories.buyer()
    run_queued(enqueued)  # the cycle the offers asked for
    earlier = [factories.submit(buyer) for _ in range(3)]
    assert len(enqueued) == 2
    run_queued(enqueued)  # the queued cycle runs
    assert all(Job.objects.get(pk=job.pk).status == JobStatus.SCHEDULED for job in earlier)
    later = factories.submit(buyer)
    assert len(enqueued) == 3
    factories.submit(buyer)
    assert len(enqueued) == 3
    run_queued(enqueued)
    assert Job.objects.get(pk=later.pk).status == JobStatus.SCHEDULED


def test_a_cycle_no_submission_asked_for_leaves_the_queued_ones_mark(enqueued):
    """The beat or the repair sweep runs a cycle while the one a submission asked for is still queued:
    submissions meanwhile still ask for no other (two queued cycles would run a gap apart, out of step,
    from then on twice as many)."""
    factories.market(pools=1, nodes=4)
    buyer = factories.buyer()
    run_queued(enqueued)
    factories.submit(buyer)
    assert len(enqueued) == 2
    tasks.run_scheduling_cycle()  # not the queued one
    factories.submit(buyer)
    assert len(enqueued) == 2, "the queued cycle will take this job too"
    run_queued(enqueued)
    factories.submit(buyer)
    assert len(enqueued) == 3


def test_a_cycle_that_could_not_be_enqueued_does_not_hold_the_next_ones_back(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.run_scheduling_cycle, "delay", broken)
    factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    before = len(calls)
    factories.submit(buyer)
    factories.submit(buyer)
    assert len(calls) == before + 2


def test_a_cycle_asked_for_right_after_one_started_waits_a_gap_after_that_start(enqueued, settings):
    settings.CX_CYCLE_MIN_GAP_SECONDS = 2
    factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    before = time.time()
    run_queued(enqueued)
    after = time.time()
    factories.submit(buyer)
    _args, not_before, _kick = enqueued[-1]
    assert before + 2 - 0.01 <= not_before <= after + 2 + 0.01


def test_a_cycle_asked_for_a_gap_after_the_last_one_is_due_at_once(enqueued, settings, monkeypatch):
    settings.CX_CYCLE_MIN_GAP_SECONDS = 1
    factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    run_queued(enqueued)
    later = time.time() + 1.5
    monkeypatch.setattr(time, "time", lambda: later)
    factories.submit(buyer)
    assert enqueued[-1][1] is None


def test_without_a_gap_every_asked_cycle_is_due_at_once(enqueued, settings):
    settings.CX_CYCLE_MIN_GAP_SECONDS = 0
    factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    run_queued(enqueued)
    factories.submit(buyer)
    assert enqueued[-1][1] is None


def test_the_cycle_waits_out_the_gap_before_it_takes_the_queue(settings):
    settings.CX_CYCLE_MIN_GAP_SECONDS = 1
    factories.market(pools=1, nodes=2)
    job = factories.submit(factories.buyer())
    started = time.monotonic()
    tasks.run_scheduling_cycle(not_before=time.time() + 0.3)
    assert time.monotonic() - started >= 0.29
    assert Job.objects.get(pk=job.pk).status == JobStatus.SCHEDULED
    started = time.monotonic()
    tasks.run_scheduling_cycle(not_before=time.time() + 3600)  # never longer than the gap
    assert time.monotonic() - started < 1.5
