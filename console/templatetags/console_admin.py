"""Template tags of the operator console."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from console import selectors
from console.admin_support import is_operator
from console.views import REVIEW_QUEUES

register = template.Library()


@register.simple_tag(takes_context=True)
def review_queues(context: dict[str, Any]) -> list[dict[str, Any]]:
    """The operator's review queues with their counts, oldest ages and filtered lists."""
    request = context.get("request")
    if request is None or not is_operator(request.user):
        return []
    queues = []
    for queue in selectors.review_backlog(now=timezone.now())["queues"]:
        name, query = REVIEW_QUEUES[queue["queue"]]
        try:
            url = f"{reverse(name)}?{query}"
        except NoReverseMatch:
            continue
        queues.append({**queue, "url": url})
    return queues
