from decimal import Decimal

import pytest

from marketplace.domain.units import pool_ncu, pool_tflops, quantise_units
from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def _cpu(arch: str = "x86_64"):
    return factories.DeviceModel.objects.filter(kind="cpu", architecture=arch).order_by("code").first()


def test_provider_adds_a_site_and_pool_and_gets_identifiers(provider):
    client = client_for(provider)
    site = client.post(
        "/api/v1/sites",
        {
            "name": "Zhongwei cloud base",
            "hub": "NX",
            "city": "zhongwei",
            "kind": "intelligent",
            "pue": "1.15",
            "green_share": "0.72",
        },
        format="json",
    )
    assert site.status_code == 201, site.data
    assert site.data["identifier"].startswith(f"CX-NX-{provider.organisation.identifier.split('-')[2]}-001-")
    accelerator = factories.DeviceModel.objects.filter(software_stack="cann").first()
    pool = client.post(
        "/api/v1/pools",
        {
            "site": site.data["identifier"],
            "name": "Ascend pool",
            "node_count": 16,
            "cpu_model": _cpu("aarch64").code,
            "cpu_cores_per_node": 192,
            "memory_gb_per_node": 1536,
            "accelerator_model": accelerator.code,
            "accelerators_per_node": 8,
        },
        format="json",
    )
    assert pool.status_code == 201, pool.data
    assert pool.data["software_stack"] == "cann"
    assert pool.data["compute_class"] == "intelligent"
    assert pool.data["cpu_architecture"] == "aarch64"
    assert pool.data["identifier"].startswith(site.data["identifier"][:-3])


def test_a_city_outside_the_hub_is_refused(provider):
    response = client_for(provider).post(
        "/api/v1/sites",
        {"name": "x", "hub": "GZ", "city": "shanghai", "kind": "general", "pue": "1.3", "green_share": "0.2"},
        format="json",
    )
    assert response.status_code == 400
    assert response.data["field"] == "city"


def test_pue_below_one_is_refused(provider):
    response = client_for(provider).post(
        "/api/v1/sites",
        {"name": "x", "hub": "GZ", "city": "guiyang", "kind": "general", "pue": "0.9", "green_share": "0.2"},
        format="json",
    )
    assert response.status_code == 400
    assert response.data["field"] == "pue"


@pytest.mark.parametrize("field, value", [("grid_factor", "6757"), ("wue", "1000")])
def test_a_site_figure_too_large_to_store_is_refused(provider, field, value):
    site = factories.site(provider)
    response = client_for(provider).patch(f"/api/v1/sites/{site.pk}", {field: value}, format="json")
    assert response.status_code == 400
    assert response.data["field"] == field


def test_accelerator_count_without_model_is_refused(provider):
    site = factories.site(provider)
    body = {
        "site": site.identifier,
        "name": "x",
        "node_count": 2,
        "cpu_model": _cpu().code,
        "cpu_cores_per_node": 64,
        "memory_gb_per_node": 256,
        "accelerators_per_node": 8,
    }
    response = client_for(provider).post("/api/v1/pools", body, format="json")
    assert response.status_code == 400
    assert response.data["field"] == "accelerator_model"


def test_an_unknown_device_is_named(provider):
    site = factories.site(provider)
    body = {
        "site": site.identifier,
        "name": "x",
        "node_count": 2,
        "cpu_model": "pentium-4",
        "cpu_cores_per_node": 1,
        "memory_gb_per_node": 4,
    }
    response = client_for(provider).post("/api/v1/pools", body, format="json")
    assert response.status_code == 400
    assert response.data["field"] == "cpu_model"
    assert "pentium-4" in response.data["detail"]


def test_inventory_totals_by_hub_and_class(api, provider):
    west = factories.site(provider)
    gpu_pool = factories.pool(provider, west, node_count=10)
    cpu_pool = factories.pool(
        provider, west, name="CPU pool", node_count=20, accelerator_model=None, accelerators_per_node=0
    )
    other = factories.provider(home_hub="JJJ", city="beijing")
    east = factories.site(other, hub="JJJ", city="zhangjiakou", kind="supercomputing", name="HPC centre")
    hpc_pool = factories.pool(other, east, node_count=5)
    hidden = factories.provider(verified=False)
    factories.pool(hidden, factories.site(hidden), node_count=100)

    data = api.get("/api/v1/inventory").data
    rows = {(r["hub"], r["compute_class"]): r for r in data["rows"]}
    assert set(rows) == {("GZ", "intelligent"), ("GZ", "general"), ("JJJ", "super")}
    gz_ai = rows[("GZ", "intelligent")]
    assert gz_ai["nodes"] == 10 and gz_ai["accelerators"] == 80 and gz_ai["side"] == "west"
    assert gz_ai["ncu"] == quantise_units(pool_ncu(gpu_pool.shape()))
    assert gz_ai["tflops"]["fp16"] == quantise_units(pool_tflops(gpu_pool.shape(), factories_precision("fp16")))
    assert rows[("JJJ", "super")]["side"] == "east"
    totals = data["totals"]
    assert totals["nodes"] == 35
    expected_cp = (
        pool_tflops(gpu_pool.shape(), factories_precision("fp16"))
        + pool_tflops(cpu_pool.shape(), factories_precision("fp32"))
        + pool_tflops(hpc_pool.shape(), factories_precision("fp64"))
    )
    assert totals["cp_tflops"] == quantise_units(expected_cp)
    by_class = totals["cp_tflops_by_class"]
    assert by_class["general"] + by_class["intelligent"] + by_class["super"] == totals["cp_tflops"]
    only_jjj = api.get("/api/v1/inventory?hub=JJJ").data
    assert [r["hub"] for r in only_jjj["rows"]] == ["JJJ"]
    assert api.get("/api/v1/inventory?hub=MARS").status_code == 400


def factories_precision(name: str):
    from marketplace.domain.units import Precision

    return Precision(name)


def test_benchmark_factor_scales_delivered_units(operator, provider):
    pool = factories.pool(provider, factories.site(provider))
    before = Decimal(client_for(provider).get(f"/api/v1/pools/{pool.pk}").data["ncu_per_node"])
    response = client_for(operator).post(f"/api/v1/pools/{pool.pk}/benchmark", {"factor": "0.850"})
    assert response.status_code == 200
    assert response.data["benchmark_verified"] is True
    after = Decimal(response.data["ncu_per_node"])
    assert after == quantise_units(before * Decimal("0.85"))
    assert client_for(provider).post(f"/api/v1/pools/{pool.pk}/benchmark", {"factor": "1.0"}).status_code == 403
