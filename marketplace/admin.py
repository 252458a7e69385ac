"""Operator screens for organisations and inventory. Actions call services."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from core.errors import ApplicationError
from marketplace import services
from marketplace.models import DeviceModel, Organisation, ResourcePool, Site, User


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ("name", "credit_code", "category", "is_sme", "city", "identifier", "verification_status")
    list_filter = ("verification_status", "category", "is_sme", "home_hub")
    search_fields = ("name", "credit_code", "identifier")
    readonly_fields = ("identifier", "verification_status", "verification_reason", "verified_at", "sites_allocated")
    actions = ("verify_selected",)

    @admin.action(description="Verify selected providers")
    def verify_selected(self, request: HttpRequest, queryset: QuerySet[Organisation]) -> None:
        done = 0
        for organisation in queryset:
            try:
                services.provider_verify(organisation=organisation, actor=request.user, reason="verified in console")
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"{organisation}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"{done} provider(s) verified.")


@admin.register(User)
class CxUserAdmin(UserAdmin):
    list_display = ("username", "organisation", "role", "is_active")
    list_filter = ("role", "is_active")
    fieldsets = (*UserAdmin.fieldsets, ("Organisation", {"fields": ("organisation", "role")}))


@admin.register(DeviceModel)
class DeviceModelAdmin(admin.ModelAdmin):
    list_display = ("name", "vendor", "kind", "software_stack", "domestic", "fp16_tflops", "fp32_tflops", "fp64_tflops")
    list_filter = ("kind", "vendor", "domestic", "software_stack")
    search_fields = ("name", "code")


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ("name", "identifier", "provider", "hub", "city", "kind", "pue", "green_share")
    list_filter = ("hub", "kind")
    search_fields = ("name", "identifier")
    readonly_fields = ("identifier", "serial", "provider", "hub", "city", "pools_allocated")


@admin.register(ResourcePool)
class ResourcePoolAdmin(admin.ModelAdmin):
    list_display = ("name", "identifier", "site", "compute_class", "node_count", "accelerator_model", "status")
    list_filter = ("compute_class", "software_stack", "status", "site__hub")
    search_fields = ("name", "identifier")
    readonly_fields = ("identifier", "serial", "site", "software_stack", "compute_class", "cpu_architecture")
