"""What the operator console's screens share.

* :class:`OperatorAdmin`: platform operators (and superusers) may look;
  nobody adds, edits or deletes rows here. State changes go through admin
  actions that call the same service functions as the API, so they are
  checked and audited the same way.
* :func:`reasoned_action`: a bulk action that first asks for a reason (and
  any other input), then calls a service once per selected row, reporting
  each refusal with the service's own sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from core.errors import ApplicationError
from core.permissions import role_of
from marketplace.models import Role


def is_operator(user: Any) -> bool:
    return bool(
        user.is_active and user.is_staff and (role_of(user) == Role.OPERATOR or getattr(user, "is_superuser", False))
    )


class OperatorAdmin(admin.ModelAdmin):
    """Read-only for operators: changes happen through actions calling services."""

    list_per_page = 50
    show_full_result_count = False

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_operator(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_operator(request.user)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return is_operator(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        required=False,
        help_text="Recorded in the audit trail with your name and the time.",
    )

    def __init__(self, *args: Any, reason_required: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = reason_required


class AmountReasonForm(ReasonForm):
    amount = forms.DecimalField(
        max_digits=18,
        decimal_places=2,
        required=False,
        help_text="CNY. Leave empty for the whole amount each statement makes payable.",
    )


Service = Callable[[Model, Any, str, dict[str, Any]], Any]


def reasoned_action(
    *,
    name: str,
    description: str,
    service: Service,
    reason_required: bool,
    verb: str,
    form_class: type[ReasonForm] = ReasonForm,
    warning: str = "",
) -> Callable[[admin.ModelAdmin, HttpRequest, QuerySet], TemplateResponse | None]:
    """A bulk action that asks for a reason on an intermediate page, then
    calls ``service(obj, user, reason, cleaned_data)`` for each selected row."""

    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        if request.POST.get("confirm") == "yes":
            form = form_class(request.POST, reason_required=reason_required)
            if form.is_valid():
                reason = form.cleaned_data["reason"].strip()
                done, refused = _apply(modeladmin, request, queryset, service, reason, form.cleaned_data)
                if done:
                    modeladmin.message_user(request, f"{len(done)} {verb}: {', '.join(done)}.", messages.SUCCESS)
                for text in refused:
                    modeladmin.message_user(request, text, messages.ERROR)
                return None
        else:
            form = form_class(reason_required=reason_required)
        opts = modeladmin.model._meta
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": description,
            "opts": opts,
            "objects": list(queryset),
            "form": form,
            "action": name,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "reason_required": reason_required,
            "warning": warning,
            "media": modeladmin.media,
        }
        return TemplateResponse(request, "admin/console/reason_form.html", context)

    action.__name__ = name
    return admin.action(description=description)(action)


def _apply(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    service: Service,
    reason: str,
    cleaned: dict[str, Any],
) -> tuple[list[str], list[str]]:
    done: list[str] = []
    refused: list[str] = []
    for obj in queryset.order_by("pk"):
        try:
            service(obj, request.user, reason, cleaned)
        except ApplicationError as exc:
            refused.append(f"{obj}: {exc.detail}")
        else:
            done.append(str(obj))
    return done, refused


def amount_or_none(cleaned: dict[str, Any]) -> Decimal | None:
    value = cleaned.get("amount")
    return None if value in (None, "") else Decimal(value)


def readonly_fields_of(model: type[Model], exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """Every concrete field, for change pages that only show."""
    return tuple(f.name for f in model._meta.concrete_fields if f.name not in exclude)
