"""Test data made the way users make it: through the services."""

from __future__ import annotations

import itertools
from decimal import Decimal

from marketplace import services
from marketplace.domain.credit_code import with_check_character
from marketplace.models import DeviceModel, Organisation, ResourcePool, Site, User

_serial = itertools.count(1)
PASSWORD = "a-long-test-passphrase-42"


def credit_code(region: str = "110108") -> str:
    """A valid Unified Social Credit Code, unique within the test run."""
    return with_check_character(f"91{region}{next(_serial):09d}")


def _register(category: str, *, city: str = "beijing", home_hub: str = "", is_sme: bool = False, name: str = ""):
    n = next(_serial)
    _organisation, user = services.organisation_register(
        name=name or f"{category.title()} {n}",
        credit_code=credit_code(),
        category=category,
        city=city,
        username=f"{category}-{n}",
        password=PASSWORD,
        home_hub=home_hub,
        is_sme=is_sme,
    )
    return user


def buyer(
    *, category: str = "enterprise", city: str = "beijing", is_sme: bool = True, funds: Decimal = Decimal("1000000.00")
) -> User:
    """A buyer organisation's user; its wallet is topped up with ``funds`` (so its jobs can be held for)."""
    user = _register(category, city=city, is_sme=is_sme and category == "enterprise")
    if funds:
        from billing import services as billing_services

        billing_services.wallet_top_up(
            organisation=user.organisation, amount=funds, reference=f"initial-{user.pk}", actor=user
        )
    return user


def operator() -> User:
    n = next(_serial)
    org = Organisation.objects.create(
        name=f"Platform operator {n}",
        credit_code=credit_code(),
        category="government",
        city="beijing",
        is_operator=True,
        verification_status="verified",
    )
    return services.operator_create(organisation=org, username=f"operator-{n}", password=PASSWORD)


def provider(*, verified: bool = True, home_hub: str = "GZ", city: str = "guiyang") -> User:
    user = _register("provider", city=city, home_hub=home_hub)
    if verified:
        services.provider_verify(organisation=user.organisation, actor=operator())
        user.organisation.refresh_from_db()
    return user


def site(user: User, **overrides) -> Site:
    values = {
        "name": "Gui'an intelligent computing centre",
        "hub": "GZ",
        "city": "guian",
        "kind": "intelligent",
        "pue": Decimal("1.20"),
        "green_share": Decimal("0.6000"),
    }
    values.update(overrides)
    return services.site_create(provider=user.organisation, actor=user, **values)


def device(code: str) -> DeviceModel:
    return DeviceModel.objects.get(code=code)


def pool(user: User, site_: Site, **overrides) -> ResourcePool:
    services.device_catalogue_ensure()  # a transactional test before this one may have flushed it
    values = {
        "name": "H800 training pool",
        "node_count": 4,
        "cpu_model": DeviceModel.objects.filter(kind="cpu", architecture="x86_64").order_by("code").first(),
        "cpu_cores_per_node": 96,
        "memory_gb_per_node": 1024,
        "storage_gb_per_node": 7680,
        "network_gbps": 400,
        "accelerator_model": DeviceModel.objects.filter(software_stack="cuda").order_by("code").first(),
        "accelerators_per_node": 8,
    }
    values.update(overrides)
    return services.pool_create(site=site_, actor=user, **values)


def offer(user: User, pool_: ResourcePool, **overrides):
    from scheduler import services as scheduler_services

    values = {"nodes_offered": pool_.node_count, "list_price": Decimal("0.0200")}
    values.update(overrides)
    return scheduler_services.offer_create(pool=pool_, actor=user, **values)


def job_values(**overrides) -> dict:
    """A job as the API's validated data: 8 whole CUDA accelerators on one node for two hours."""
    values = {
        "name": "fine-tune a vision model",
        "image": "registry.example/vision:1.4",
        "command": ["python", "train.py"],
        "software_stack": "cuda",
        "accelerators_per_node": 8,
        "nodes": 1,
        "duration_seconds": 2 * 3600,
    }
    values.update(overrides)
    return values


def submit(user: User, **overrides):
    from scheduler import services as scheduler_services

    return scheduler_services.job_submit(user=user, values=job_values(**overrides))


def market(*, pools: int = 1, nodes: int = 2, **pool_overrides):
    """A verified provider with one site and ``pools`` offered pools."""
    provider_user = provider()
    site_ = site(provider_user)
    made = []
    for i in range(pools):
        made_pool = pool(provider_user, site_, name=f"pool {i}", node_count=nodes, **pool_overrides)
        offer(provider_user, made_pool)
        made.append(made_pool)
    return provider_user, made
