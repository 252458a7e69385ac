import pytest

from core.models import AuditEntry
from marketplace.models import Organisation, User
from tests import factories

pytestmark = pytest.mark.django_db


def registration(**overrides):
    body = {
        "name": "Qiming Vision Technology Co., Ltd.",
        "credit_code": factories.credit_code(),
        "category": "enterprise",
        "is_sme": True,
        "city": "beijing",
        "username": "qiming-admin",
        "password": "correct-horse-battery-staple",
        "email": "ops@qiming.example",
    }
    body.update(overrides)
    return body


def test_a_buyer_registers_and_uses_its_token(api):
    response = api.post("/api/v1/auth/register", registration(), format="json")
    assert response.status_code == 201, response.data
    assert response.data["organisation"]["verification_status"] == "verified"
    assert response.data["user"]["role"] == "buyer"
    api.credentials(HTTP_AUTHORIZATION=f"Token {response.data['token']}")
    me = api.get("/api/v1/me")
    assert me.status_code == 200
    assert me.data["organisation"]["name"] == "Qiming Vision Technology Co., Ltd."


def test_token_endpoint_exchanges_password_for_token(api):
    api.post("/api/v1/auth/register", registration(), format="json")
    ok = api.post("/api/v1/auth/token", {"username": "qiming-admin", "password": "correct-horse-battery-staple"})
    assert ok.status_code == 200 and len(ok.data["token"]) == 40
    wrong = api.post("/api/v1/auth/token", {"username": "qiming-admin", "password": "nope"})
    assert wrong.status_code == 400
    assert wrong.data["field"] == "password"


def test_wrong_check_character_is_refused_naming_the_field(api):
    code = factories.credit_code()
    typo = code[:-1] + ("0" if code[-1] != "0" else "1")
    response = api.post("/api/v1/auth/register", registration(credit_code=typo), format="json")
    assert response.status_code == 400
    assert response.data["field"] == "credit_code"
    assert "check character" in response.data["detail"]
    assert not Organisation.objects.exists()


def test_wrong_length_credit_code_says_how_long(api):
    response = api.post("/api/v1/auth/register", registration(credit_code="91110108MA01"), format="json")
    assert response.status_code == 400
    assert response.data["field"] == "credit_code"
    assert "18 characters" in response.data["detail"]


def test_a_credit_code_registers_once(api):
    code = factories.credit_code()
    assert api.post("/api/v1/auth/register", registration(credit_code=code), format="json").status_code == 201
    again = api.post("/api/v1/auth/register", registration(credit_code=code, username="other"), format="json")
    assert again.status_code == 409
    assert again.data["field"] == "credit_code"


def test_a_weak_password_leaves_nothing_half_written(api):
    response = api.post("/api/v1/auth/register", registration(password="123"), format="json")
    assert response.status_code == 400
    assert response.data["field"] == "password"
    assert not Organisation.objects.exists()
    assert not User.objects.exists()


def test_a_provider_must_name_its_hub_and_starts_pending(api):
    missing = api.post("/api/v1/auth/register", registration(category="provider", is_sme=False), format="json")
    assert missing.status_code == 400
    assert missing.data["field"] == "home_hub"
    response = api.post(
        "/api/v1/auth/register",
        registration(category="provider", is_sme=False, home_hub="NX", city="zhongwei"),
        format="json",
    )
    assert response.status_code == 201
    organisation = response.data["organisation"]
    assert organisation["verification_status"] == "pending"
    assert organisation["identifier"].startswith("CX-NX-")
    assert response.data["user"]["role"] == "provider"
    assert AuditEntry.objects.filter(action="organisation.registered").count() == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"category": "bank"}, "category"),
        ({"city": "atlantis"}, "city"),
        ({"category": "university", "is_sme": True}, "is_sme"),
        ({"home_hub": "GZ"}, "home_hub"),
        ({"email": "not-an-email"}, "email"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_fields_get_a_400_naming_them(api, overrides, field):
    response = api.post("/api/v1/auth/register", registration(**overrides), format="json")
    assert response.status_code == 400
    assert response.data["field"] == field
    assert response.data["detail"]
