"""API plumbing shared by every app: the error format and role permissions."""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ApplicationError, InvalidInput


def _first_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """The first (field path, message) in a DRF error structure."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            path = f"{prefix}.{name}" if prefix and name else (name or prefix)
            return _first_error(value, path)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                return _first_error(value, f"{prefix}[{index}]" if isinstance(value, dict) else prefix)
            return (prefix or None, str(value))
    return (prefix or None, str(detail))


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Every error body is ``{"code", "detail", "field"}`` (plus ``errors`` for
    validation failures listing every field)."""
    if isinstance(exc, ApplicationError):
        body = {"code": exc.code, "detail": exc.detail, "field": exc.field, **exc.extra}
        return Response(body, status=exc.status)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_error(exc.detail)
        detail = f"{field}: {message}" if field else message
        response.data = {"code": "invalid", "detail": detail, "field": field, "errors": exc.detail}
        response.status_code = status.HTTP_400_BAD_REQUEST
        return response
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = {"code": code, "detail": str(exc.detail), "field": None}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            response.data["retry_after"] = int(exc.wait)  # also in the Retry-After header
    return response


def paginate(request: Request, queryset: Any, serializer_class: Any, context: dict | None = None) -> Response:
    """Limit/offset pagination for views that are not generic: ``{"count", "results"}``
    (``?limit=`` 1..500, default 50; ``?offset=``)."""
    try:
        limit = min(int(request.query_params.get("limit", 50)), 500)
        offset = max(int(request.query_params.get("offset", 0)), 0)
    except ValueError:
        raise InvalidInput("limit and offset are whole numbers", field="limit") from None
    if limit < 1:
        raise InvalidInput("limit is at least 1", field="limit")
    total = queryset.count()
    items = queryset[offset : offset + limit]
    return Response({"count": total, "results": serializer_class(items, many=True, context=context or {}).data})
