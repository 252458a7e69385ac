"""Who may call what: every endpoint of the service × every kind of caller,
with the status each one gets.

The endpoints are enumerated from the URL resolver, so an endpoint added
without a row here fails ``test_every_endpoint_has_a_row``. Each row runs
against one market (``world.build``) inside a savepoint rolled back after
the request, so every request sees the same state.

How the service answers (the conventions the rows check):

* no credentials, or credentials of the wrong kind (an agent token on a
  user endpoint, a user token on the agent API): 401;
* a signed-in caller whose role may not use the endpoint at all (a buyer
  on a provider's or an operator's endpoint): 403, whatever object is named;
* a caller of the right role naming another organisation's object (buyer B
  on buyer A's job, provider B on provider A's offer, agent B on A's lease):
  404, exactly as for an object that does not exist: whether it exists is
  not their business. Objects that are public on the market (verified
  providers' sites, pools, offers, profiles; open voucher programmes) are
  readable by every member;
* another organisation's object named in a request body (a pool to offer, a
  site for a pool): 400 naming the field, as for an unknown one; a related
  party declared for two other organisations: 403;
* the HTML pages send anonymous visitors to the sign-in page (302) and
  answer 403 to a member of the wrong role; the operator console (/admin/)
  sends everyone but operators to its sign-in page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from console.admin_support import OperatorAdmin
from tests import factories
from tests.security import world as world_module
from tests.security.world import ACTORS, World

# Columns of ``expect``, in this order; the agents' columns may be left out:
# they then expect what an anonymous caller gets.
COLUMNS = ("anon", "buyer", "provider", "operator", "buyer_b", "provider_b", "agent", "agent_b", "revoked")


@dataclass(frozen=True)
class Row:
    method: str
    route: str
    expect: str
    arg: str = ""  # the World object (or literal) the URL names
    body: Callable[[World], Any] | None = None
    multipart: bool = False
    visible: tuple[str, str] | None = None  # (object, actors who see it): nobody else's answer may contain it

    def statuses(self) -> dict[str, int]:
        codes = [int(code) for code in self.expect.split()]
        assert len(codes) in (6, 9), f"{self.method} {self.route}: 6 or 9 statuses"
        if len(codes) == 6:
            codes += [codes[0]] * 3
        return dict(zip(COLUMNS, codes, strict=True))

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.route)

    def __str__(self) -> str:
        return f"{self.method} /{self.route}" + (f" [{self.arg}]" if self.arg else "")


def job_body(w: World) -> dict[str, Any]:
    return factories.job_values(name="matrix submission")


def site_body(w: World) -> dict[str, Any]:
    return {
        "name": "Matrix DC",
        "hub": "GZ",
        "city": "guian",
        "kind": "intelligent",
        "pue": "1.25",
        "green_share": "0.5",
    }


def pool_body(w: World) -> dict[str, Any]:
    return {
        "site": str(w.site_a.pk),
        "name": "matrix pool",
        "node_count": 2,
        "cpu_model": w.pool_a.cpu_model.code,
        "cpu_cores_per_node": 64,
        "memory_gb_per_node": 512,
    }


def period_body(w: World) -> dict[str, str]:
    now = timezone.now()
    return {"start": (now - timedelta(hours=30)).isoformat(), "end": (now - timedelta(hours=29)).isoformat()}


def programme_body(w: World) -> dict[str, Any]:
    now = timezone.now()
    return {
        "name": "Matrix programme",
        "authority": "Matrix bureau",
        "ratio_rules": [{"ratio": "0.2"}],
        "application_opens": now.isoformat(),
        "application_closes": (now + timedelta(days=10)).isoformat(),
        "validity_days": 30,
        "budget": "1000.00",
        "funding_reference": "matrix-deposit",
    }


def register_body(w: World) -> dict[str, Any]:
    return {
        "name": "Matrix Lab",
        "credit_code": factories.credit_code(),
        "category": "university",
        "city": "beijing",
        "username": "matrix-lab",
        "password": factories.PASSWORD,
    }


def document_body(w: World) -> dict[str, Any]:
    return {"file": SimpleUploadedFile("plan.txt", b"research plan", content_type="text/plain")}


def reason(w: World) -> dict[str, str]:
    return {"reason": "matrix"}


API = "api/v1/"

#                                                                anon buy  prov op   buyB provB [agent agentB revoked]
ROWS: tuple[Row, ...] = (
    Row("GET", "health/", "200 200 200 200 200 200"),
    Row("GET", "api/schema/", "200 200 200 200 200 200"),
    Row("GET", "api/docs/", "200 200 200 200 200 200"),
    # --- identity and organisations ---
    Row("POST", API + "auth/register", "201 201 201 201 201 201", body=register_body),
    Row(
        "POST",
        API + "auth/token",
        "200 200 200 200 200 200",
        body=lambda w: {"username": w.users["buyer"].username, "password": factories.PASSWORD},
    ),
    Row("GET", API + "me", "401 200 200 200 200 200"),
    Row("GET", API + "organisations", "401 200 200 200 200 200", visible=("buyer_org", "buyer operator")),
    Row("GET", API + "organisations/<int:pk>", "401 200 404 200 404 404", arg="buyer_org"),
    Row("GET", API + "organisations/<int:pk>", "401 404 200 200 404 404", arg="provider_org"),
    Row("POST", API + "organisations/<int:pk>/verify", "401 403 403 200 403 403", arg="pending_org", body=reason),
    Row("POST", API + "organisations/<int:pk>/reject", "401 403 403 200 403 403", arg="pending_org", body=reason),
    Row("GET", API + "hubs", "200 200 200 200 200 200"),
    Row("GET", API + "devices", "200 200 200 200 200 200"),
    # --- sites and pools: a verified provider's are the market's; a pending provider's its own ---
    Row("GET", API + "sites", "401 200 200 200 200 200", visible=("site_hidden", "operator")),
    Row("POST", API + "sites", "401 403 201 403 403 201", body=site_body),
    Row("GET", API + "sites/<int:pk>", "401 200 200 200 200 200", arg="site_a"),
    Row("GET", API + "sites/<int:pk>", "401 404 404 200 404 404", arg="site_hidden"),
    Row("PATCH", API + "sites/<int:pk>", "401 403 200 403 403 404", arg="site_a", body=lambda w: {"pue": "1.3"}),
    Row("GET", API + "pools", "401 200 200 200 200 200", visible=("pool_hidden", "operator")),
    Row("POST", API + "pools", "401 403 201 403 403 400", body=pool_body),
    Row("GET", API + "pools/<int:pk>", "401 200 200 200 200 200", arg="pool_a"),
    Row("GET", API + "pools/<int:pk>", "401 404 404 200 404 404", arg="pool_hidden"),
    Row("PATCH", API + "pools/<int:pk>", "401 403 200 403 403 404", arg="pool_a", body=lambda w: {"name": "renamed"}),
    Row(
        "POST",
        API + "pools/<int:pk>/benchmark",
        "401 403 403 200 403 403",
        arg="pool_a",
        body=lambda w: {"factor": "0.950"},
    ),
    Row("GET", API + "resolve/<str:identifier>", "200 200 200 200 200 200", arg="pool_a"),
    Row("GET", API + "resolve/<str:identifier>", "404 404 404 200 404 404", arg="pool_hidden"),
    Row("GET", API + "inventory", "200 200 200 200 200 200"),
    # --- offers, jobs, leases, quotes ---
    Row(
        "GET",
        API + "offers",
        "401 200 200 200 200 200",
        visible=("offer_a", "buyer provider operator buyer_b provider_b"),
    ),
    Row(
        "POST",
        API + "offers",
        "401 403 201 403 403 400",
        body=lambda w: {"pool": str(w.pool_a2.pk), "nodes_offered": 1, "list_price": "0.03"},
    ),
    Row("POST", API + "offers/<int:pk>/withdraw", "401 403 200 403 403 404", arg="offer_a"),
    Row("GET", API + "jobs", "401 200 200 200 200 200", visible=("job_sched", "buyer operator")),
    Row("POST", API + "jobs", "401 201 403 403 201 403", body=job_body),
    Row("GET", API + "jobs/<int:pk>", "401 200 404 200 404 404", arg="job_sched"),
    Row("GET", API + "trace/<int:pk>", "401 200 200 200 404 404", arg="job_done"),
    Row("POST", API + "jobs/<int:pk>/cancel", "401 200 403 403 404 403", arg="job_sched", body=reason),
    Row("GET", API + "leases", "401 200 200 200 200 200", visible=("lease_run", "buyer provider operator")),
    Row("POST", API + "quotes", "401 200 403 403 200 403", body=job_body),
    Row(
        "POST",
        API + "leases/<int:pk>/rating",
        "401 201 403 403 404 403",
        arg="lease_done",
        body=lambda w: {"score": 5, "comment": "fast"},
    ),
    Row("GET", API + "providers/<str:identifier>/profile", "200 200 200 200 200 200", arg="provider_org"),
    Row("GET", API + "providers/<str:identifier>/profile", "404 404 404 404 404 404", arg="pending_org"),
    # --- agents: providers manage them; the agent API takes only agent credentials ---
    Row("GET", API + "agents", "401 403 200 403 403 200", visible=("agent_a", "provider")),
    Row("POST", API + "agents", "401 403 201 403 403 201", body=lambda w: {"name": "node-x"}),
    Row("POST", API + "agents/<int:pk>/rotate", "401 403 200 403 403 404", arg="agent_a"),
    Row("POST", API + "agents/<int:pk>/revoke", "401 403 200 403 403 404", arg="agent_a"),
    Row("GET", API + "agent/leases", "401 401 401 401 401 401 200 200 401", visible=("lease_run", "agent")),
    Row("POST", API + "agent/leases/<int:pk>/ack", "401 401 401 401 401 401 200 404 401", arg="lease_sched"),
    Row("POST", API + "agent/leases/<int:pk>/heartbeat", "401 401 401 401 401 401 200 404 401", arg="lease_run"),
    Row(
        "POST",
        API + "agent/leases/<int:pk>/progress",
        "401 401 401 401 401 401 200 404 401",
        arg="lease_run",
        body=lambda w: {"percent": "50", "message": "half"},
    ),
    Row(
        "POST",
        API + "agent/leases/<int:pk>/usage",
        "401 401 401 401 401 401 201 404 401",
        arg="lease_run",
        body=world_module.usage_body,
    ),
    Row(
        "POST",
        API + "agent/leases/<int:pk>/complete",
        "401 401 401 401 401 401 200 404 401",
        arg="lease_run",
        body=lambda w: {"exit_code": 0},
    ),
    # --- money ---
    Row("GET", API + "statements", "401 200 200 200 200 200", visible=("statement_provider_a", "provider operator")),
    Row("GET", API + "statements/<int:pk>", "401 404 200 200 404 404", arg="statement_provider_a"),
    Row("GET", API + "statements/<int:pk>", "401 200 404 200 404 404", arg="statement_buyer_a"),
    Row(
        "POST", API + "statements/<int:pk>/approve", "401 403 403 200 403 403", arg="statement_provider_a", body=reason
    ),
    Row(
        "POST",
        API + "statements/<int:pk>/dispute",
        "401 403 403 200 403 403",
        arg="statement_provider_a",
        body=lambda w: {"reason": "meter check", "amount": "0.01"},
    ),
    Row(
        "POST",
        API + "statements/<int:pk>/adjust",
        "401 403 403 200 403 403",
        arg="statement_provider_a",
        body=lambda w: {"reason": "goodwill", "amount": "1.00"},
    ),
    Row("GET", API + "statements/<int:pk>/export.csv", "401 404 200 200 404 404", arg="statement_provider_a"),
    Row("GET", API + "statements/<int:pk>/export.pdf", "401 200 404 200 404 404", arg="statement_buyer_a"),
    Row("POST", API + "settlement/close", "401 403 403 200 403 403", body=period_body),
    Row("GET", API + "wallet", "401 200 200 200 200 200"),
    Row(
        "POST",
        API + "wallet/top-ups",
        "401 202 403 403 202 403",
        body=lambda w: {"amount": "10.00", "reference": "matrix-payment"},
    ),
    Row("GET", API + "wallet/top-ups", "401 200 200 200 200 200", visible=("payment_a", "buyer operator")),
    Row("POST", API + "wallet/top-ups/<int:pk>/confirm", "401 403 403 200 403 403", arg="payment_a", body=reason),
    Row("POST", API + "wallet/top-ups/<int:pk>/reject", "401 403 403 200 403 403", arg="payment_a", body=reason),
    # --- vouchers ---
    Row("GET", API + "voucher-programmes", "200 200 200 200 200 200"),
    Row("POST", API + "voucher-programmes", "401 403 403 201 403 403", body=programme_body),
    Row("GET", API + "voucher-programmes/<int:pk>", "200 200 200 200 200 200", arg="programme"),
    Row(
        "POST",
        API + "voucher-programmes/<int:pk>/fund",
        "401 403 403 200 403 403",
        arg="programme",
        body=lambda w: {"amount": "100.00", "reference": "matrix-top-up"},
    ),
    Row("POST", API + "voucher-programmes/<int:pk>/close", "401 403 403 200 403 403", arg="programme", body=reason),
    Row("GET", API + "voucher-programmes/<int:pk>/report", "401 403 403 200 403 403", arg="programme"),
    Row("GET", API + "voucher-programmes/<int:pk>/report.csv", "401 403 403 200 403 403", arg="programme"),
    Row("GET", API + "voucher-eligibility", "401 200 403 403 200 403"),
    Row("GET", API + "voucher-applications", "401 200 200 200 200 200", visible=("application_a", "buyer operator")),
    Row(
        "POST",
        API + "voucher-applications",
        "401 201 403 403 201 403",
        body=lambda w: {"programme": w.programme_3.pk, "requested_amount": "100.00", "intended_use": "rendering"},
    ),
    Row("GET", API + "voucher-applications/<int:pk>", "401 200 404 200 404 404", arg="application_a"),
    Row(
        "POST",
        API + "voucher-applications/<int:pk>/approve",
        "401 403 403 201 403 403",
        arg="application_a",
        body=reason,
    ),
    Row(
        "POST",
        API + "voucher-applications/<int:pk>/reject",
        "401 403 403 200 403 403",
        arg="application_a",
        body=reason,
    ),
    Row("POST", API + "voucher-applications/<int:pk>/withdraw", "401 200 404 404 404 404", arg="application_a"),
    Row("GET", API + "voucher-applications/<int:pk>/documents", "401 200 404 200 404 404", arg="application_a"),
    Row(
        "POST",
        API + "voucher-applications/<int:pk>/documents",
        "401 201 404 404 404 404",
        arg="application_a",
        body=document_body,
        multipart=True,
    ),
    Row("GET", API + "voucher-documents/<int:pk>", "401 200 404 200 404 404", arg="document_a"),
    Row("GET", API + "vouchers", "401 200 200 200 200 200", visible=("voucher_a", "buyer operator")),
    Row("GET", API + "vouchers/<int:pk>", "401 200 404 200 404 404", arg="voucher_a"),
    Row("GET", API + "jobs/<int:pk>/vouchers", "401 200 403 403 404 403", arg="job_sched"),
    Row(
        "PUT",
        API + "jobs/<int:pk>/vouchers",
        "401 200 403 403 404 403",
        arg="job_sched",
        body=lambda w: {"use_vouchers": True},
    ),
    Row("POST", API + "voucher-quotes", "401 200 403 403 200 403", body=job_body),
    Row("GET", API + "redemption-statements", "401 403 403 200 403 403"),
    Row("GET", API + "redemption-statements/<int:pk>", "401 403 403 200 403 403", arg="redemption_statement"),
    Row(
        "POST",
        API + "redemption-statements/<int:pk>/approve",
        "401 403 403 200 403 403",
        arg="redemption_statement",
        body=reason,
    ),
    Row(
        "POST",
        API + "redemption-statements/<int:pk>/reject",
        "401 403 403 200 403 403",
        arg="redemption_statement",
        body=reason,
    ),
    Row("GET", API + "voucher-dashboard", "401 403 403 200 403 403"),
    Row(
        "GET",
        API + "organisation-relations",
        "401 200 200 200 200 200",
        visible=("relation_a", "buyer operator"),
    ),
    Row(
        "POST",
        API + "organisation-relations",
        "401 201 403 201 403 201",
        body=lambda w: {
            "organisation": w.buyer_org.pk,
            "other": w.users["provider_b"].organisation_id,
            "relation_kind": "shareholding",
        },
    ),
    Row(
        "POST", API + "organisation-relations/<int:pk>/remove", "401 403 403 204 403 403", arg="relation_a", body=reason
    ),
    Row(
        "POST",
        API + "charge-refunds",
        "401 403 403 201 403 403",
        body=lambda w: {"charge": w.charge_a.pk, "amount": "0.01", "reason": "meter", "reference": "matrix-refund"},
    ),
    Row("GET", API + "notices", "401 200 200 200 200 200", visible=("notice_a", "buyer")),
    Row("POST", API + "notices/<int:pk>/read", "401 200 404 404 404 404", arg="notice_a"),
    # --- pages ---
    Row("GET", "", "302 302 302 302 302 302"),
    Row("GET", "accounts/login/", "200 302 302 302 302 302"),
    Row(
        "POST",
        "accounts/login/",
        "302 302 302 302 302 302",
        body=lambda w: {"username": w.users["buyer"].username, "password": factories.PASSWORD},
    ),
    Row("PUT", "accounts/login/", "200 302 302 302 302 302"),
    Row("POST", "accounts/logout/", "302 302 302 302 302 302"),
    Row("GET", "dashboard/", "302 200 200 200 200 200"),
    Row("GET", "dashboard/data.json", "302 200 200 200 200 200"),
    Row("GET", "my/jobs/", "302 200 403 403 200 403", visible=("job_sched", "buyer")),
    Row("GET", "my/pools/", "302 403 200 403 403 200", visible=("pool_a", "provider")),
    Row("GET", "admin/login/", "302 302 302 302 302 302"),
    Row("GET", "review/<slug:queue>/", "302 403 403 302 403 403", arg="=providers"),
)


# --- enumerating the service's endpoints -----------------------------------------------------------------------------


def endpoints() -> Iterator[tuple[str, str]]:
    """(method, route) of every view the URL resolver serves, except the operator console's (tested below)."""

    def walk(patterns: list, prefix: str = "", namespace: str | None = None) -> Iterator[tuple[str, Any, str | None]]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), pattern.namespace or namespace)
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern.callback, namespace

    for route, callback, namespace in walk(get_resolver().url_patterns):
        if namespace == "admin":
            continue
        view = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
        assert view is not None, f"/{route}: a function view; give it a row and teach this test its methods"
        initkwargs = getattr(callback, "view_initkwargs", None) or getattr(callback, "initkwargs", None) or {}
        for method in initkwargs.get("http_method_names", view.http_method_names):
            if method not in ("options", "head", "trace") and hasattr(view, method):
                yield method.upper(), route


def test_every_endpoint_has_a_row():
    served = set(endpoints())
    rows = {row.key for row in ROWS}
    assert sorted(served - rows) == [], "endpoints without an expectation in ROWS"
    assert sorted(rows - served) == [], "rows for endpoints the service no longer has"


# --- running the matrix ----------------------------------------------------------------------------------------------


def url_of(row: Row, w: World) -> str:
    route = row.route
    if row.arg.startswith("="):
        value = row.arg[1:]
    elif "<str:identifier>" in route:
        value = getattr(w, row.arg).identifier
    elif row.arg:
        value = str(getattr(w, row.arg).pk)
    else:
        value = ""
    for converter in ("<int:pk>", "<str:identifier>", "<slug:queue>"):
        route = route.replace(converter, value)
    return "/" + route


def client_of(actor: str, w: World, page: bool) -> Client:
    if page:
        client = Client()
        for name, value in w.sessions.get(actor, {}).items():
            client.cookies[name] = value
        return client
    client = APIClient()
    if actor in w.tokens:
        client.credentials(HTTP_AUTHORIZATION=w.tokens[actor])
    return client


def ids_in(response: Any) -> set[int]:
    if "json" not in response.get("Content-Type", ""):
        return set()
    body = json.loads(response.content or b"null")
    items = body.get("results", []) if isinstance(body, dict) else body
    return {item["id"] for item in items or [] if isinstance(item, dict) and "id" in item}


def shows(response: Any, obj: Any) -> bool:
    if "text/html" in response.get("Content-Type", ""):
        return str(obj.name) in response.content.decode()
    return obj.pk in ids_in(response)


def call(row: Row, actor: str, w: World) -> tuple[int, bool | None, str]:
    """The status ``actor`` gets, whether the answer shows ``row.visible``'s object, and an excerpt."""
    page = not row.route.startswith(API)
    client = client_of(actor, w, page)
    body = row.body(w) if row.body else None
    url = url_of(row, w)
    method = getattr(client, row.method.lower())
    with transaction.atomic():
        cache.clear()
        try:
            if row.multipart:
                response = method(url, body, format="multipart")
            elif page:
                response = method(url, body or {})
            else:
                response = method(url, body, format="json")
        except Exception as exc:  # a 500: reported with the row, never hidden
            transaction.set_rollback(True)
            return 500, None, f"{type(exc).__name__}: {exc}"
        transaction.set_rollback(True)
    seen = shows(response, getattr(w, row.visible[0])) if row.visible and response.status_code == 200 else None
    excerpt = response.content[:200].decode(errors="replace") if response.status_code >= 400 else ""
    return response.status_code, seen, excerpt


@pytest.fixture
def world(db) -> World:
    return world_module.build()


def test_every_caller_gets_the_expected_status_on_every_endpoint(world):
    problems = []
    for row in ROWS:
        expected = row.statuses()
        viewers = set(row.visible[1].split()) if row.visible else set()
        for actor in ACTORS:
            status, seen, excerpt = call(row, actor, world)
            if status != expected[actor]:
                problems.append(f"{row} as {actor}: {status}, expected {expected[actor]} {excerpt}")
            elif seen is not None and seen != (actor in viewers):
                verb = "misses" if actor in viewers else "shows"
                problems.append(f"{row} as {actor}: the answer {verb} {row.visible[0]}")
    assert problems == [], "\n" + "\n".join(problems)


def test_the_operator_console_is_for_operators_only(world):
    """/admin/ and every screen of it: anonymous visitors and members who are
    not operators are sent to its sign-in page; operators see the operators'
    screens, and get 403 on the superusers' own (accounts, API tokens, groups)."""
    urls = {reverse("admin:index"): 200}
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        status = 200 if isinstance(model_admin, OperatorAdmin) else 403
        urls[reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")] = status
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            urls[reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk])] = status
    assert len(urls) > 30
    problems = []
    for url, operator_status in urls.items():
        for actor in ("anon", "buyer", "provider", "buyer_b", "provider_b", "operator"):
            response = client_of(actor, world, page=True).get(url)
            if actor == "operator":
                if response.status_code != operator_status:
                    problems.append(f"{url} as operator: {response.status_code}, expected {operator_status}")
            elif response.status_code != 302 or not response["Location"].startswith("/admin/login/"):
                problems.append(f"{url} as {actor}: {response.status_code} {response.get('Location', '')}")
    assert problems == [], "\n" + "\n".join(problems)
