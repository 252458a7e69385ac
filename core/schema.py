"""OpenAPI schema generation tuned to the house style: views nest their own
``InputSerializer``/``OutputSerializer`` and apps reuse names such as
``StatementOutput``, so each component is named after its app and its full
qualified name (``BillingStatementApproveViewInput``) instead of colliding.

Every operation also documents the errors it can answer, all in the one
error format of ``core.api.exception_handler`` (``{"code", "detail",
"field"}``): 400 where it takes input, 401 where it authenticates, 403
where a role or ownership is required, 404 where the path names an object,
409 where it changes state (the object's state forbids it, or it was done
already), 429 where it is throttled. Views add the rarer ones (402, 422)
with ``extend_schema(responses=...)``."""

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.serializers import BaseSerializer

OWN_APPS = ("core", "marketplace", "scheduler", "billing", "vouchers", "console")

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `field` names the first field at fault, `errors` lists every field's messages.",
    "401": "No credentials, or credentials that are unknown, malformed or revoked.",
    "402": "The organisation's available balance does not cover it.",
    "403": "The caller's role or organisation may not do this.",
    "404": "No such object, or not one the caller may see.",
    "409": "The object's current state does not allow it (`current` names it), or it conflicts with an earlier one.",
    "422": "Well formed, but nothing on the market could ever satisfy it; the body says why.",
    "429": "Too many requests; retry after the number of seconds in `Retry-After`.",
}


class ErrorOutput(serializers.Serializer):
    """Every error the API answers (4xx)."""

    code = serializers.CharField(help_text="A machine code: invalid, not_found, illegal_transition …")
    detail = serializers.CharField(help_text="A sentence for people")
    field = serializers.CharField(allow_null=True, help_text="The input at fault, if one is")
    errors = serializers.DictField(
        required=False, help_text="Validation errors only: every field's messages (nested like the input)"
    )


def error_response(code: int | str) -> OpenApiResponse:
    """An ``extend_schema`` response for an error status views document themselves (402, 422)."""
    return OpenApiResponse(response=ErrorOutput, description=ERROR_DESCRIPTIONS[str(code)])


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer: BaseSerializer, direction: str) -> str:
        cls = serializer.__class__
        if cls is ErrorOutput:
            return "Error"
        app = cls.__module__.split(".")[0]
        if app in OWN_APPS and "<locals>" not in cls.__qualname__:
            return app.title() + cls.__qualname__.replace(".", "")
        return super().get_serializer_name(serializer, direction)

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> dict[str, Any]:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction == "request" and isinstance(field, serializers.DecimalField) and schema.get("type") == "string":
            # A decimal is read from a string ("12.50") or a JSON number (12.5) alike.
            number: dict[str, Any] = {"type": "number"}
            if field.max_whole_digits is not None:
                bound = 10**field.max_whole_digits
                number.update({"maximum": bound, "minimum": -bound, "exclusiveMaximum": True, "exclusiveMinimum": True})
            self._insert_min_max(field, number)
            meta = {k: v for k, v in schema.items() if k not in ("type", "format", "pattern")}
            string = {k: v for k, v in schema.items() if k in ("type", "format", "pattern")}
            return {**meta, "anyOf": [string, number]}
        if direction == "request" and isinstance(field, serializers.BooleanField) and schema.get("type") == "boolean":
            # DRF also reads 1/0 and words such as "true", "yes", "off" as booleans.
            words = sorted(v for v in field.TRUE_VALUES | field.FALSE_VALUES if isinstance(v, str))
            meta = {k: v for k, v in schema.items() if k != "type"}
            spelled = [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}, {"type": "string", "enum": words}]
            return {**meta, "anyOf": spelled}
        return schema

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            if code not in responses:
                response = self._get_response_for_code(ErrorOutput, code, direction=direction)
                response["description"] = ERROR_DESCRIPTIONS[code]
                responses[code] = response
        return responses

    def _error_codes(self) -> list[str]:
        codes = []
        parameters = self._get_parameters()
        has_path_parameters = any(p.get("in") == "path" for p in parameters)
        takes_input = self.method in UNSAFE_METHODS or any(
            p.get("in") == "query" or (p.get("in") == "path" and p.get("schema", {}).get("type") != "integer")
            for p in parameters
        )
        if takes_input:
            codes.append("400")
        if self.view.get_authenticators():
            codes.append("401")
        if any(not isinstance(permission, AllowAny) for permission in self.view.get_permissions()):
            codes.append("403")
        if has_path_parameters:
            codes.append("404")
        if self.method in UNSAFE_METHODS:
            codes.append("409")
        if self._throttled():
            codes.append("429")
        return codes

    def _throttled(self) -> bool:
        """Whether a throttle may refuse this operation: a scoped throttle only when the scope
        of the view (for this method) has a rate; any other throttle always."""
        from core.throttling import ScopedThrottle, rate_of

        for throttle in self.view.get_throttles():
            if not isinstance(throttle, ScopedThrottle):
                return True
            scopes = getattr(self.view, "throttle_scopes", None)
            scope = scopes.get(self.method) if scopes is not None else getattr(self.view, "throttle_scope", None)
            if scope and rate_of(scope) is not None:
                return True
        return False
