"""A buyer never sees another organisation's data; providers touch only their own inventory."""

import pytest

from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_buyers_see_only_their_own_organisation(operator):
    alice, bob = factories.buyer(), factories.buyer(category="medical_institution")
    listed = client_for(alice).get("/api/v1/organisations").data["results"]
    assert [o["id"] for o in listed] == [alice.organisation.pk]
    assert client_for(alice).get(f"/api/v1/organisations/{bob.organisation.pk}").status_code == 404
    assert client_for(bob).get(f"/api/v1/organisations/{alice.organisation.pk}").status_code == 404
    everyone = client_for(operator).get("/api/v1/organisations?limit=100").data["results"]
    assert {alice.organisation.pk, bob.organisation.pk} <= {o["id"] for o in everyone}


def test_anonymous_callers_get_401_on_member_endpoints(api):
    for path in ("/api/v1/me", "/api/v1/organisations", "/api/v1/pools", "/api/v1/sites"):
        assert api.get(path).status_code == 401, path


def test_buyers_cannot_list_or_change_inventory(buyer, provider):
    site = factories.site(provider)
    pool = factories.pool(provider, site)
    client = client_for(buyer)
    assert client.patch(f"/api/v1/pools/{pool.pk}", {"node_count": 1}, format="json").status_code == 403
    assert client.post("/api/v1/sites", {}, format="json").status_code == 403


def test_a_provider_cannot_touch_another_providers_pool(provider):
    other = factories.provider()
    pool = factories.pool(other, factories.site(other))
    response = client_for(provider).patch(f"/api/v1/pools/{pool.pk}", {"node_count": 1}, format="json")
    assert response.status_code == 404
    pool.refresh_from_db()
    assert pool.node_count == 4


def test_a_provider_cannot_add_a_pool_to_another_providers_site(provider):
    other = factories.provider()
    site = factories.site(other)
    body = {"site": site.identifier, "name": "x", "node_count": 1, "cpu_model": "x", "cpu_cores_per_node": 1}
    body["memory_gb_per_node"] = 1
    response = client_for(provider).post("/api/v1/pools", body, format="json")
    assert response.status_code == 400
    assert response.data["field"] == "site"
