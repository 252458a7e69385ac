from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from health_check.views import HealthCheckView

handler404 = "core.api.not_found"

urlpatterns = [
    # One sign-in form for everyone, rate-limited: the operator console's sends there.
    path(
        "admin/login/",
        RedirectView.as_view(pattern_name="console:login", query_string=True, http_method_names=["get"]),
    ),
    path("admin/", admin.site.urls),
    path(
        "health/",
        HealthCheckView.as_view(checks=["health_check.checks.Database", "core.health.Broker"]),
        name="health",
    ),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", include("marketplace.api.urls")),
    path("api/v1/", include("scheduler.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/v1/", include("billing.wallet_urls")),
    path("api/v1/", include("vouchers.api.urls")),
    path("api/v1/", include("core.urls")),
    path("", include("console.urls")),
]
