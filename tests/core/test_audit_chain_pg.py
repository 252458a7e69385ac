"""The chain does not serialise writers: a long transaction full of audit
entries (a scheduling cycle) holds up neither other writers nor the sealer,
and its entries join the chain once it commits. Real concurrent transactions
on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from core.audit import audit_many, audit_record, audit_seal, audit_verify
from core.models import AuditEntry, AuditSeal
from tests import factories
from tests.concurrency import run_together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_long_transaction_of_audit_entries_blocks_no_writer_and_no_sealer():
    operator = factories.operator()
    written, release, finished = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def long_cycle() -> None:
        try:
            with transaction.atomic():
                audit_many([{"action": "test.cycle", "entity": operator, "data": {"i": i}} for i in range(3000)])
                written.set()
                assert release.wait(timeout=60), "the test never let the cycle commit"
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()
            finished.set()

    worker = threading.Thread(target=long_cycle)
    worker.start()
    try:
        assert written.wait(timeout=60)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")  # any wait on the cycle's locks would fail here
        sealed_before = audit_seal(wait=True)
        other = audit_record(actor=operator, action="test.meanwhile", entity=operator)
        assert audit_seal(wait=True) == 1, "the committed entry is sealed while the cycle's are invisible"
        assert AuditSeal.objects.latest("sequence").entry_id == other.pk
        assert not AuditEntry.objects.filter(action="test.cycle").exists()
    finally:
        release.set()
        worker.join(timeout=60)
    assert finished.is_set() and not errors, errors

    cycle_ids = list(AuditEntry.objects.filter(action="test.cycle").order_by("id").values_list("id", flat=True))
    assert len(cycle_ids) == 3000 and cycle_ids[0] < other.pk, "the cycle's ids are older than the other entry's"
    assert audit_seal(wait=True) == 3000
    order = list(AuditSeal.objects.order_by("sequence").values_list("entry_id", flat=True))
    assert order[sealed_before:] == [other.pk, *cycle_ids], "sealed in the order they committed, then by id"
    result = audit_verify()
    assert result.sound and result.seals == len(order) and result.unsealed == 0


def test_two_sealers_at_once_make_one_chain():
    operator = factories.operator()
    for batch in range(4):
        audit_many([{"action": "test.batch", "entity": operator, "data": {"b": batch, "i": i}} for i in range(500)])
    counts = run_together(lambda i: audit_seal(wait=True, batch=300), 4)
    assert sum(counts) == AuditEntry.objects.count()
    sequences = list(AuditSeal.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, len(sequences) + 1))
    assert audit_verify().sound
