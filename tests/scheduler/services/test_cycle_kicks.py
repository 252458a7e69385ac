"""A burst of submissions asks for one scheduling cycle, not one each: a
submission asks for a cycle only when none is queued and not yet started,
and a cycle that starts lets the next submission ask again."""

import pytest

from scheduler import tasks
from scheduler.models import Job, JobStatus
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def enqueued(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setattr(tasks.run_scheduling_cycle, "delay", lambda *args, **kwargs: calls.append(args))
    return calls


def test_submissions_while_a_cycle_is_queued_ask_for_no_other(enqueued):
    factories.market(pools=1, nodes=2)
    buyer = factories.buyer()
    tasks.run_scheduling_cycle()  # the cycle the offers asked for
    for _ in range(5):
        factories.submit(buyer)
    assert len(enqueued) == 2


def test_a_cycle_that_starts_lets_the_next_submission_ask_again_and_places_the_earlier_ones(enqueued):
    factories.market(pools=1, nodes=4)
    buyer = factories.buyer()
    tasks.run_scheduling_cycle()  # the cycle the offers asked for
    earlier = [factories.submit(buyer) for _ in range(3)]
    assert len(enqueued) == 2
    tasks.run_scheduling_cycle()  # the queued cycle runs
    assert all(Job.objects.get(pk=job.pk).status == JobStatus.SCHEDULED for job in earlier)
    later = factories.submit(buyer)
    assert len(enqueued) == 3
    factories.submit(buyer)
    assert len(enqueued) == 3
    tasks.run_scheduling_cycle()
    assert Job.objects.get(pk=later.pk).status == JobStatus.SCHEDULED


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
