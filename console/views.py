"""Server-rendered pages. The dashboard is for every signed-in member
(operators also see the review backlogs); /my/jobs/ is for buyers and
/my/pools/ for providers, as in the API. Anonymous visitors are sent to the
sign-in page; a member of the wrong role gets 403."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import NoReverseMatch, reverse
from django.views import View
from django.views.generic import TemplateView

from console import selectors
from core import throttling
from core.permissions import role_of
from marketplace.domain.geography import HUBS
from marketplace.models import Role

MEMBER_ROLES = frozenset({Role.BUYER, Role.PROVIDER, Role.OPERATOR})
# The operator's review queues: the admin list each opens, already filtered.
REVIEW_QUEUES = {
    "provider_statements": (
        "admin:billing_settlementstatement_changelist",
        "role__exact=provider&status__exact=pending_review",
    ),
    "disputes": ("admin:billing_settlementstatement_changelist", "status__exact=disputed"),
    "providers": (
        "admin:marketplace_organisation_changelist",
        "category__exact=provider&verification_status__exact=pending",
    ),
    "payments": ("admin:billing_paymentnotice_changelist", "status__exact=pending"),
    "redemption_statements": ("admin:vouchers_redemptionstatement_changelist", "status__exact=pending_review"),
    "voucher_applications": ("admin:vouchers_voucherapplication_changelist", "status__exact=pending_review"),
}


def poll_seconds() -> int:
    """How often the dashboard asks for new figures (CX_DASHBOARD_POLL_SECONDS, 15 by default)."""
    return max(1, int(getattr(settings, "CX_DASHBOARD_POLL_SECONDS", 15)))


class FiguresEncoder(DjangoJSONEncoder):
    """Decimals as strings (exact); the page's script turns them into numbers only to draw."""

    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            return str(o)
        return super().default(o)


class RoleRequiredMixin(LoginRequiredMixin):
    roles: frozenset[str] = MEMBER_ROLES

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated and role_of(request.user) not in self.roles:
            raise PermissionDenied("This page is not open to your role.")
        return super().dispatch(request, *args, **kwargs)


def is_operator(user: Any) -> bool:
    return role_of(user) == Role.OPERATOR


class LoginView(auth_views.LoginView):
    """The one sign-in form (the operator console's sends here too); attempts
    count against the same per-address limit as ``POST /api/v1/auth/token``."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self) -> str:
        return "/dashboard/"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refusal = throttling.hit("login", f"ip-{throttling.client_address(request)}")
        if refusal is None:
            return super().post(request, *args, **kwargs)
        message = f"Too many sign-in attempts from your address. Try again in {refusal.wait} seconds."
        response = self.render_to_response(self.get_context_data(form=self.get_form(), throttled=message), status=429)
        response["Retry-After"] = str(refusal.wait)
        return response


class HomeView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return redirect("console:dashboard" if request.user.is_authenticated else "console:login")


class DashboardView(RoleRequiredMixin, TemplateView):
    template_name = "console/dashboard.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        figures = selectors.market_figures(operator=is_operator(self.request.user))
        return {
            **super().get_context_data(**kwargs),
            "figures": figures,
            "poll_seconds": poll_seconds(),
            "hubs": HUBS,
            "operator": is_operator(self.request.user),
        }


class DashboardDataView(RoleRequiredMixin, View):
    """The dashboard's figures as JSON, polled by the page."""

    def get(self, request: HttpRequest) -> JsonResponse:
        figures = selectors.market_figures(operator=is_operator(request.user))
        response = JsonResponse(figures, encoder=FiguresEncoder, json_dumps_params={"ensure_ascii": False})
        response["Cache-Control"] = "no-store"
        return response


class MyJobsView(RoleRequiredMixin, TemplateView):
    roles = frozenset({Role.BUYER})
    template_name = "console/my_jobs.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        user = self.request.user
        return {
            **super().get_context_data(**kwargs),
            "organisation": user.organisation,
            "jobs": selectors.buyer_jobs(organisation_id=user.organisation_id),
            "poll_seconds": 30,
        }


class MyPoolsView(RoleRequiredMixin, TemplateView):
    roles = frozenset({Role.PROVIDER})
    template_name = "console/my_pools.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        user = self.request.user
        return {
            **super().get_context_data(**kwargs),
            "organisation": user.organisation,
            "summary": selectors.provider_pools(organisation_id=user.organisation_id),
            "poll_seconds": 30,
        }


class ReviewQueueView(RoleRequiredMixin, View):
    """A review queue of the dashboard's backlog panel: the operator console's list, filtered."""

    roles = frozenset({Role.OPERATOR})

    def get(self, request: HttpRequest, queue: str) -> HttpResponse:
        if queue not in REVIEW_QUEUES:
            raise Http404("no such review queue")
        name, query = REVIEW_QUEUES[queue]
        try:
            return redirect(f"{reverse(name)}?{query}")
        except NoReverseMatch:
            raise Http404("that queue has no screen yet") from None
