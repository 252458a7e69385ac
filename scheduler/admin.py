"""Offers, jobs, leases, agents and ratings in the operator console:
read-only. A lease shows its usage samples; an agent never shows its
token hash or signing secret."""

from django.contrib import admin

from billing.models import UsageSample
from console.admin_support import OperatorAdmin, ReadOnlyInline, readonly_fields_of
from scheduler.models import Agent, Job, Lease, Offer, Rating


@admin.register(Offer)
class OfferAdmin(OperatorAdmin):
    list_display = ("id", "pool", "status", "pricing_type", "nodes_offered", "list_price", "window_start", "window_end")
    list_filter = ("status", "pricing_type", "pool__site__hub", "pool__compute_class")
    search_fields = ("pool__identifier", "pool__name")
    list_select_related = ("pool",)
    readonly_fields = readonly_fields_of(Offer)


@admin.register(Job)
class JobAdmin(OperatorAdmin):
    list_display = ("id", "name", "buyer", "status", "nodes", "accelerators_per_node", "queued_at", "pending_reason")
    list_filter = ("status", "software_stack", "objective", "interruptible")
    search_fields = ("name", "buyer__name", "pending_reason")
    list_select_related = ("buyer",)
    readonly_fields = readonly_fields_of(Job)


class UsageSampleInline(ReadOnlyInline):
    model = UsageSample
    fields = ("sequence", "start", "end", "ncu_hours", "device_seconds", "energy_kwh", "charged", "received_at")
    readonly_fields = fields
    ordering = ("sequence",)


@admin.register(Lease)
class LeaseAdmin(OperatorAdmin):
    list_display = ("id", "job", "pool", "status", "start", "end", "unit_price", "ncu", "progress_percent")
    list_filter = ("status", "pricing_type", "pool__site__hub", "pool__compute_class")
    search_fields = ("=id", "job__name", "pool__identifier")
    list_select_related = ("job", "pool")
    readonly_fields = readonly_fields_of(Lease)
    inlines = (UsageSampleInline,)


@admin.register(Agent)
class AgentAdmin(OperatorAdmin):
    list_display = ("id", "name", "provider", "created_at", "rotated_at", "revoked_at", "last_seen_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "provider__name")
    list_select_related = ("provider",)
    exclude = ("token_hash", "secret")
    readonly_fields = readonly_fields_of(Agent, exclude=("token_hash", "secret"))


@admin.register(Rating)
class RatingAdmin(OperatorAdmin):
    list_display = ("id", "lease", "buyer", "provider", "score", "created_at")
    list_filter = ("score",)
    search_fields = ("provider__name", "buyer__name", "comment")
    list_select_related = ("buyer", "provider", "lease")
    readonly_fields = readonly_fields_of(Rating)
