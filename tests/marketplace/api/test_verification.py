import pytest

from core.models import AuditEntry
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_operator_verifies_a_pending_provider_and_it_is_audited(operator):
    provider = factories.provider(verified=False)
    org = provider.organisation
    response = client_for(operator).post(f"/api/v1/organisations/{org.pk}/verify", {"reason": "licence checked"})
    assert response.status_code == 200
    assert response.data["verification_status"] == "verified"
    entry = AuditEntry.objects.get(action="organisation.verification", entity_id=str(org.pk))
    assert (entry.from_state, entry.to_state, entry.actor_label) == ("pending", "verified", operator.username)
    assert entry.reason == "licence checked"


def test_rejection_needs_a_reason_and_the_provider_sees_it(operator):
    provider = factories.provider(verified=False)
    org = provider.organisation
    client = client_for(operator)
    assert client.post(f"/api/v1/organisations/{org.pk}/reject", {}).data["field"] == "reason"
    response = client.post(f"/api/v1/organisations/{org.pk}/reject", {"reason": "PUE figures not evidenced"})
    assert response.status_code == 200
    own = client_for(provider).get(f"/api/v1/organisations/{org.pk}")
    assert own.data["verification_status"] == "rejected"
    assert own.data["verification_reason"] == "PUE figures not evidenced"


def test_verifying_twice_is_a_conflict_that_states_the_current_state(operator):
    provider = factories.provider(verified=True)
    response = client_for(operator).post(f"/api/v1/organisations/{provider.organisation.pk}/verify", {})
    assert response.status_code == 409
    assert response.data["current"] == "verified"


def test_only_operators_verify(buyer):
    provider = factories.provider(verified=False)
    for user in (buyer, provider):
        response = client_for(user).post(f"/api/v1/organisations/{provider.organisation.pk}/verify", {})
        assert response.status_code == 403
    assert client_for(buyer).post(f"/api/v1/organisations/{buyer.organisation.pk}/verify", {}).status_code == 403


def test_an_unverified_providers_pools_are_invisible_to_the_market(buyer, operator):
    provider = factories.provider(verified=False)
    site = factories.site(provider)
    pool = factories.pool(provider, site)
    assert client_for(buyer).get(f"/api/v1/pools/{pool.pk}").status_code == 404
    assert pool.identifier not in [p["identifier"] for p in client_for(buyer).get("/api/v1/pools").data]
    assert client_for(provider).get(f"/api/v1/pools/{pool.pk}").status_code == 200
    assert client_for(operator).get(f"/api/v1/pools/{pool.pk}").status_code == 200
    client_for(operator).post(f"/api/v1/organisations/{provider.organisation.pk}/verify", {})
    assert client_for(buyer).get(f"/api/v1/pools/{pool.pk}").status_code == 200
