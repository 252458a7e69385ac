"""The audit trail and notices in the operator console: read-only, nothing
here adds, edits or deletes an entry."""

from django.contrib import admin

from console.admin_support import OperatorAdmin, readonly_fields_of
from core.models import AuditEntry, AuditSeal, Notice


@admin.register(AuditEntry)
class AuditEntryAdmin(OperatorAdmin):
    list_display = ("at", "actor_label", "action", "entity_type", "entity_id", "from_state", "to_state", "reason")
    list_filter = ("action", "entity_type")
    search_fields = ("entity_id", "actor_label", "reason", "action")
    date_hierarchy = "at"
    readonly_fields = readonly_fields_of(AuditEntry)


@admin.register(AuditSeal)
class AuditSealAdmin(OperatorAdmin):
    """The hash chain: seal n links its entry to seal n − 1 (``manage.py verify_audit`` checks it)."""

    list_display = ("sequence", "entry", "chain_hash", "sealed_at")
    list_select_related = ("entry",)
    readonly_fields = readonly_fields_of(AuditSeal)


@admin.register(Notice)
class NoticeAdmin(OperatorAdmin):
    list_display = ("created_at", "organisation", "kind", "title", "read_at")
    list_filter = ("kind",)
    search_fields = ("title", "message", "organisation__name")
    list_select_related = ("organisation",)
    readonly_fields = readonly_fields_of(Notice)
