from django.urls import path

from billing.api import views

urlpatterns = [
    path("statements", views.StatementListView.as_view(), name="statement-list"),
    path("statements/<int:pk>", views.StatementDetailView.as_view(), name="statement-detail"),
    path("statements/<int:pk>/approve", views.StatementApproveView.as_view(), name="statement-approve"),
    path("statements/<int:pk>/dispute", views.StatementDisputeView.as_view(), name="statement-dispute"),
    path("statements/<int:pk>/adjust", views.StatementAdjustView.as_view(), name="statement-adjust"),
    path("statements/<int:pk>/export.csv", views.StatementCsvView.as_view(), name="statement-export-csv"),
    path("statements/<int:pk>/export.pdf", views.StatementPdfView.as_view(), name="statement-export-pdf"),
    path("settlement/close", views.SettlementCloseView.as_view(), name="settlement-close"),
]
