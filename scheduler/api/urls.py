from django.urls import path

from scheduler.api import agent_views, views

urlpatterns = [
    path("offers", views.OfferListView.as_view(), name="offer-list"),
    path("offers/<int:pk>/withdraw", views.OfferWithdrawView.as_view(), name="offer-withdraw"),
    path("jobs", views.JobListView.as_view(), name="job-list"),
    path("jobs/<int:pk>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:pk>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("leases", views.LeaseListView.as_view(), name="lease-list"),
    path("quotes", views.QuoteView.as_view(), name="quote"),
]

urlpatterns += [
    path("agents", agent_views.AgentListView.as_view(), name="agent-list"),
    path("agents/<int:pk>/rotate", agent_views.AgentRotateView.as_view(), name="agent-rotate"),
    path("agents/<int:pk>/revoke", agent_views.AgentRevokeView.as_view(), name="agent-revoke"),
    path("agent/leases", agent_views.AgentLeaseListView.as_view(), name="agent-leases"),
    path("agent/leases/<int:pk>/ack", agent_views.AgentAckView.as_view(), name="agent-ack"),
    path("agent/leases/<int:pk>/heartbeat", agent_views.AgentHeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/leases/<int:pk>/progress", agent_views.AgentProgressView.as_view(), name="agent-progress"),
    path("agent/leases/<int:pk>/usage", agent_views.AgentUsageView.as_view(), name="agent-usage"),
    path("agent/leases/<int:pk>/complete", agent_views.AgentCompleteView.as_view(), name="agent-complete"),
    path("leases/<int:pk>/rating", agent_views.LeaseRateView.as_view(), name="lease-rate"),
    path("providers/<str:identifier>/profile", agent_views.ProviderProfileView.as_view(), name="provider-profile"),
]
