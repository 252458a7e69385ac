"""Token sign-in reads the caller, their organisation and the token in one query."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from core.authentication import TokenAuthentication
from tests import factories

pytestmark = pytest.mark.django_db


def test_the_token_user_and_organisation_are_read_in_one_query(django_assert_num_queries):
    buyer = factories.buyer()
    key = Token.objects.create(user=buyer).key
    with django_assert_num_queries(1):
        user, token = TokenAuthentication().authenticate_credentials(key)
        assert user.organisation.pk == buyer.organisation_id
    assert token.key == key


def test_an_unknown_token_or_an_inactive_user_is_refused():
    buyer = factories.buyer()
    key = Token.objects.create(user=buyer).key
    with pytest.raises(AuthenticationFailed, match="Invalid token"):
        TokenAuthentication().authenticate_credentials("0" * 40)
    buyer.is_active = False
    buyer.save()
    with pytest.raises(AuthenticationFailed, match="inactive"):
        TokenAuthentication().authenticate_credentials(key)


def test_the_api_answers_a_token_caller_and_refuses_a_wrong_token(api):
    buyer = factories.buyer()
    key = Token.objects.create(user=buyer).key
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/me").status_code == 200
    api.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert api.get("/api/v1/me").status_code == 401


def test_the_user_and_organisation_read_with_the_token_equal_the_orms_field_by_field():
    from marketplace.models import Organisation, User

    for user in (factories.buyer(), factories.provider(), factories.operator()):
        key = Token.objects.create(user=user).key
        read, token = TokenAuthentication().authenticate_credentials(key)
        stored = User.objects.get(pk=user.pk)
        assert type(read) is User
        for field in User._meta.concrete_fields:
            assert getattr(read, field.attname) == getattr(stored, field.attname), field.name
        organisation = Organisation.objects.get(pk=user.organisation_id)
        for field in Organisation._meta.concrete_fields:
            assert getattr(read.organisation, field.attname) == getattr(organisation, field.attname), field.name
        assert token.user is read and token.created == Token.objects.get(key=key).created
        assert read._state.adding is False


def test_a_user_without_an_organisation_signs_in_with_none(api):
    from marketplace.models import User

    user = User.objects.create_user(username="no-organisation", password="x-2026-pass")
    key = Token.objects.create(user=user).key
    read, _token = TokenAuthentication().authenticate_credentials(key)
    assert read.pk == user.pk and read.organisation is None
