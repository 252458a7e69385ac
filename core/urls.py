from django.urls import path

from core import views

urlpatterns = [
    path("notices", views.NoticeListView.as_view(), name="notice-list"),
    path("notices/<int:pk>/read", views.NoticeReadView.as_view(), name="notice-read"),
    path("trace/<int:pk>", views.JobTraceView.as_view(), name="job-trace"),
]
