"""The server-rendered pages: sign-in, the market dashboard and the buyers' and providers' own pages."""

from django.contrib.auth import views as auth_views
from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.HomeView.as_view(), name="home"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="/accounts/login/"), name="logout"),
    path("dashboard/", views.DashboardView.as_view(), name="dashboard"),
    path("dashboard/data.json", views.DashboardDataView.as_view(), name="dashboard-data"),
    path("my/jobs/", views.MyJobsView.as_view(), name="my-jobs"),
    path("my/pools/", views.MyPoolsView.as_view(), name="my-pools"),
    path("review/<slug:queue>/", views.ReviewQueueView.as_view(), name="review-queue"),
]
