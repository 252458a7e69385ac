"""The API fuzzed against its own OpenAPI schema, on the live service.

The platform runs as real processes (gunicorn, a Celery worker with beat) on
PostgreSQL and Redis, loaded with the demo market, vouchers and activity.
Schemathesis reads ``/api/schema/`` from the running server and, for every
operation, sends the schema's examples, its boundary and negative cases
(coverage phase), generated requests (fuzzing phase) and chains of calls
(stateful phase), with real credentials:

- the provider agent API with an agent's ``Authorization: Agent`` token;
- every other operation as each role its view lets in (buyer, provider,
  operator; all three where any member or anyone may call it). What the
  other roles get (403) is the access matrix's business, not this test's.

Path parameters and references in bodies are drawn mostly from the ids and
identifiers of real objects the caller can see (jobs, leases, statements,
programmes …), so the requests reach the views' logic instead of stopping at
404. The coverage phase (boundary and negative cases, the same whoever
calls) runs once per operation; the other phases run for every role.
Usage samples must carry the agent's HMAC signature over their text, which
generated samples cannot: the fuzzer reaches their validation and the
signature check, and the agent end-to-end test records real ones.

Every response must pass these checks: no 5xx (``not_a_server_error``); the
status code, content type, headers and body as documented
(``status_code_conformance``, ``content_type_conformance``,
``response_headers_conformance``, ``response_schema_conformance``); input the
schema forbids is refused (``negative_data_rejection``,
``missing_required_header``); undocumented methods answer 405
(``unsupported_method``, ``allow_header_conformance``); authentication is
enforced where the schema requires it (``ignored_auth``); and resources
created or deleted behave so (``use_after_free``,
``ensure_resource_availability``).

``positive_data_acceptance`` is the one check not run: it expects every
request the schema allows to succeed, but the API refuses schema-valid input
for rules a JSON schema cannot state, with a 4xx naming the field — a wrong
password, a credit code's check character, a CPU-only job that names no CPU
architecture, a window in the past, a voucher application to a closed
programme.

Generation is deterministic (the same requests on every run, no example
database), so a failure in CI reproduces locally with the command printed."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.urls import resolve
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny, IsAuthenticated

from billing.models import Charge, SettlementStatement
from billing.settlement import statements_visible_to
from core.models import Notice
from marketplace import selectors as market_selectors
from marketplace.models import DeviceModel, Organisation, ResourcePool, Site, User
from scheduler import selectors as scheduler_selectors
from scheduler.execution import agent_create
from scheduler.models import Agent, Job, Lease, Offer
from tests.e2e.conftest import BIN, Platform
from vouchers import selectors as voucher_selectors
from vouchers.models import (
    ApplicationDocument,
    OrganisationRelation,
    RedemptionStatement,
    Voucher,
    VoucherApplication,
    VoucherProgramme,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
]
MAX_EXAMPLES = 6  # per operation and role in the fuzzing phase; the other phases add their own cases
REAL_OBJECT_SHARE = 0.85  # how often a path parameter or reference names a real object
AGENT_API = "^/api/v1/agent/"
DEMO_PROVIDER = "provider-24"  # its pools run the demo's leases, so its agent has leases to report on
ROLES = {"buyer": "buyer-sme", "provider": DEMO_PROVIDER, "operator": "operator"}  # role: the demo user
# The schemathesis command line, with one repair: CPython 3.11 before 3.11.8 can raise SystemError
# ("AST constructor recursion depth mismatch", python/cpython#106905) when Hypothesis parses a
# lambda's source deep in a stack to describe a filtered strategy. The description is only a repr,
# so a lambda whose source cannot be parsed is described as unknown instead.
SCHEMATHESIS = """
import sys
from hypothesis.internal import lambda_sources
describe = lambda_sources._lambda_description
def described(f, *args, **kwargs):
    try:
        return describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"
lambda_sources._lambda_description = described
from schemathesis.cli import schemathesis
sys.exit(schemathesis())
"""
RUN_DEADLINE = 240  # seconds for one role's run: far above its normal duration, so a hang fails instead of waiting


def _ids(queryset) -> list[int]:
    return sorted(queryset.values_list("pk", flat=True))


def _seen_by(user: User | None, everything, visible) -> list[int]:
    """Ids of the objects ``user`` can see (``visible(user)``), and three it cannot; all without a user."""
    if user is None:
        return _ids(everything) or [1]
    seen = _ids(visible(user))
    return seen + _ids(everything.exclude(pk__in=seen)[:3]) or [1]


def _dictionaries(agent_spare: Agent, user: User | None = None) -> dict[str, list]:
    """Values of real objects, by kind: mostly those ``user`` can see."""
    providers = Organisation.objects.filter(category="provider").exclude(identifier__isnull=True)
    site_identifiers = Site.objects.values_list("identifier", flat=True)
    identifiers = [
        *Organisation.objects.exclude(identifier__isnull=True).values_list("identifier", flat=True),
        *Site.objects.values_list("identifier", flat=True),
        *ResourcePool.objects.values_list("identifier", flat=True)[:40],
    ]
    return {
        "agents": [agent_spare.pk],
        "agent_leases": _ids(Lease.objects.filter(pool__site__provider__users__username=DEMO_PROVIDER)),
        "jobs": _seen_by(user, Job.objects.all(), scheduler_selectors.jobs_visible_to),
        "leases": _seen_by(user, Lease.objects.all(), scheduler_selectors.leases_visible_to),
        "notices": _seen_by(user, Notice.objects.all(), lambda u: Notice.objects.filter(organisation=u.organisation)),
        "offers": _ids(Offer.objects.all()),
        "relations": _seen_by(user, OrganisationRelation.objects.all(), voucher_selectors.relations_visible_to),
        "organisations": _seen_by(user, Organisation.objects.all(), market_selectors.organisations_visible_to),
        "pools": _seen_by(user, ResourcePool.objects.all(), market_selectors.pools_visible_to),
        "pool_refs": [str(pk) for pk in _ids(ResourcePool.objects.all())[:20]]
        + list(ResourcePool.objects.values_list("identifier", flat=True)[:20]),
        "sites": _seen_by(user, Site.objects.all(), market_selectors.sites_visible_to),
        "site_refs": [str(pk) for pk in _ids(Site.objects.all())] + list(site_identifiers),
        "providers": list(providers.values_list("identifier", flat=True)),
        "identifiers": [i for i in identifiers if i],
        "statements": _seen_by(user, SettlementStatement.objects.all(), statements_visible_to),
        "redemption_statements": _ids(RedemptionStatement.objects.all()) or [1],
        "applications": _seen_by(user, VoucherApplication.objects.all(), voucher_selectors.applications_visible_to),
        "documents": _ids(ApplicationDocument.objects.all()) or [1],
        "programmes": _ids(VoucherProgramme.objects.all()),
        "vouchers": _seen_by(user, Voucher.objects.all(), voucher_selectors.vouchers_visible_to),
        "charges": _ids(Charge.objects.all()) or [1],
        "devices": sorted(DeviceModel.objects.values_list("code", flat=True)),
    }


# (path regex, {parameter: dictionary}) — which real objects each operation's parameters name.
BINDINGS: list[tuple[str, dict[str, str]]] = [
    (r"^/api/v1/agent/leases/\{id\}", {"path.id": "agent_leases"}),
    (r"^/api/v1/agents/\{id\}", {"path.id": "agents"}),
    (r"^/api/v1/jobs/\{id\}", {"path.id": "jobs"}),
    (r"^/api/v1/leases/\{id\}", {"path.id": "leases"}),
    (r"^/api/v1/notices/\{id\}", {"path.id": "notices"}),
    (r"^/api/v1/offers/\{id\}", {"path.id": "offers"}),
    (r"^/api/v1/offers$", {"body.pool": "pool_refs"}),
    (r"^/api/v1/organisation-relations/\{id\}", {"path.id": "relations"}),
    (r"^/api/v1/organisation-relations$", {"body.organisation": "organisations", "body.other": "organisations"}),
    (r"^/api/v1/organisations/\{id\}", {"path.id": "organisations"}),
    (r"^/api/v1/pools/\{id\}", {"path.id": "pools"}),
    (r"^/api/v1/pools$", {"body.site": "site_refs", "body.cpu_model": "devices", "body.accelerator_model": "devices"}),
    (r"^/api/v1/sites/\{id\}", {"path.id": "sites"}),
    (r"^/api/v1/providers/\{identifier\}", {"path.identifier": "providers"}),
    (r"^/api/v1/resolve/\{identifier\}", {"path.identifier": "identifiers"}),
    (r"^/api/v1/statements/\{id\}", {"path.id": "statements"}),
    (r"^/api/v1/redemption-statements/\{id\}", {"path.id": "redemption_statements"}),
    (r"^/api/v1/voucher-applications/\{id\}", {"path.id": "applications"}),
    (r"^/api/v1/voucher-applications$", {"body.programme": "programmes"}),
    (r"^/api/v1/voucher-documents/\{id\}", {"path.id": "documents"}),
    (r"^/api/v1/voucher-programmes/\{id\}", {"path.id": "programmes"}),
    (r"^/api/v1/vouchers/\{id\}", {"path.id": "vouchers"}),
    (r"^/api/v1/charge-refunds$", {"body.charge": "charges"}),
]


def _toml(value: object) -> str:
    """A TOML value: strings, numbers and flat lists of them (JSON's notation is TOML's for these)."""
    return json.dumps(value, ensure_ascii=False)


def _pattern(operation_ids: Iterable[str]) -> str:
    return "^(" + "|".join(map(re.escape, sorted(operation_ids))) + ")$"


def _config(*, api_key: dict[str, str], dictionaries: dict[str, list], covered: Iterable[str] = ()) -> str:
    """The run's configuration: credentials, real objects for parameters, and no coverage phase again
    for the operations ``covered`` by an earlier role's run (its boundary and negative cases do
    not depend on the caller; the fuzzing and stateful phases run for every role)."""
    lines = ["[cache]", "enabled = false", "", "[auth.openapi]"]  # no state carried from one run to the next
    lines += [f"{scheme} = {{ api_key = {_toml(value)} }}" for scheme, value in api_key.items()]
    for name, values in dictionaries.items():
        lines += ["", f"[dictionaries.{name}]", f"values = {_toml(values)}"]
    for pattern, parameters in BINDINGS:
        bound = ", ".join(
            f'{_toml(key)} = {{ dictionary = "{name}", probability = {REAL_OBJECT_SHARE} }}'
            for key, name in parameters.items()
        )
        lines += ["", "[[operations]]", f"include-path-regex = {_toml(pattern)}", f"parameters = {{ {bound} }}"]
    if covered:
        lines += ["", "[[operations]]", f"include-operation-id-regex = {_toml(_pattern(covered))}"]
        lines += ["phases.coverage.enabled = false"]
    return "\n".join(lines) + "\n"


def _run(platform: Platform, tmp_path: Path, role: str, config: str, selection: Iterable[str]) -> int:
    config_file = tmp_path / f"schemathesis-{role}.toml"
    config_file.write_text(config)
    command = [
        str(BIN / "python"),
        "-c",
        SCHEMATHESIS,
        "--config-file",
        str(config_file),
        "--no-color",
        "run",
        f"{platform.url}/api/schema/",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "2",  # one generates while the other waits for the server
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / f"junit-{role}.xml"),
        *selection,
    ]
    started = time.monotonic()
    finished = subprocess.run(  # in the test's directory: schemathesis keeps its files where it runs
        command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_DEADLINE, check=False
    )
    output = finished.stdout + finished.stderr
    (tmp_path / f"schemathesis-{role}.log").write_text(output)
    print(f"----- schemathesis as {role}: exit {finished.returncode} in {time.monotonic() - started:.0f} s -----")
    print(output[-3000:] if finished.returncode == 0 else output)
    return finished.returncode


def _roles_allowed(path: str, method: str) -> frozenset[str]:
    """The roles whose users the operation's view lets in (its role permission classes)."""
    view_class = resolve(re.sub(r"\{[^}]+\}", "1", path)).func.view_class
    view = view_class()
    view.request = SimpleNamespace(method=method.upper())
    roles = set(ROLES)
    for permission in view.get_permissions():
        if not isinstance(permission, (AllowAny, IsAuthenticated)):
            roles &= permission.roles
    return frozenset(roles)


def _operations_by_role(url: str) -> dict[str, list[str]]:
    """Each role's operations (by operationId) outside the agent API: those its users may call."""
    with urllib.request.urlopen(f"{url}/api/schema/?format=json", timeout=30) as answer:  # noqa: S310
        schema = json.load(answer)
    found: dict[str, list[str]] = {role: [] for role in ROLES}
    for path, operations in schema["paths"].items():
        if re.match(AGENT_API, path):
            continue
        for method, operation in operations.items():
            for role in _roles_allowed(path, method):
                found[role].append(operation["operationId"])
    return found


@pytest.fixture
def unthrottled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service under the fuzzer without rate limits (set before it starts): thousands of requests
    a minute would otherwise be answered 429 before reaching the logic. Limits have tests of their own."""
    for scope in ("LOGIN", "REGISTER", "QUOTE", "SUBMIT"):
        monkeypatch.setenv(f"CX_THROTTLE_{scope}", "off")


@pytest.fixture
def demo_market() -> None:
    """The demo market with its vouchers and activity, loaded before the platform starts."""
    call_command("load_demo_market", verbosity=0)
    call_command("load_demo_vouchers", verbosity=0)
    call_command("load_demo_activity", verbosity=0)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    unthrottled, demo_market, platform: Platform, tmp_path: Path
):
    provider = User.objects.get(username=DEMO_PROVIDER)
    agent = agent_create(user=provider, name="fuzzed agent")
    spare = agent_create(user=provider, name="agent whose credential the fuzzer rotates and revokes").agent
    operations = _operations_by_role(platform.url)
    assert all(operations.values()), operations

    # The agent API first, with the agent's own token: the provider's run may rotate agents' credentials.
    config = _config(api_key={"agentToken": f"Agent {agent.token}"}, dictionaries=_dictionaries(spare))
    failed = ["agent"] if _run(platform, tmp_path, "agent", config, ["--include-path-regex", AGENT_API]) else []
    covered: set[str] = set()
    for role, username in ROLES.items():
        user = User.objects.get(username=username)
        token = Token.objects.get_or_create(user=user)[0].key
        dictionaries = _dictionaries(spare, user)
        config = _config(api_key={"tokenAuth": f"Token {token}"}, dictionaries=dictionaries, covered=covered)
        if _run(platform, tmp_path, role, config, ["--include-operation-id-regex", _pattern(operations[role])]):
            failed.append(role)
        covered |= set(operations[role])
    assert all(platform.alive(name) for name in platform.processes), "a platform process died under the fuzzer"
    assert not failed, f"schemathesis found failures as {', '.join(failed)} (its report is printed above)"
