"""The database itself refuses to change or delete audit entries and seals:
a PostgreSQL trigger raises on UPDATE and DELETE; on SQLite (development) a
trigger raises on UPDATE (Django empties tables with DELETE between tests
there, so DELETE is left to the application's guard)."""

from django.db import migrations

TABLES = ("core_auditentry", "core_auditseal")

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION core_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$;
"""


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_FUNCTION, params=None)
        for table in TABLES:
            schema_editor.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION core_audit_append_only()"
            )
    elif vendor == "sqlite":
        for table in TABLES:
            schema_editor.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE on {table} is refused'); END"
            )


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in {"postgresql", "sqlite"}:
        return
    for table in TABLES:
        on = f" ON {table}" if vendor == "postgresql" else ""
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only{on}")
    if vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS core_audit_append_only()")


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0005_audit_backfill_content_hash"),
    ]

    operations = [
        migrations.RunPython(create, drop),
    ]
