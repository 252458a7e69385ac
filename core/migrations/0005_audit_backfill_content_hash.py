"""Give the audit entries written before the hash chain their content hash
and put them in the list awaiting a seal. Batched and rerunnable: only rows
without a hash, and only entries neither sealed nor pending, are touched."""

from django.db import migrations

from core.domain import chain

BATCH = 5000
COLUMNS = ("at", "actor_id", "actor_label", "action", "entity_type", "entity_id", "from_state", "to_state", "reason", "data")


def backfill(apps, schema_editor):
    AuditEntry = apps.get_model("core", "AuditEntry")
    AuditPending = apps.get_model("core", "AuditPending")
    while True:
        rows = list(AuditEntry.objects.filter(content_hash="").order_by("id")[:BATCH])
        if not rows:
            break
        for row in rows:
            row.content_hash = chain.content_hash(**{column: getattr(row, column) for column in COLUMNS})
        AuditEntry.objects.bulk_update(rows, ["content_hash"])
    after = 0
    while True:
        ids = list(
            AuditEntry.objects.filter(id__gt=after, seal__isnull=True)
            .order_by("id")
            .values_list("id", flat=True)[:BATCH]
        )
        if not ids:
            break
        waiting = set(AuditPending.objects.filter(entry_id__in=ids).values_list("entry_id", flat=True))
        AuditPending.objects.bulk_create([AuditPending(entry_id=i) for i in ids if i not in waiting])
        after = ids[-1]


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0004_audit_hash_chain"),
    ]

    operations = [
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
