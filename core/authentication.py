"""Token authentication that reads the caller's token, user and organisation
in one plain statement."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections, router
from django.db.models import Model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token


@functools.cache
def _models() -> tuple[type[Model], type[Model], type[Model]]:
    user = get_user_model()
    return Token, user, user._meta.get_field("organisation").related_model


@functools.cache
def _statement() -> str:
    """The SELECT of a token with its user and the user's organisation: each model's columns in field order."""
    models = _models()
    columns = ", ".join(
        f'{alias}."{f.column}"' for alias, m in zip("tuo", models, strict=True) for f in m._meta.concrete_fields
    )
    token, user, organisation = (m._meta.db_table for m in models)  # the models' own tables, no input
    joined = (
        f'"{token}" t INNER JOIN "{user}" u ON t."user_id" = u."id" '
        f'LEFT OUTER JOIN "{organisation}" o ON u."organisation_id" = o."id"'
    )
    return f'SELECT {columns} FROM {joined} WHERE t."key" = %s'  # noqa: S608


@functools.cache
def _loader(model: type[Model], alias: str) -> Callable[[Sequence[Any]], Model]:
    """Makes an instance of ``model`` from its columns' raw values, converted as the ORM's own reads convert them."""
    connection = connections[alias]
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    converters = []  # (position, converter, column) for the fields whose raw values need converting
    for position, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        for converter in [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)]:
            converters.append((position, converter, column))

    def load(values: Sequence[Any]) -> Model:
        converted = list(values)
        for position, converter, column in converters:
            converted[position] = converter(converted[position], column, connection)
        return model.from_db(alias, names, converted)

    return load


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, with the user and the user's
    organisation (nearly every view asks for it: roles, scoping, the buyer's
    own objects) read in the same statement as the token. Every API request
    starts here: one round trip, no query to build."""

    def authenticate_credentials(self, key: str) -> tuple[object, Token]:
        token_model, user_model, organisation_model = _models()
        alias = router.db_for_read(token_model)
        with connections[alias].cursor() as cursor:
            cursor.execute(_statement(), [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        first = len(token_model._meta.concrete_fields)
        then = first + len(user_model._meta.concrete_fields)
        token = _loader(token_model, alias)(row[:first])
        user = _loader(user_model, alias)(row[first:then])
        user.organisation = None if user.organisation_id is None else _loader(organisation_model, alias)(row[then:])
        token_model.user.field.set_cached_value(token, user)  # not ``token.user =``: no user.auth_token back, no cycle
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return (user, token)
