"""OpenAPI schema generation tuned to the house style: views nest their own
``InputSerializer``/``OutputSerializer`` and apps reuse names such as
``StatementOutput``, so each component is named after its app and its full
qualified name (``BillingStatementApproveViewInput``) instead of colliding."""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework.serializers import BaseSerializer

OWN_APPS = ("core", "marketplace", "scheduler", "billing", "vouchers", "console")


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer: BaseSerializer, direction: str) -> str:
        cls = serializer.__class__
        app = cls.__module__.split(".")[0]
        if app in OWN_APPS and "<locals>" not in cls.__qualname__:
            return app.title() + cls.__qualname__.replace(".", "")
        return super().get_serializer_name(serializer, direction)
