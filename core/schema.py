"""OpenAPI schema generation tuned to the house style: views nest their own
``InputSerializer``/``OutputSerializer``, so components are named after the
view (``RegisterViewInput``) instead of colliding as ``Input``."""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework.serializers import BaseSerializer


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer: BaseSerializer, direction: str) -> str:
        cls = serializer.__class__
        if "." in cls.__qualname__ and "<locals>" not in cls.__qualname__:
            return cls.__qualname__.replace(".", "")
        return super().get_serializer_name(serializer, direction)
