import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_reports_database_and_broker(client):
    response = client.get("/health/?format=json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert any("Database" in key for key in body)
    assert any("Broker" in key for key in body)


def test_schema_and_docs_are_served(client):
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200
