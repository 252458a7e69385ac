from django.urls import path

from vouchers.api import views

urlpatterns = [
    path("voucher-programmes", views.ProgrammeListView.as_view(), name="voucher-programme-list"),
    path("voucher-programmes/<int:pk>", views.ProgrammeDetailView.as_view(), name="voucher-programme-detail"),
    path("voucher-programmes/<int:pk>/fund", views.ProgrammeFundView.as_view(), name="voucher-programme-fund"),
    path("voucher-programmes/<int:pk>/close", views.ProgrammeCloseView.as_view(), name="voucher-programme-close"),
    path("voucher-programmes/<int:pk>/report", views.ProgrammeReportView.as_view(), name="voucher-programme-report"),
    path(
        "voucher-programmes/<int:pk>/report.csv",
        views.ProgrammeReportCsvView.as_view(),
        name="voucher-programme-report-csv",
    ),
    path("voucher-eligibility", views.EligibilityView.as_view(), name="voucher-eligibility"),
    path("voucher-applications", views.ApplicationListView.as_view(), name="voucher-application-list"),
    path("voucher-applications/<int:pk>", views.ApplicationDetailView.as_view(), name="voucher-application-detail"),
    path(
        "voucher-applications/<int:pk>/approve",
        views.ApplicationApproveView.as_view(),
        name="voucher-application-approve",
    ),
    path(
        "voucher-applications/<int:pk>/reject", views.ApplicationRejectView.as_view(), name="voucher-application-reject"
    ),
    path(
        "voucher-applications/<int:pk>/withdraw",
        views.ApplicationWithdrawView.as_view(),
        name="voucher-application-withdraw",
    ),
    path(
        "voucher-applications/<int:pk>/documents",
        views.ApplicationDocumentsView.as_view(),
        name="voucher-application-documents",
    ),
    path("voucher-documents/<int:pk>", views.DocumentDownloadView.as_view(), name="voucher-document"),
    path("vouchers", views.VoucherListView.as_view(), name="voucher-list"),
    path("vouchers/<int:pk>", views.VoucherDetailView.as_view(), name="voucher-detail"),
    path("jobs/<int:pk>/vouchers", views.JobVouchersView.as_view(), name="job-vouchers"),
    path("voucher-quotes", views.VoucherQuoteView.as_view(), name="voucher-quote"),
    path("redemption-statements", views.StatementListView.as_view(), name="redemption-statement-list"),
    path("redemption-statements/<int:pk>", views.StatementDetailView.as_view(), name="redemption-statement-detail"),
    path(
        "redemption-statements/<int:pk>/approve",
        views.StatementApproveView.as_view(),
        name="redemption-statement-approve",
    ),
    path(
        "redemption-statements/<int:pk>/reject", views.StatementRejectView.as_view(), name="redemption-statement-reject"
    ),
    path("voucher-dashboard", views.DashboardView.as_view(), name="voucher-dashboard"),
    path("organisation-relations", views.RelationListView.as_view(), name="organisation-relation-list"),
    path(
        "organisation-relations/<int:pk>/remove",
        views.RelationRemoveView.as_view(),
        name="organisation-relation-remove",
    ),
    path("charge-refunds", views.ChargeRefundView.as_view(), name="charge-refund"),
]
