"""The job serializers, whose fields are built once per class, give what DRF
builds afresh per instance gives: the same validated values and errors for
input, the same body for output."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework import serializers

from scheduler import services
from scheduler.api.views import JobInput, JobOutput
from scheduler.models import Job
from tests import factories
from tests.scheduler.api.test_jobs_api import INVALID_JOBS, _json

pytestmark = pytest.mark.django_db


class FreshJobInput(JobInput):
    def get_fields(self) -> dict:
        return serializers.Serializer.get_fields(self)


class FreshJobOutput(JobOutput):
    def get_fields(self) -> dict:
        return serializers.ModelSerializer.get_fields(self)


VALID = [
    {},
    {"earliest_start": "2026-01-01T08:00:00+08:00", "deadline": "2026-01-05T10:30:00.5+08:00"},
    {"accelerators_per_node": 0, "capacity_tflops": "100", "capacity_precision": "fp16"},
    {"max_price_per_ncu_hour": "3.5", "max_total_price": "1234.5", "max_latency_ms": 25, "allowed_hubs": ["GZ"]},
    {"use_vouchers": True, "command": [], "device_models": ["nvidia-a10-24gb"], "buyer_city": "shanghai"},
]


@pytest.mark.parametrize("overrides", VALID + [case.values[0] for case in INVALID_JOBS])
def test_job_input_validates_as_drf_builds_it(overrides):
    body = _json(factories.job_values(**overrides))
    ours, drfs = JobInput(data=body), FreshJobInput(data=body)
    assert ours.is_valid() == drfs.is_valid()
    assert ours.errors == drfs.errors
    if not ours.errors:
        assert ours.validated_data == drfs.validated_data


def test_job_output_is_what_drf_builds(buyer):
    factories.market(nodes=2)
    queued = factories.submit(buyer, max_total_price=Decimal("99.50"), allowed_hubs=["GZ"], command=[])
    placed = factories.submit(buyer, name="to be placed")
    services.cycle_run()
    for job in Job.objects.filter(pk__in=[queued.pk, placed.pk]).prefetch_related("leases__pool"):
        assert JobOutput(job).data == FreshJobOutput(job).data
    assert any(JobOutput(job).data["lease"] for job in Job.objects.prefetch_related("leases__pool"))


def test_a_job_just_submitted_is_shown_without_reading_its_leases(buyer, django_assert_num_queries):
    factories.market(nodes=2)
    job = factories.submit(buyer)
    with django_assert_num_queries(0):
        assert JobOutput(job, context={"just_submitted": True}).data["lease"] is None
