import pytest

from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_resolve_names_pool_site_and_provider(api, provider):
    site = factories.site(provider)
    pool = factories.pool(provider, site)
    body = api.get(f"/api/v1/resolve/{pool.identifier}").data
    assert body["entity"] == "pool"
    assert body["identifier"] == pool.identifier
    assert body["site_identifier"] == site.identifier
    assert body["provider_identifier"] == provider.organisation.identifier
    assert body["hub"] == "GZ"
    site_body = api.get(f"/api/v1/resolve/{site.identifier.lower()}").data
    assert site_body["entity"] == "site" and site_body["pools"] == [pool.identifier]
    provider_body = api.get(f"/api/v1/resolve/{provider.organisation.identifier}").data
    assert provider_body["entity"] == "provider" and provider_body["sites"] == [site.identifier]


def test_a_typo_is_a_400_from_the_check_characters_not_a_404(api, provider):
    pool = factories.pool(provider, factories.site(provider))
    text = pool.identifier
    head, serial, check = text.rsplit("-", 2)
    swapped = f"{head}-{serial[:2]}{serial[3]}{serial[2]}-{check}"
    assert swapped != text
    response = api.get(f"/api/v1/resolve/{swapped}")
    assert response.status_code == 400
    assert response.data["field"] == "identifier"
    assert "typo" in response.data["detail"]


def test_a_valid_but_unassigned_identifier_is_a_404(api, provider):
    from marketplace.domain.identifiers import pool_identifier

    response = api.get(f"/api/v1/resolve/{pool_identifier('GZ', 999, 9, 9)}")
    assert response.status_code == 404


def test_identifiers_never_change_when_attributes_change(provider):
    site = factories.site(provider)
    pool = factories.pool(provider, site)
    client = client_for(provider)
    response = client.patch(f"/api/v1/pools/{pool.pk}", {"node_count": 32, "name": "renamed"}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["identifier"] == pool.identifier
    assert response.data["node_count"] == 32
    site_response = client.patch(f"/api/v1/sites/{site.pk}", {"pue": "1.12"}, format="json")
    assert site_response.data["identifier"] == site.identifier
    assert client.get(f"/api/v1/resolve/{pool.identifier}").data["name"] == "renamed"


def test_pools_of_a_pending_provider_do_not_resolve_for_others(api):
    provider = factories.provider(verified=False)
    pool = factories.pool(provider, factories.site(provider))
    assert api.get(f"/api/v1/resolve/{pool.identifier}").status_code == 404
    assert client_for(provider).get(f"/api/v1/resolve/{pool.identifier}").status_code == 200
