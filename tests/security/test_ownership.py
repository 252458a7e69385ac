"""Ownership beyond status codes: what one organisation does cannot change
how the service treats two others."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests import factories
from tests.conftest import client_for
from tests.vouchers import helpers

pytestmark = pytest.mark.django_db


@pytest.fixture
def subsidised(operator):
    """A buyer whose voucher pays 30% of compute from a verified provider: (buyer, provider)."""
    provider, _pools = factories.market()
    buyer = factories.buyer()
    helpers.voucher(buyer, helpers.programme(operator), operator)
    return buyer, provider


def subsidy(buyer) -> Decimal:
    answer = client_for(buyer).post("/api/v1/voucher-quotes", factories.job_values())
    assert answer.status_code == 200, answer.content
    return Decimal(answer.json()["options"][0]["voucher_subsidy"])


def declare(user, organisation, other) -> int:
    body = {"organisation": organisation.pk, "other": other.pk, "relation_kind": "parent_subsidiary"}
    return client_for(user).post("/api/v1/organisation-relations", body).status_code


def test_an_organisation_cannot_make_two_others_related_parties(subsidised):
    buyer, provider = subsidised
    assert subsidy(buyer) > 0
    rival = factories.buyer(funds=Decimal(0))
    # The rival names itself parent of both: allowed, as it concerns the rival…
    assert declare(rival, rival.organisation, buyer.organisation) == 201
    assert declare(rival, rival.organisation, provider.organisation) == 201
    # …but does not make the buyer and the provider related: the voucher still pays.
    assert subsidy(buyer) > 0


def test_subsidiaries_that_each_name_their_parent_are_related(subsidised):
    buyer, provider = subsidised
    parent = factories.buyer(funds=Decimal(0)).organisation
    assert declare(buyer, buyer.organisation, parent) == 201
    assert subsidy(buyer) > 0  # the provider has not named the parent yet
    assert declare(provider, provider.organisation, parent) == 201
    assert subsidy(buyer) == 0


def test_an_operator_may_relate_two_organisations_through_a_common_parent(subsidised, operator):
    buyer, provider = subsidised
    parent = factories.buyer(funds=Decimal(0)).organisation
    assert declare(operator, parent, buyer.organisation) == 201
    assert declare(operator, parent, provider.organisation) == 201
    assert subsidy(buyer) == 0
