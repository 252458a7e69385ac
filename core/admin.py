from django.contrib import admin
from django.http import HttpRequest

from core.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit trail is read-only: nothing here adds, edits or deletes an entry."""

    list_display = ("at", "actor_label", "action", "entity_type", "entity_id", "from_state", "to_state")
    list_filter = ("action", "entity_type")
    search_fields = ("entity_id", "actor_label", "reason")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
