"""Writing the audit trail. Every service that changes the state of an
important object records it here, inside the same transaction."""

from typing import Any

from django.db import models

from core.models import AuditEntry

SYSTEM = "system"


def audit_record(
    *,
    actor: Any | None,
    action: str,
    entity: models.Model,
    from_state: str = "",
    to_state: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    label = getattr(actor, "username", None) or SYSTEM
    return AuditEntry.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=label,
        action=action,
        entity_type=entity._meta.label_lower,
        entity_id=str(entity.pk),
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        data=data or {},
    )


def audit_many(entries: list[dict[str, Any]], *, actor: Any | None = None) -> None:
    """Record many audit entries at once (a scheduling cycle). Each dict has
    the keyword arguments of :func:`audit_record` except ``actor``."""
    label = getattr(actor, "username", None) or SYSTEM
    AuditEntry.objects.bulk_create(
        [
            AuditEntry(
                actor=actor if getattr(actor, "pk", None) else None,
                actor_label=label,
                action=entry["action"],
                entity_type=entry["entity"]._meta.label_lower,
                entity_id=str(entry["entity"].pk),
                from_state=entry.get("from_state", ""),
                to_state=entry.get("to_state", ""),
                reason=entry.get("reason", ""),
                data=entry.get("data") or {},
            )
            for entry in entries
        ],
        batch_size=1000,
    )
