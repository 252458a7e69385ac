"""Sending notices to organisations (kept in the database, listed by the API)."""

from django.db import models

from core.models import Notice


def notify(*, organisation_id: int, kind: str, title: str, message: str, subject: models.Model | None = None) -> Notice:
    return Notice.objects.create(
        organisation_id=organisation_id,
        kind=kind,
        title=title,
        message=message,
        subject_type=subject._meta.label_lower if subject is not None else "",
        subject_id=str(subject.pk) if subject is not None else "",
    )
