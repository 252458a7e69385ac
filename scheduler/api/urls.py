from django.urls import path

from scheduler.api import views

urlpatterns = [
    path("offers", views.OfferListView.as_view(), name="offer-list"),
    path("offers/<int:pk>/withdraw", views.OfferWithdrawView.as_view(), name="offer-withdraw"),
    path("jobs", views.JobListView.as_view(), name="job-list"),
    path("jobs/<int:pk>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:pk>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("leases", views.LeaseListView.as_view(), name="lease-list"),
    path("quotes", views.QuoteView.as_view(), name="quote"),
]
