from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    """One state change or money movement: who, what, when, why. Append-only."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=150, help_text="Who acted, kept even if the user is removed")
    action = models.CharField(max_length=64, db_index=True)
    entity_type = models.CharField(max_length=64)
    entity_id = models.CharField(max_length=64)
    from_state = models.CharField(max_length=32, blank=True)
    to_state = models.CharField(max_length=32, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("id",)
        indexes = [models.Index(fields=["entity_type", "entity_id"], name="audit_entity_idx")]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.entity_type}:{self.entity_id}"


class Notice(models.Model):
    """A message to an organisation about something that needs its attention
    (a lease suspended for unpaid usage, a statement disputed, …)."""

    organisation = models.ForeignKey("marketplace.Organisation", on_delete=models.PROTECT, related_name="notices")
    kind = models.CharField(max_length=64)
    title = models.CharField(max_length=200)
    message = models.TextField()
    subject_type = models.CharField(max_length=64, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)

    def __str__(self) -> str:
        return f"{self.kind} to {self.organisation_id}: {self.title}"
