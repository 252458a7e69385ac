import pytest
from django.core.management import call_command

from marketplace.domain.geography import HUBS, Side
from marketplace.models import Organisation, ResourcePool, Site, User

pytestmark = pytest.mark.django_db


def test_demo_market_is_realistic_and_loads_once(api):
    call_command("load_demo_market")
    providers = Organisation.objects.filter(category="provider")
    assert providers.count() >= 30
    assert set(Site.objects.values_list("hub", flat=True)) == set(HUBS)
    assert ResourcePool.objects.count() >= 100
    assert ResourcePool.objects.filter(accelerator_model__domestic=True).exists()
    assert ResourcePool.objects.filter(accelerator_model__isnull=True).exists()
    assert {"buyer", "provider", "operator"} <= set(User.objects.values_list("role", flat=True))
    assert Organisation.objects.filter(is_sme=True).exists()
    assert Organisation.objects.filter(category="university").exists()
    assert Organisation.objects.filter(category="medical_institution").exists()

    east = [s.green_share for s in Site.objects.all() if HUBS[s.hub].side is Side.EAST]
    west = [s.green_share for s in Site.objects.all() if HUBS[s.hub].side is Side.WEST]
    assert max(east) < min(west), "western hubs run on greener power"
    east_pue = [s.pue for s in Site.objects.all() if HUBS[s.hub].side is Side.EAST]
    west_pue = [s.pue for s in Site.objects.all() if HUBS[s.hub].side is Side.WEST]
    assert sum(west_pue) / len(west_pue) < sum(east_pue) / len(east_pue)

    pools = ResourcePool.objects.count()
    call_command("load_demo_market")
    assert ResourcePool.objects.count() == pools

    inventory = api.get("/api/v1/inventory").data
    assert {row["hub"] for row in inventory["rows"]} == set(HUBS)
    assert inventory["totals"]["cp_tflops"] > 0
