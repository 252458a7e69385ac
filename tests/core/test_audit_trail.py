"""The audit trail as operators rely on it: every entry hashed and chained,
nothing in it changed or deleted by the application or (unnoticed) by hand,
and ``manage.py verify_audit`` pointing at the first broken link."""

from __future__ import annotations

import io
import itertools
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import Client

from billing import services as billing
from core.audit import audit_many, audit_record, audit_seal
from core.errors import AppendOnly
from core.models import AuditEntry, AuditPending, AuditSeal
from scheduler import services as scheduler_services
from tests import factories

pytestmark = pytest.mark.django_db

TABLES = ("core_auditentry", "core_auditseal")


def verify(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=io.StringIO())
    except CommandError as error:
        return error.returncode, out.getvalue() + str(error)
    return 0, out.getvalue()


@contextmanager
def protection_off():
    """What someone with the database's superuser rights could do: switch the
    append-only triggers off, change rows, switch them on again."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE waits for no deferred check
        for table in TABLES:
            if connection.vendor == "postgresql":
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
            else:
                cursor.execute(f"DROP TRIGGER {table}_append_only")
        yield cursor
        if connection.vendor == "postgresql":
            for table in TABLES:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


@pytest.fixture
def market_activity(operator):
    """A small market with a top-up, a job placed by a scheduling cycle and an operator's verification."""
    provider, _pools = factories.market(nodes=2)
    buyer = factories.buyer()
    billing.wallet_top_up(organisation=buyer.organisation, amount=Decimal("5000.00"), reference="R1", actor=buyer)
    factories.submit(buyer)
    factories.submit(buyer, name="second job")
    scheduler_services.cycle_run()
    return provider, buyer


def test_every_entry_is_hashed_at_insert_and_sealed_in_order_into_one_chain(market_activity):
    entries = list(AuditEntry.objects.order_by("id"))
    assert len(entries) > 10
    assert all(len(entry.content_hash) == 64 for entry in entries)
    assert AuditPending.objects.count() == len(entries), "all await their seal"
    assert not AuditSeal.objects.exists()

    assert audit_seal() == len(entries)

    seals = list(AuditSeal.objects.order_by("sequence"))
    assert [seal.sequence for seal in seals] == list(range(1, len(entries) + 1))
    assert [seal.entry_id for seal in seals] == [entry.pk for entry in entries]
    assert seals[0].previous_hash == "0" * 64
    assert all(b.previous_hash == a.chain_hash for a, b in itertools.pairwise(seals))
    assert not AuditPending.objects.exists()
    assert audit_seal() == 0, "nothing is sealed twice"

    audit_record(actor=None, action="test.later", entity=market_activity[0])
    assert audit_seal() == 1
    assert AuditSeal.objects.latest("sequence").previous_hash == seals[-1].chain_hash


def test_verify_audit_passes_an_intact_trail_and_prints_its_head(market_activity):
    code, out = verify()
    assert code == 0, out
    head = AuditSeal.objects.latest("sequence")
    assert f"head: {head.sequence}:{head.chain_hash}" in out
    assert "The audit trail is intact" in out
    assert verify("--anchor", f"{head.sequence}:{head.chain_hash}")[0] == 0


def test_an_entry_altered_in_the_database_is_found_by_verify_audit(market_activity):
    audit_seal()
    victim = AuditEntry.objects.filter(action="wallet.top_up").first()
    with protection_off() as cursor:
        cursor.execute("UPDATE core_auditentry SET data = %s WHERE id = %s", ['{"amount": "50.00"}', victim.pk])
    sequence = AuditSeal.objects.get(entry=victim).sequence

    code, out = verify()

    assert code == 1
    assert f"first broken link: seal #{sequence} (audit entry {victim.pk}): " in out
    assert "content does not match" in out


def test_an_entry_rewritten_with_a_fresh_content_hash_still_breaks_its_link(market_activity):
    audit_seal()
    victim = AuditEntry.objects.filter(action="job.submitted").first()
    forged = AuditEntry(**{f.attname: getattr(victim, f.attname) for f in AuditEntry._meta.concrete_fields})
    forged.reason = "submitted by someone else"
    from core.audit import _content_hash

    with protection_off() as cursor:
        cursor.execute(
            "UPDATE core_auditentry SET reason = %s, content_hash = %s WHERE id = %s",
            [forged.reason, _content_hash(forged), victim.pk],
        )
    code, out = verify()
    assert code == 1
    assert f"(audit entry {victim.pk}): its chain hash does not match" in out


def test_a_row_deleted_from_the_middle_of_the_chain_is_found(market_activity):
    audit_seal()
    seals = list(AuditSeal.objects.order_by("sequence"))
    gone = seals[len(seals) // 2]
    with protection_off() as cursor:
        cursor.execute("DELETE FROM core_auditseal WHERE sequence = %s", [gone.sequence])
        cursor.execute("DELETE FROM core_auditentry WHERE id = %s", [gone.entry_id])

    code, out = verify()

    assert code == 1
    assert f"first broken link: seal #{gone.sequence + 1} " in out
    assert f"seal #{gone.sequence} is missing before it" in out


def test_a_cut_tail_is_found_against_an_anchor_kept_elsewhere(market_activity):
    audit_seal()
    head = AuditSeal.objects.latest("sequence")
    with protection_off() as cursor:
        cursor.execute("DELETE FROM core_auditseal WHERE sequence = %s", [head.sequence])
        cursor.execute("DELETE FROM core_auditentry WHERE id = %s", [head.entry_id])
    code, out = verify("--anchor", f"{head.sequence}:{head.chain_hash}")
    assert code == 1
    assert f"anchor #{head.sequence}: the seal is gone" in out


def test_an_altered_entry_not_sealed_yet_is_reported_and_an_entry_cut_out_of_the_queue_too(market_activity):
    provider, _buyer = market_activity
    audit_seal()
    altered = audit_record(actor=provider, action="test.unsealed", entity=provider, reason="original")
    cut = audit_record(actor=provider, action="test.cut", entity=provider)
    with protection_off() as cursor:
        cursor.execute("UPDATE core_auditentry SET reason = 'rewritten' WHERE id = %s", [altered.pk])
        cursor.execute("DELETE FROM core_auditpending WHERE entry_id = %s", [cut.pk])

    code, out = verify("--no-seal")

    assert code == 1
    assert f"audit entry {altered.pk} (not sealed yet): its content does not match" in out
    assert f"audit entry {cut.pk}: not sealed and not awaiting a seal" in out


def test_the_application_cannot_change_or_delete_an_entry_or_a_seal(market_activity):
    audit_seal()
    entry = AuditEntry.objects.first()
    seal = AuditSeal.objects.first()
    attempts = [
        lambda: entry.save(),
        lambda: entry.delete(),
        lambda: AuditEntry.objects.filter(pk=entry.pk).update(reason="x"),
        lambda: AuditEntry.objects.all().delete(),
        lambda: AuditEntry.objects.bulk_update([entry], ["reason"]),
        lambda: seal.save(),
        lambda: seal.delete(),
        lambda: AuditSeal.objects.update(chain_hash="0" * 64),
        lambda: AuditSeal.objects.filter(sequence=1).delete(),
    ]
    for attempt in attempts:
        with pytest.raises(AppendOnly, match="append-only"), transaction.atomic():
            attempt()
    assert verify()[0] == 0


def test_the_database_refuses_to_change_an_entry_or_a_seal():
    factories.operator()
    audit_seal()
    statements = ["UPDATE core_auditentry SET reason = 'x'", "UPDATE core_auditseal SET chain_hash = 'x'"]
    if connection.vendor == "postgresql":
        statements += ["DELETE FROM core_auditentry", "DELETE FROM core_auditseal"]
    for statement in statements:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert verify()[0] == 0


def test_audit_many_writes_a_cycles_entries_hashed_and_pending(market_activity):
    provider, _buyer = market_activity
    before = AuditEntry.objects.count()
    audit_many([{"action": "test.bulk", "entity": provider, "data": {"i": i, "share": i / 4}} for i in range(2500)])
    rows = AuditEntry.objects.filter(action="test.bulk")
    assert rows.count() == 2500 == AuditEntry.objects.count() - before
    assert AuditPending.objects.filter(entry__action="test.bulk").count() == 2500
    assert verify()[0] == 0


def test_entries_written_together_get_ids_in_their_order_and_read_back_as_written(market_activity):
    provider, buyer = market_activity
    entries = [
        {"action": "test.first", "entity": provider, "to_state": "a", "data": {"note": "50% off", "n": [1, 2.5]}},
        {"action": "test.second", "entity": provider, "from_state": "a", "to_state": "b", "reason": "it's ok"},
        {"action": "test.third", "entity": buyer, "data": {"nested": {"x": None, "y": "ü"}}},
    ]
    audit_many(entries, actor=buyer)
    rows = list(AuditEntry.objects.filter(action__startswith="test.").order_by("id"))
    assert [row.action for row in rows] == ["test.first", "test.second", "test.third"]
    assert rows[0].data == {"note": "50% off", "n": [1, 2.5]} and rows[1].reason == "it's ok"
    assert {row.actor_id for row in rows} == {buyer.pk}
    assert set(AuditPending.objects.values_list("entry_id", flat=True)) >= {row.pk for row in rows}

    single = audit_record(actor=None, action="test.single", entity=provider, data={"k": 1})
    assert single.pk == AuditEntry.objects.get(action="test.single").pk > rows[-1].pk
    assert AuditPending.objects.filter(entry_id=single.pk).exists()
    with pytest.raises(AppendOnly):
        single.save()
    assert verify()[0] == 0


def test_a_batch_larger_than_one_statement_keeps_every_entry_in_order(market_activity):
    from core.audit import FEW, INSERT_BATCH

    provider, _buyer = market_activity
    count = INSERT_BATCH + FEW - 1  # a statement of column arrays, then one of rows of values
    audit_many(
        [{"action": "test.order", "entity": provider, "reason": f"#{i}", "data": {"i": i}} for i in range(count)]
    )
    rows = list(AuditEntry.objects.filter(action="test.order").order_by("id").values_list("reason", "data"))
    assert rows == [(f"#{i}", {"i": i}) for i in range(count)]
    assert AuditPending.objects.filter(entry__action="test.order").count() == count
    assert verify()[0] == 0


@pytest.mark.postgres  # SQLite does not hold text to its column's length
def test_a_change_whose_entry_cannot_be_written_does_not_commit(market_activity):
    provider, _buyer = market_activity
    before = AuditEntry.objects.count()
    with transaction.atomic():
        audit_record(actor=None, action="test.kept-only-with-the-next", entity=provider)
        with pytest.raises(DatabaseError):
            audit_record(actor=None, action="x" * 65, entity=provider)  # longer than the column
    assert AuditEntry.objects.count() == before, "the whole transaction rolled back, the first entry with it"
    assert verify()[0] == 0


def test_sign_ins_through_the_api_and_the_console_are_audited(operator, buyer, api):
    operator.set_password("pw-operator-1")
    operator.save()
    buyer.set_password("pw-buyer-1")
    buyer.save()

    assert api.post("/api/v1/auth/token", {"username": buyer.username, "password": "pw-buyer-1"}).status_code == 200
    assert api.post("/api/v1/auth/token", {"username": buyer.username, "password": "wrong"}).status_code == 400
    console = Client()
    response = console.post(
        "/accounts/login/?next=/admin/", {"username": operator.username, "password": "pw-operator-1"}
    )
    assert response.status_code == 302

    signed_in = list(AuditEntry.objects.filter(action="user.signed_in").order_by("id"))
    assert [(e.actor_id, e.data["role"], e.data["via"]) for e in signed_in] == [
        (buyer.pk, "buyer", "/api/v1/auth/token"),
        (operator.pk, "operator", "/accounts/login/"),
    ]
    assert signed_in[1].entity_type == "marketplace.user" and signed_in[1].entity_id == str(operator.pk)
    assert verify()[0] == 0


def test_the_beat_seals_the_trail_every_few_seconds(settings, market_activity):
    from core.tasks import seal_audit_trail

    entry = settings.CELERY_BEAT_SCHEDULE["seal-audit-trail"]
    assert entry["task"] == seal_audit_trail.name and entry["schedule"] <= 10
    pending = AuditPending.objects.count()
    assert pending > 0
    assert seal_audit_trail.apply().get() == pending
    assert not AuditPending.objects.exists()
    assert AuditSeal.objects.count() == pending


def test_operators_read_the_chain_in_the_console_and_nobody_changes_it(market_activity, operator):
    audit_seal()
    seal = AuditSeal.objects.first()
    client = Client()
    client.force_login(operator)
    page = client.get("/admin/core/auditseal/")
    assert page.status_code == 200 and seal.chain_hash in page.content.decode()
    assert client.post(f"/admin/core/auditseal/{seal.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"/admin/core/auditseal/{seal.pk}/change/", {"chain_hash": "0" * 64}).status_code == 403
    assert verify()[0] == 0
