"""The operator console's front page: Django's admin, titled, with the review queues on top."""

from django.contrib import admin

admin.site.site_header = "Compute Exchange operator console"
admin.site.site_title = "Compute Exchange operators"
admin.site.index_title = "Review queues and records"
admin.site.index_template = "admin/console/index.html"
