"""The WSGI application as served: Django's, releasing each request's objects once its response is closed.

Django and DRF tie a request's objects into reference cycles: DRF's request
holds the view (its parser context) and the view holds it back, a view that
answers GET holds its own ``get`` method as ``head``, the response holds its
renderer context, which holds the response, the view and DRF's request;
Django's request is held by its own lazy user and message storage.
Reference counting cannot free a cycle, so a quote left about 100 more
objects for the garbage collector, and at 200 requests a second the young
collections that found them paused a process for about 15 ms every second
(see :mod:`core.heap`). Once the server has sent the response and closed it,
nothing reads these objects again: :func:`release` empties the objects those
cycles run through, and the rest go by reference counting as the request
ends."""

from __future__ import annotations

import functools
from typing import Any

from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.http import HttpResponseBase


class Handler(WSGIHandler):
    """Django's WSGI handler; each response, when closed, releases its request's objects (:func:`release`)."""

    def get_response(self, request: WSGIRequest) -> HttpResponseBase:
        response = super().get_response(request)
        response._resource_closers.append(functools.partial(release, request, response))  # cleared by close()
        return response


def release(request: WSGIRequest, response: HttpResponseBase) -> None:
    """Break the reference cycles of a finished request: DRF's renderer context (the view, DRF's request and
    the response itself), the view, DRF's request and Django's. Only once the response is closed: nothing reads them
    after."""
    context: dict[str, Any] | None = getattr(response, "renderer_context", None)
    if context:
        for name in ("view", "request"):
            if context.get(name) is not None:
                context[name].__dict__.clear()
        context.clear()
    request.__dict__.clear()
