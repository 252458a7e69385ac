from django.urls import path

from marketplace.api import views

urlpatterns = [
    path("auth/register", views.RegisterView.as_view(), name="register"),
    path("auth/token", views.TokenView.as_view(), name="token"),
    path("me", views.MeView.as_view(), name="me"),
    path("organisations", views.OrganisationListView.as_view(), name="organisation-list"),
    path("organisations/<int:pk>", views.OrganisationDetailView.as_view(), name="organisation-detail"),
    path("organisations/<int:pk>/verify", views.ProviderVerifyView.as_view(), name="provider-verify"),
    path("organisations/<int:pk>/reject", views.ProviderRejectView.as_view(), name="provider-reject"),
    path("hubs", views.HubListView.as_view(), name="hub-list"),
    path("devices", views.DeviceListView.as_view(), name="device-list"),
    path("sites", views.SiteListView.as_view(), name="site-list"),
    path("sites/<int:pk>", views.SiteDetailView.as_view(), name="site-detail"),
    path("pools", views.PoolListView.as_view(), name="pool-list"),
    path("pools/<int:pk>", views.PoolDetailView.as_view(), name="pool-detail"),
    path("pools/<int:pk>/benchmark", views.PoolBenchmarkView.as_view(), name="pool-benchmark"),
    path("resolve/<str:identifier>", views.ResolveView.as_view(), name="resolve"),
    path("inventory", views.InventoryView.as_view(), name="inventory"),
]
