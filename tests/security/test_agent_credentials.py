"""Rotating an agent's credential replaces both halves: the old token no
longer signs in and samples signed with the old secret are refused."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from scheduler import services
from scheduler.models import Lease
from tests import factories
from tests.conftest import client_for
from tests.security.world import World, usage_body

pytestmark = pytest.mark.django_db


def agent_api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Agent {token}")
    return client


def test_after_rotation_only_the_new_token_and_secret_are_accepted():
    provider, _pools = factories.market(nodes=1)
    job = factories.submit(factories.buyer())
    services.cycle_run()
    lease = Lease.objects.get(job=job)
    owner = client_for(provider)
    issued = owner.post("/api/v1/agents", {"name": "node-1"}).json()
    old = agent_api(issued["token"])
    assert old.post(f"/api/v1/agent/leases/{lease.pk}/ack").status_code == 200

    rotated = owner.post(f"/api/v1/agents/{issued['id']}/rotate").json()
    assert rotated["token"] != issued["token"] and rotated["secret"] != issued["secret"]
    assert old.post(f"/api/v1/agent/leases/{lease.pk}/heartbeat").status_code == 401
    new = agent_api(rotated["token"])
    world = World(objects={"lease_run": lease}, secrets={"agent": issued["secret"]})
    stale = new.post(f"/api/v1/agent/leases/{lease.pk}/usage", usage_body(world), format="json")
    assert stale.status_code == 400 and stale.json()["field"] == "signature"
    world.secrets["agent"] = rotated["secret"]
    assert new.post(f"/api/v1/agent/leases/{lease.pk}/usage", usage_body(world), format="json").status_code == 201

    assert owner.post(f"/api/v1/agents/{issued['id']}/revoke").status_code == 200
    assert new.post(f"/api/v1/agent/leases/{lease.pk}/heartbeat").status_code == 401
    assert owner.post(f"/api/v1/agents/{issued['id']}/rotate").status_code == 409  # a revoked agent stays revoked
