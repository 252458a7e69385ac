"""``manage.py check_capacity`` passes on a sound market and fails, naming the offers, on an overbooked one."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from scheduler import services
from scheduler.models import Lease
from tests import factories

pytestmark = pytest.mark.django_db


def check_capacity() -> str:
    out = StringIO()
    call_command("check_capacity", stdout=out)
    return out.getvalue()


def copy_of(lease: Lease, *, job, **changes) -> Lease:
    """A lease row written directly, as corruption would write it."""
    values = {
        field.name: getattr(lease, field.name)
        for field in Lease._meta.concrete_fields
        if field.name not in {"id", "job", "created_at"}
    }
    values.update(changes)
    return Lease.objects.create(job=job, **values)


def test_a_market_scheduled_by_the_cycle_passes():
    factories.market(pools=2, nodes=2)
    buyer = factories.buyer()
    for accelerators in (8, 8, 4, 2, 2, 1, 8):
        factories.submit(buyer, accelerators_per_node=accelerators)
    services.cycle_run()
    leases = Lease.objects.count()
    assert leases >= 5
    output = check_capacity()
    assert f"2 offers, {leases} holding leases checked: 0 overbooked" in output
    assert "No offer is overbooked." in output


def test_an_empty_market_passes():
    assert "0 offers, 0 holding leases checked: 0 overbooked" in check_capacity()


def test_two_leases_on_the_same_devices_at_once_fail_naming_the_offer():
    _provider, [pool] = factories.market(nodes=1)
    buyer = factories.buyer()
    first, second = factories.submit(buyer), factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=first)
    copy_of(lease, job=second)
    offer = pool.offers.get()
    out = StringIO()
    with pytest.raises(CommandError) as failure:
        call_command("check_capacity", stdout=out)
    assert failure.value.returncode == 1
    assert str(failure.value) == f"1 offer(s) overbooked: {offer.pk}"
    printed = out.getvalue()
    assert "1 offers, 2 holding leases checked: 1 overbooked" in printed
    assert f"offer {offer.pk} on pool {pool.identifier}" in printed
    assert "node 0 device 0: 2000 > 1000" in printed


def test_only_the_overbooked_offer_is_listed():
    _provider, [sound, corrupt] = factories.market(pools=2, nodes=1)
    buyer = factories.buyer()
    jobs = [factories.submit(buyer) for _ in range(3)]
    services.cycle_run()
    on_corrupt = Lease.objects.get(pool=corrupt)
    spare = next(job for job in jobs if not Lease.objects.filter(job=job).exists())
    copy_of(on_corrupt, job=spare)
    out = StringIO()
    with pytest.raises(CommandError, match=rf"1 offer\(s\) overbooked: {corrupt.offers.get().pk}$"):
        call_command("check_capacity", stdout=out)
    assert f"on pool {corrupt.identifier}" in out.getvalue()
    assert f"on pool {sound.identifier}" not in out.getvalue()


def test_a_lease_on_a_node_the_offer_does_not_have_fails():
    factories.market(nodes=1)
    buyer = factories.buyer()
    first, second = factories.submit(buyer), factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=first)
    copy_of(lease, job=second, allocations=[{**lease.allocations[0], "node": 1}])
    with pytest.raises(CommandError):
        check_capacity()


def test_back_to_back_and_ended_leases_are_not_overbookings():
    factories.market(nodes=1)
    buyer = factories.buyer()
    first, later, cancelled = factories.submit(buyer), factories.submit(buyer), factories.submit(buyer)
    services.cycle_run()
    lease = Lease.objects.get(job=first)
    copy_of(lease, job=later, start=lease.end, end=lease.end + (lease.end - lease.start))
    copy_of(lease, job=cancelled, status="cancelled")
    assert "0 overbooked" in check_capacity()
