from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.errors import AppendOnly


def _refuse(what: str) -> NoReturn:
    raise AppendOnly(f"the audit trail is append-only: {what} is refused")


class AppendOnlyQuerySet(models.QuerySet):
    """Rows are inserted, never changed: ``update()``, ``bulk_update()`` and
    ``delete()`` raise (so does ``update_or_create`` of an existing row). The
    database refuses it too (triggers, see migration 0006)."""

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse(f"updating {self.model._meta.verbose_name_plural}")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> NoReturn:
        _refuse(f"updating {self.model._meta.verbose_name_plural}")

    def delete(self) -> NoReturn:
        _refuse(f"deleting {self.model._meta.verbose_name_plural}")


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse(f"changing {self._meta.verbose_name} {self.pk}")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(f"deleting {self._meta.verbose_name} {self.pk}")


class AuditEntry(AppendOnlyModel):
    """One state change or money movement: who, what, when, why. Append-only,
    hash-chained: ``content_hash`` is the SHA-256 of the entry's canonical
    content (``core.domain.chain``), and an :class:`AuditSeal` links it into
    the chain shortly after it commits."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
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
    content_hash = models.CharField(max_length=64, help_text="SHA-256 of the canonical content, set at insert")

    class Meta:
        ordering = ("id",)
        indexes = [models.Index(fields=["entity_type", "entity_id"], name="audit_entity_idx")]
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.entity_type}:{self.entity_id}"


class AuditSeal(AppendOnlyModel):
    """An audit entry's place in the hash chain: seal ``sequence`` links the
    entry to the chain hash of seal ``sequence - 1`` (``GENESIS`` for the
    first). Written only by ``core.audit.audit_seal``, one short transaction
    at a time under one lock, so the chain never forks."""

    sequence = models.BigIntegerField(primary_key=True)
    entry = models.OneToOneField(AuditEntry, on_delete=models.PROTECT, related_name="seal")
    previous_hash = models.CharField(max_length=64)
    chain_hash = models.CharField(max_length=64, unique=True)
    sealed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("sequence",)
        constraints = [models.CheckConstraint(condition=models.Q(sequence__gte=1), name="audit_seal_sequence_positive")]

    def __str__(self) -> str:
        return f"Seal #{self.sequence} of audit entry {self.entry_id}"


class AuditPending(models.Model):
    """An audit entry committed but not sealed yet, written in the same
    transaction as the entry; the sealer takes it away as it seals."""

    entry = models.OneToOneField(AuditEntry, on_delete=models.PROTECT, primary_key=True, related_name="+")

    class Meta:
        verbose_name_plural = "audit entries awaiting their seal"

    def __str__(self) -> str:
        return f"Audit entry {self.entry_id}, not sealed yet"


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
