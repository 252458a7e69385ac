"""The verbs that change organisations and inventory. One transaction each,
every state change audited. Views and admin call these; nothing else writes."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import audit_record
from core.errors import Conflict, Forbidden, IllegalTransition, InvalidInput
from marketplace.domain import identifiers
from marketplace.domain.credit_code import CreditCodeError, validate_credit_code
from marketplace.domain.geography import CITIES, HUBS
from marketplace.domain.units import (
    CpuArchitecture,
    DeviceKind,
    SiteKind,
    SoftwareStack,
    compute_class_for,
)
from marketplace.models import (
    Category,
    DeviceModel,
    Organisation,
    ResourcePool,
    Role,
    Site,
    User,
    VerificationStatus,
)

CATALOGUE_FILE = Path(__file__).resolve().parent / "fixtures" / "device_catalogue.json"


def device_catalogue_ensure() -> int:
    """Load the device catalogue if its table is empty (a flushed database);
    the data migration loads it on a fresh one. Returns how many were loaded."""
    if DeviceModel.objects.exists():
        return 0
    entries = json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))
    DeviceModel.objects.bulk_create(
        [
            DeviceModel(
                code=e["code"],
                name=e["name"],
                vendor=e["vendor"],
                kind=e["kind"],
                architecture=e["architecture"] or "",
                domestic=e["domestic"],
                software_stack=e["software_stack"],
                fp64_tflops=Decimal(e["fp64_tflops"]),
                fp32_tflops=Decimal(e["fp32_tflops"]),
                fp16_tflops=Decimal(e["fp16_tflops"]),
                int8_tops=Decimal(e["int8_tops"]),
                memory_gb=None if e["memory_gb"] is None else Decimal(str(e["memory_gb"])),
                power_w=int(e["power_w"]),
                cores=int(e["cores"]),
                source=e["source"],
            )
            for e in entries
        ],
        ignore_conflicts=True,
    )
    return len(entries)


VERIFICATION_TRANSITIONS: dict[str, set[str]] = {
    VerificationStatus.PENDING: {VerificationStatus.VERIFIED, VerificationStatus.REJECTED},
    VerificationStatus.REJECTED: {VerificationStatus.PENDING},
    VerificationStatus.VERIFIED: {VerificationStatus.REJECTED},
}


def _require_city(city: str, field: str = "city") -> None:
    if city not in CITIES:
        raise InvalidInput(f"unknown city {city!r}; see GET /api/v1/cities", field=field)


def _require_hub(hub: str, field: str = "hub") -> None:
    if hub not in HUBS:
        raise InvalidInput(f"unknown hub {hub!r}; hubs are {', '.join(HUBS)}", field=field)


@transaction.atomic
def organisation_register(
    *,
    name: str,
    credit_code: str,
    category: str,
    city: str,
    username: str,
    password: str,
    email: str = "",
    is_sme: bool = False,
    home_hub: str = "",
) -> tuple[Organisation, User]:
    """Register an organisation with its first user. Providers start pending an
    operator's verification; buyers can trade at once."""
    try:
        code = validate_credit_code(credit_code)
    except CreditCodeError as exc:
        raise InvalidInput(str(exc), field="credit_code") from None
    if category not in Category.values:
        raise InvalidInput(f"unknown category {category!r}", field="category")
    _require_city(city)
    is_provider = category == Category.PROVIDER
    if is_provider:
        if not home_hub:
            raise InvalidInput("a provider names the hub it is registered in", field="home_hub")
        _require_hub(home_hub, "home_hub")
    elif home_hub:
        raise InvalidInput("only providers have a home hub", field="home_hub")
    if is_sme and category != Category.ENTERPRISE:
        raise InvalidInput("only enterprises can be SMEs", field="is_sme")
    if Organisation.objects.filter(credit_code=code).exists():
        raise Conflict("an organisation with this credit code is already registered", field="credit_code")
    if User.objects.filter(username=username).exists():
        raise Conflict("this username is taken", field="username")
    user = User(username=username, email=email)
    try:
        validate_password(password, user)
    except DjangoValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from None

    organisation = Organisation.objects.create(
        name=name,
        credit_code=code,
        category=category,
        is_sme=is_sme,
        city=city,
        home_hub=home_hub,
        verification_status=VerificationStatus.PENDING if is_provider else VerificationStatus.VERIFIED,
    )
    if is_provider:
        organisation.identifier = identifiers.provider_identifier(home_hub, organisation.pk)
        organisation.save(update_fields=["identifier"])
    user.organisation = organisation
    user.role = Role.PROVIDER if is_provider else Role.BUYER
    user.set_password(password)
    try:
        user.save()
    except IntegrityError:
        raise Conflict("this username is taken", field="username") from None
    audit_record(
        actor=user,
        action="organisation.registered",
        entity=organisation,
        to_state=organisation.verification_status,
        data={"credit_code": code, "category": category},
    )
    return organisation, user


@transaction.atomic
def operator_create(*, organisation: Organisation, username: str, password: str, email: str = "") -> User:
    if not organisation.is_operator:
        raise InvalidInput("operators belong to the operator organisation", field="organisation")
    user = User(username=username, email=email, organisation=organisation, role=Role.OPERATOR, is_staff=True)
    user.set_password(password)
    user.save()
    audit_record(actor=None, action="operator.created", entity=user)
    return user


def organisation_transition(*, organisation: Organisation, to: str, actor: User, reason: str = "") -> Organisation:
    """The one way a provider's verification status changes: a conditional
    update from the current state, audited."""
    with transaction.atomic():
        current = Organisation.objects.select_for_update().get(pk=organisation.pk)
        if to not in VERIFICATION_TRANSITIONS.get(current.verification_status, set()):
            raise IllegalTransition(
                entity="The organisation's verification", current=current.verification_status, target=to
            )
        fields: dict[str, Any] = {"verification_status": to, "verification_reason": reason}
        if to == VerificationStatus.VERIFIED:
            fields["verified_at"] = timezone.now()
        Organisation.objects.filter(pk=current.pk, verification_status=current.verification_status).update(**fields)
        audit_record(
            actor=actor,
            action="organisation.verification",
            entity=current,
            from_state=current.verification_status,
            to_state=to,
            reason=reason,
        )
    organisation.refresh_from_db()
    return organisation


def provider_verify(*, organisation: Organisation, actor: User, reason: str = "") -> Organisation:
    if not organisation.is_provider:
        raise InvalidInput("only providers are verified", field="organisation")
    return organisation_transition(
        organisation=organisation, to=VerificationStatus.VERIFIED, actor=actor, reason=reason
    )


def provider_reject(*, organisation: Organisation, actor: User, reason: str) -> Organisation:
    if not organisation.is_provider:
        raise InvalidInput("only providers are verified", field="organisation")
    if not reason.strip():
        raise InvalidInput("say why the provider is rejected", field="reason")
    return organisation_transition(
        organisation=organisation, to=VerificationStatus.REJECTED, actor=actor, reason=reason
    )


def _check_site_numbers(*, pue: Decimal, green_share: Decimal, wue: Decimal, grid_factor: Decimal) -> None:
    if pue < 1 or pue > 3:
        raise InvalidInput("PUE is total facility energy over IT energy: between 1.00 and 3.00", field="pue")
    if not 0 <= green_share <= 1:
        raise InvalidInput("green-electricity share is a fraction between 0 and 1", field="green_share")
    if wue < 0:
        raise InvalidInput("WUE cannot be negative", field="wue")
    if grid_factor < 0:
        raise InvalidInput("grid emission factor cannot be negative", field="grid_factor")


@transaction.atomic
def site_create(
    *,
    provider: Organisation,
    actor: User,
    name: str,
    hub: str,
    city: str,
    kind: str,
    pue: Decimal,
    green_share: Decimal,
    wue: Decimal = Decimal(0),
    grid_factor: Decimal | None = None,
) -> Site:
    if not provider.is_provider:
        raise Forbidden("only providers have sites")
    _require_hub(hub)
    _require_city(city)
    if CITIES[city].hub not in (None, hub):
        raise InvalidInput(f"{CITIES[city].name_en} lies in the {CITIES[city].hub} hub, not {hub}", field="city")
    if kind not in SiteKind.__members__.values():
        raise InvalidInput(f"unknown site kind {kind!r}", field="kind")
    grid = grid_factor if grid_factor is not None else Site._meta.get_field("grid_factor").default
    _check_site_numbers(pue=pue, green_share=green_share, wue=wue, grid_factor=grid)
    locked = Organisation.objects.select_for_update().get(pk=provider.pk)
    serial = locked.sites_allocated + 1
    Organisation.objects.filter(pk=locked.pk).update(sites_allocated=serial)
    site = Site.objects.create(
        provider=locked,
        serial=serial,
        identifier=identifiers.site_identifier(hub, locked.pk, serial),
        name=name,
        hub=hub,
        city=city,
        kind=kind,
        pue=pue,
        wue=wue,
        green_share=green_share,
        grid_factor=grid,
    )
    audit_record(actor=actor, action="site.created", entity=site, data={"identifier": site.identifier})
    return site


SITE_EDITABLE = {"name", "pue", "wue", "green_share", "grid_factor"}


@transaction.atomic
def site_update(*, site: Site, actor: User, **changes: Any) -> Site:
    """Change a site's attributes. Hub, city and identifier never change."""
    unknown = set(changes) - SITE_EDITABLE
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"{field} cannot be changed after a site is created", field=field)
    locked = Site.objects.select_for_update().get(pk=site.pk)
    merged = {f: changes.get(f, getattr(locked, f)) for f in ("pue", "green_share", "wue", "grid_factor")}
    _check_site_numbers(**merged)
    before = {f: str(getattr(locked, f)) for f in changes}
    for field, value in changes.items():
        setattr(locked, field, value)
    locked.save(update_fields=list(changes))
    # Its pools count as edited too: a site's PUE, green share and grid factor are part of what the
    # market offers (carbon, greenest), and quotes reuse a market only while no pool was edited.
    ResourcePool.objects.filter(site=locked).update(updated_at=timezone.now())
    audit_record(
        actor=actor,
        action="site.updated",
        entity=locked,
        data={"before": before, "after": {f: str(v) for f, v in changes.items()}},
    )
    return locked


def _pool_derived(
    *, site: Site, cpu_model: DeviceModel, accelerator_model: DeviceModel | None, accelerators_per_node: int
) -> dict[str, str]:
    if cpu_model.kind != DeviceKind.CPU:
        raise InvalidInput(f"{cpu_model.name} is not a CPU", field="cpu_model")
    if accelerator_model is not None and accelerator_model.kind == DeviceKind.CPU:
        raise InvalidInput(f"{accelerator_model.name} is a CPU, not an accelerator", field="accelerator_model")
    if (accelerator_model is None) != (accelerators_per_node == 0):
        field = "accelerators_per_node" if accelerator_model is not None else "accelerator_model"
        raise InvalidInput("an accelerator model goes with at least one accelerator per node", field=field)
    if accelerators_per_node > 16:
        raise InvalidInput("at most 16 accelerators per node", field="accelerators_per_node")
    accelerated = accelerator_model is not None
    return {
        "software_stack": accelerator_model.software_stack if accelerator_model else SoftwareStack.CPU.value,
        "cpu_architecture": cpu_model.architecture or CpuArchitecture.X86_64.value,
        "compute_class": compute_class_for(SiteKind(site.kind), accelerated).value,
    }


def _check_pool_numbers(*, node_count: int, cpu_cores_per_node: int, memory_gb_per_node: int) -> None:
    if node_count < 1:
        raise InvalidInput("a pool has at least one node", field="node_count")
    if cpu_cores_per_node < 1:
        raise InvalidInput("a node has at least one CPU core", field="cpu_cores_per_node")
    if memory_gb_per_node < 1:
        raise InvalidInput("a node has at least 1 GB of memory", field="memory_gb_per_node")


@transaction.atomic
def pool_create(
    *,
    site: Site,
    actor: User,
    name: str,
    node_count: int,
    cpu_model: DeviceModel,
    cpu_cores_per_node: int,
    memory_gb_per_node: int,
    storage_gb_per_node: int = 0,
    network_gbps: int = 0,
    accelerator_model: DeviceModel | None = None,
    accelerators_per_node: int = 0,
    sharing_allowed: bool = False,
) -> ResourcePool:
    _check_pool_numbers(
        node_count=node_count, cpu_cores_per_node=cpu_cores_per_node, memory_gb_per_node=memory_gb_per_node
    )
    derived = _pool_derived(
        site=site, cpu_model=cpu_model, accelerator_model=accelerator_model, accelerators_per_node=accelerators_per_node
    )
    if sharing_allowed and accelerator_model is None:
        raise InvalidInput("only accelerators can be shared", field="sharing_allowed")
    locked = Site.objects.select_for_update().get(pk=site.pk)
    serial = locked.pools_allocated + 1
    Site.objects.filter(pk=locked.pk).update(pools_allocated=serial)
    pool = ResourcePool.objects.create(
        site=locked,
        serial=serial,
        identifier=identifiers.pool_identifier(locked.hub, locked.provider_id, locked.serial, serial),
        name=name,
        node_count=node_count,
        cpu_model=cpu_model,
        cpu_cores_per_node=cpu_cores_per_node,
        memory_gb_per_node=memory_gb_per_node,
        storage_gb_per_node=storage_gb_per_node,
        network_gbps=network_gbps,
        accelerator_model=accelerator_model,
        accelerators_per_node=accelerators_per_node,
        sharing_allowed=sharing_allowed,
        **derived,
    )
    audit_record(actor=actor, action="pool.created", entity=pool, data={"identifier": pool.identifier})
    return pool


POOL_EDITABLE = {
    "name",
    "node_count",
    "cpu_model",
    "cpu_cores_per_node",
    "memory_gb_per_node",
    "storage_gb_per_node",
    "network_gbps",
    "accelerator_model",
    "accelerators_per_node",
    "sharing_allowed",
    "status",
}


@transaction.atomic
def pool_update(*, pool: ResourcePool, actor: User, **changes: Any) -> ResourcePool:
    """Change a pool's attributes; its identifier stays. Changing the hardware
    clears an operator-verified benchmark factor back to unverified."""
    unknown = set(changes) - POOL_EDITABLE
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"{field} cannot be changed on a pool", field=field)
    locked = ResourcePool.objects.select_for_update().select_related("site").get(pk=pool.pk)
    before = {f: str(getattr(locked, f)) for f in changes}
    for field, value in changes.items():
        setattr(locked, field, value)
    _check_pool_numbers(
        node_count=locked.node_count,
        cpu_cores_per_node=locked.cpu_cores_per_node,
        memory_gb_per_node=locked.memory_gb_per_node,
    )
    derived = _pool_derived(
        site=locked.site,
        cpu_model=locked.cpu_model,
        accelerator_model=locked.accelerator_model,
        accelerators_per_node=locked.accelerators_per_node,
    )
    if locked.sharing_allowed and locked.accelerator_model is None:
        raise InvalidInput("only accelerators can be shared", field="sharing_allowed")
    for field, value in derived.items():
        setattr(locked, field, value)
    hardware_changed = bool(
        {"cpu_model", "accelerator_model", "cpu_cores_per_node", "accelerators_per_node"} & set(changes)
    )
    if hardware_changed and locked.benchmark_verified_at is not None:
        locked.benchmark_factor = Decimal("1.000")
        locked.benchmark_verified_at = None
    locked.save()
    audit_record(
        actor=actor,
        action="pool.updated",
        entity=locked,
        data={"before": before, "after": {f: str(getattr(locked, f)) for f in changes}},
    )
    return locked


@transaction.atomic
def pool_set_benchmark(*, pool: ResourcePool, actor: User, factor: Decimal, reason: str = "") -> ResourcePool:
    """An operator records the measured delivered/peak factor of a pool."""
    if not Decimal("0.05") <= factor <= Decimal("1.5"):
        raise InvalidInput("a benchmark factor lies between 0.05 and 1.5", field="factor")
    locked = ResourcePool.objects.select_for_update().get(pk=pool.pk)
    before = str(locked.benchmark_factor)
    locked.benchmark_factor = factor
    locked.benchmark_verified_at = timezone.now()
    locked.save(update_fields=["benchmark_factor", "benchmark_verified_at", "updated_at"])
    audit_record(
        actor=actor,
        action="pool.benchmark",
        entity=locked,
        reason=reason,
        data={"before": before, "after": str(factor)},
    )
    return locked
