"""API plumbing shared by every app: the error format and role permissions."""

import copy
import functools
import weakref
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.functional import cached_property
from django.views.defaults import page_not_found
from rest_framework import exceptions, pagination, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.serializer_helpers import BindingDict
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


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for a URL no route matches (``/api/v1/jobs/-1``): the API's error format under
    ``/api/``, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        body = {"code": "not_found", "detail": f"no such resource: {request.path}", "field": None}
        return JsonResponse(body, status=404)
    return page_not_found(request, exception)


def query_filters(request: Request, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    """A list's filters from the query string, read by ``serializer_class`` (whose fields the
    view also documents: ``extend_schema(parameters=[serializer_class])``). A value the
    serializer refuses is a 400 naming the parameter; empty and absent ones filter nothing."""
    given = {name: value for name, value in request.query_params.dict().items() if value != ""}
    data = _fields_built_once(serializer_class)(data=given)  # a dict, not the QueryDict: no HTML-form defaults
    data.is_valid(raise_exception=True)
    return {name: value for name, value in data.validated_data.items() if value not in (None, "")}


MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_OFFSET = 2**31 - 1  # far past any list; PostgreSQL's OFFSET stops at 2**63 - 1


def query_whole_number(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    """The query parameter ``name`` as a whole number from ``low`` to ``high``; 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} is a whole number", field=name) from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InvalidInput(f"{name} is {bounds}", field=name)
    return value


class Page(pagination.BasePagination):
    """The pages ``paginate`` answers, as the schema documents them: ``{"count", "results"}``
    for ``?limit=`` (1..500, default 50) and ``?offset=`` (from 0). Views that call
    ``paginate`` set it as their ``pagination_class``."""

    def get_paginated_response_schema(self, schema: dict) -> dict:
        return {
            "type": "object",
            "required": ["count", "results"],
            "properties": {"count": {"type": "integer", "minimum": 0}, "results": schema},
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict]:
        return [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"How many results (default {DEFAULT_LIMIT})",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            },
            {
                "name": "offset",
                "in": "query",
                "required": False,
                "description": "How many results to skip",
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
            },
        ]


class StrictLimitOffsetPagination(pagination.LimitOffsetPagination):
    """DRF's limit/offset pages, refusing a limit or offset that is not a whole number in
    range (400 naming it) instead of silently ignoring it."""

    default_limit = DEFAULT_LIMIT
    max_limit = MAX_LIMIT

    def get_limit(self, request: Request) -> int:
        return query_whole_number(request, self.limit_query_param, self.default_limit, 1, self.max_limit)

    def get_offset(self, request: Request) -> int:
        return query_whole_number(request, self.offset_query_param, 0, 0, MAX_OFFSET)

    def get_schema_operation_parameters(self, view: Any) -> list[dict]:
        return Page().get_schema_operation_parameters(view)


def paginate(request: Request, queryset: Any, serializer_class: Any, context: dict | None = None) -> Response:
    """Limit/offset pagination for views that are not generic: ``{"count", "results"}``
    (``?limit=`` 1..500, default 50; ``?offset=``). A limit or offset out of range is a 400."""
    limit = query_whole_number(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = query_whole_number(request, "offset", 0, 0, MAX_OFFSET)
    total = queryset.count()
    items = queryset[offset : offset + limit]
    results = serializer_class(items, many=True, context=context or {}).data
    for item in items:  # read once the page is: a prefetched reverse relation holds the item back (a cycle)
        getattr(item, "__dict__", {}).pop("_prefetched_objects_cache", None)
    return Response({"count": total, "results": results})


class FieldsBuiltOnce:
    """A serializer mixin: the fields are built once per class, not for every instance.

    DRF builds a serializer's fields for each instance: a deep copy of the
    declared fields, and for a ModelSerializer the fields it derives from the
    model, derived again. For thirty-odd fields that costs about 2 ms, ten
    times what validating or representing one object does. With this mixin the
    class builds them on first use and every instance gets shallow copies,
    bound to itself as usual. A field keeps no per-request state (what it
    reads of a request, the context and ``partial``, it reads through its
    parent, and each copy and each copy's child has its own), and a mutable
    default is copied too. Only for serializers whose fields do not depend on
    the instance: no ``get_fields`` of their own reading the context, no
    settings changed after the first use.

    The copies are bound to a weak proxy of the serializer (a list field's
    child to one of its field): DRF binds them to the serializer itself,
    and the serializer holds them, a reference cycle that only the garbage
    collector frees. A quote left about 105 objects so, and at 200 requests a
    second the collections to find them paused a process for 15 ms about
    once a second. Now the serializer and its fields go as soon as the view
    drops it. A field asks its parent what it needs while the serializer
    works, which holds it alive then."""

    @cached_property
    def fields(self) -> BindingDict:
        fields = BindingDict(weakref.proxy(self))
        for key, value in self.get_fields().items():
            fields[key] = value
        return fields

    def bind(self, field_name: str, parent: serializers.BaseSerializer) -> None:
        """Bound as a list serializer's child, or nested in another serializer: weakly too."""
        proxy = parent if isinstance(parent, weakref.ProxyTypes) else weakref.proxy(parent)
        super().bind(field_name, proxy)  # type: ignore[misc]

    def get_fields(self) -> dict[str, serializers.Field]:
        cls = type(self)
        built = cls.__dict__.get("_fields_built_once")
        if built is None:
            built = super().get_fields()  # type: ignore[misc]  # the serializer's own, unbound
            cls._fields_built_once = built  # type: ignore[attr-defined]
        return {name: _field_copy(field) for name, field in built.items()}


@functools.cache
def _fields_built_once(serializer_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """``serializer_class`` with :class:`FieldsBuiltOnce` (a list's filters: no fields of their own)."""
    if issubclass(serializer_class, FieldsBuiltOnce):
        return serializer_class
    return type(serializer_class.__name__, (FieldsBuiltOnce, serializer_class), {"__module__": __name__})


def _field_copy(field: serializers.Field) -> serializers.Field:
    """A copy of an unbound field for one serializer instance (see :class:`FieldsBuiltOnce`)."""
    if isinstance(field, serializers.BaseSerializer):  # a nested serializer: DRF's own copy
        return copy.deepcopy(field)
    clone = field.__class__.__new__(field.__class__)  # copy.copy's result, at a third of its cost
    clone.__dict__.update(field.__dict__)
    if isinstance(field.default, (list, dict, set)):
        clone.default = copy.deepcopy(field.default)
    for attribute in ("child", "child_relation"):  # list and dict fields, many-related fields
        inner = getattr(field, attribute, None)
        if isinstance(inner, serializers.Field):  # bound to the field when it was built: bound to the copy now
            inner = _field_copy(inner)
            inner.parent = weakref.proxy(clone)
            setattr(clone, attribute, inner)
    return clone
