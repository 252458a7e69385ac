"""Operator screens for organisations and inventory. Nothing is edited in
place: verification goes through the same services as the API, each with a
reason, audited."""

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from console.admin_support import OperatorAdmin, readonly_fields_of, reasoned_action
from marketplace import services
from marketplace.models import DeviceModel, Organisation, ResourcePool, Site, User


def _verify(organisation: Organisation, actor: User, reason: str, _cleaned: dict[str, Any]) -> None:
    services.provider_verify(organisation=organisation, actor=actor, reason=reason)


def _reject(organisation: Organisation, actor: User, reason: str, _cleaned: dict[str, Any]) -> None:
    services.provider_reject(organisation=organisation, actor=actor, reason=reason)


@admin.register(Organisation)
class OrganisationAdmin(OperatorAdmin):
    """The providers awaiting verification are this list filtered on pending providers."""

    list_display = (
        "name",
        "credit_code",
        "category",
        "is_sme",
        "city",
        "identifier",
        "verification_status",
        "created_at",
    )
    list_filter = ("verification_status", "category", "is_sme", "home_hub")
    search_fields = ("name", "credit_code", "identifier")
    readonly_fields = readonly_fields_of(Organisation)
    actions = (
        reasoned_action(
            name="verify_selected",
            description="Verify selected providers",
            service=_verify,
            reason_required=False,
            verb="verified",
        ),
        reasoned_action(
            name="reject_selected",
            description="Reject selected providers",
            service=_reject,
            reason_required=True,
            verb="rejected",
        ),
    )


@admin.register(User)
class CxUserAdmin(UserAdmin):
    """Accounts: superusers only (Django's own permissions)."""

    list_display = ("username", "organisation", "role", "is_active")
    list_filter = ("role", "is_active")
    fieldsets = (*UserAdmin.fieldsets, ("Organisation", {"fields": ("organisation", "role")}))


@admin.register(DeviceModel)
class DeviceModelAdmin(OperatorAdmin):
    list_display = ("name", "vendor", "kind", "software_stack", "domestic", "fp16_tflops", "fp32_tflops", "fp64_tflops")
    list_filter = ("kind", "vendor", "domestic", "software_stack")
    search_fields = ("name", "code")
    readonly_fields = readonly_fields_of(DeviceModel)


@admin.register(Site)
class SiteAdmin(OperatorAdmin):
    list_display = ("name", "identifier", "provider", "hub", "city", "kind", "pue", "green_share")
    list_filter = ("hub", "kind")
    search_fields = ("name", "identifier", "provider__name")
    list_select_related = ("provider",)
    readonly_fields = readonly_fields_of(Site)


@admin.register(ResourcePool)
class ResourcePoolAdmin(OperatorAdmin):
    list_display = ("name", "identifier", "site", "compute_class", "node_count", "accelerator_model", "status")
    list_filter = ("compute_class", "software_stack", "status", "site__hub")
    search_fields = ("name", "identifier")
    list_select_related = ("site", "accelerator_model")
    readonly_fields = readonly_fields_of(ResourcePool)
