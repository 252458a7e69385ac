"""Load a realistic demo market: 32 providers across the 8 national hubs,
100+ resource pools mixing the device catalogue, buyers and an operator.

Pool shapes follow Alibaba's production GPU cluster (shared/data,
alibaba-spot-gpu-v2026: A10 × 1 with 128 vCPU, A100/A800 × 8 with 128 vCPU,
H800 × 8 with 192 vCPU); eastern sites have higher PUE and less green power
than western ones (东数西算). Deterministic (seeded) and idempotent: running
it again changes nothing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token

from billing import services as billing
from marketplace import services
from marketplace.domain.credit_code import with_check_character
from marketplace.domain.geography import CITIES, HUBS, Side
from marketplace.models import DeviceModel, Organisation

DEMO_WALLET = Decimal("500000.00")  # each demo buyer's opening balance, CNY
DEMO_PASSWORD = "demo-pass-2026"  # noqa: S105 - printed by bin/run for the demo sign-ins
SEED = 2026

PROVIDER_NAMES = {
    "JJJ": ["Jingxi Cloud Computing", "Zhangbei Intelligent Compute", "Tianjin Binhai Supercomputing", "Yanshan Data"],
    "YRD": ["Huadong Smart Compute", "Qingpu Cloud Valley", "Wuhu Digital Harbour", "Hangzhou Xihu Compute"],
    "GBA": ["Pengcheng Compute Network", "Nansha Cloud", "Shaoguan Data Park", "Greater Bay AI Infrastructure"],
    "CY": ["Tianfu Intelligent Compute", "Liangjiang Cloud", "Chengdu Supercomputing Services", "Bashu Data"],
    "NMG": ["Horinger Green Compute", "Ulanqab Wind Cloud", "Grassland Data Harbour", "Baotou Steel Digital"],
    "GZ": ["Gui'an Cloud Base", "Qianlong Compute", "Guizhou Big Data Exchange Compute", "Karst Cloud"],
    "GS": ["Qingyang Compute Hub", "Longyuan Cloud", "Silk Road Data", "Lanzhou New Area Compute"],
    "NX": ["Zhongwei West Cloud", "Helan Mountain Data", "Yinchuan Intelligent Compute", "Shapotou Cloud Valley"],
}

# (label, accelerator code or None, accelerators per node, cpu code, cores, memory GB, weight east, weight west)
POOL_SHAPES = [
    ("A10 inference", "nvidia-a10-24gb", 1, "intel-xeon-platinum-8480plus", 128, 512, 6, 3),
    ("A100 training", "nvidia-a100-sxm4-80gb", 8, "intel-xeon-platinum-8480plus", 128, 2048, 4, 2),
    ("A800 training", "nvidia-a800-sxm4-80gb", 8, "amd-epyc-9654", 128, 2048, 2, 3),
    ("H800 training", "nvidia-h800-sxm5-80gb", 8, "intel-xeon-platinum-8480plus", 192, 2048, 3, 1),
    ("H100 training", "nvidia-h100-sxm5-80gb", 8, "intel-xeon-platinum-8480plus", 192, 2048, 1, 0),
    ("H20 inference", "nvidia-h20-96gb", 8, "intel-xeon-platinum-8480plus", 192, 2048, 1, 2),
    ("L40S rendering", "nvidia-l40s-48gb", 8, "amd-epyc-9654", 128, 1024, 2, 1),
    ("RTX 4090 rendering", "nvidia-rtx-4090-24gb", 8, "amd-epyc-9654", 64, 512, 2, 1),
    ("T4 inference", "nvidia-t4-16gb", 4, "hygon-c86-7390", 64, 256, 1, 1),
    ("V100 research", "nvidia-v100-sxm2-32gb", 8, "intel-xeon-platinum-8480plus", 96, 768, 1, 1),
    ("Ascend 910B training", "huawei-ascend-910b", 8, "huawei-kunpeng-920-6426", 192, 1536, 1, 4),
    ("MLU370 inference", "cambricon-mlu370-x8", 8, "hygon-c86-7390", 64, 512, 0, 1),
    ("Kunlun R200 inference", "kunlunxin-r200", 8, "hygon-c86-7390", 64, 512, 0, 1),
    ("General x86", None, 0, "amd-epyc-9654", 192, 768, 2, 3),
    ("General ARM (Kunpeng)", None, 0, "huawei-kunpeng-920-6426", 128, 512, 1, 2),
    ("General Hygon", None, 0, "hygon-c86-7390", 64, 256, 1, 2),
]

BUYERS = [
    ("buyer-sme", "Qiming Robotics Co., Ltd.", "enterprise", True, "shenzhen"),
    ("buyer-university", "East Lake University", "university", False, "wuhan"),
    ("buyer-hospital", "Chengdu West China Digital Hospital", "medical_institution", False, "chengdu"),
    ("buyer-research", "Yangtze Institute of Computational Biology", "research_institute", False, "shanghai"),
    ("buyer-school", "Guiyang No. 1 Middle School", "government", False, "guiyang"),
]


@dataclass(frozen=True)
class SiteProfile:
    pue: Decimal
    green_share: Decimal
    wue: Decimal


def _profile(rng: random.Random, side: Side) -> SiteProfile:
    if side is Side.EAST:
        pue, green, wue = rng.uniform(1.22, 1.42), rng.uniform(0.08, 0.35), rng.uniform(1.2, 1.8)
    else:
        pue, green, wue = rng.uniform(1.08, 1.22), rng.uniform(0.40, 0.85), rng.uniform(0.2, 0.9)
    return SiteProfile(pue=Decimal(f"{pue:.2f}"), green_share=Decimal(f"{green:.4f}"), wue=Decimal(f"{wue:.2f}"))


def _code(n: int, region: str = "110108") -> str:
    return with_check_character(f"91{region}MA{n:07d}")


class Command(BaseCommand):
    help = "Load the demo market (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "the demo market's sign-ins have a published password: not loaded with CX_ENV=production"
            )
        if Organisation.objects.filter(credit_code=_code(1)).exists():
            self.stdout.write("Demo market already loaded.")
            return
        with transaction.atomic():
            counts = self._load()
        self.stdout.write(self.style.SUCCESS("Demo market loaded: " + ", ".join(f"{v} {k}" for k, v in counts.items())))

    def _load(self) -> dict[str, int]:
        rng = random.Random(SEED)
        services.device_catalogue_ensure()
        devices = {d.code: d for d in DeviceModel.objects.all()}
        operator_org = Organisation.objects.create(
            name="National Compute Exchange Operations Centre",
            credit_code=_code(1),
            category="government",
            city="beijing",
            is_operator=True,
            verification_status="verified",
        )
        operator = services.operator_create(organisation=operator_org, username="operator", password=DEMO_PASSWORD)
        Token.objects.get_or_create(user=operator)

        n = 1
        for username, name, category, sme, city in BUYERS:
            n += 1
            _org, user = services.organisation_register(
                name=name,
                credit_code=_code(n),
                category=category,
                is_sme=sme,
                city=city,
                username=username,
                password=DEMO_PASSWORD,
            )
            Token.objects.get_or_create(user=user)
            billing.wallet_top_up(
                organisation=user.organisation, amount=DEMO_WALLET, reference="demo-opening-balance", actor=user
            )

        providers = sites = pools = 0
        for hub_code, names in PROVIDER_NAMES.items():
            hub = HUBS[hub_code]
            cities = [c.code for c in CITIES.values() if c.hub == hub_code]
            for name in names:
                n += 1
                providers += 1
                home = rng.choice(cities)
                _org, user = services.organisation_register(
                    name=f"{name} Co., Ltd.",
                    credit_code=_code(n),
                    category="provider",
                    city=home,
                    home_hub=hub_code,
                    username=f"provider-{providers:02d}",
                    password=DEMO_PASSWORD,
                )
                Token.objects.get_or_create(user=user)
                if providers % 11 != 0:  # a few stay pending, for the operator's review queue
                    services.provider_verify(organisation=user.organisation, actor=operator, reason="demo data")
                for s in range(1 if rng.random() < 0.6 else 2):
                    city = home if s == 0 else rng.choice(cities)
                    kind = "intelligent"
                    if hub.side is Side.EAST and rng.random() < 0.2:
                        kind = "edge"
                    elif rng.random() < 0.12:
                        kind = "supercomputing"
                    elif rng.random() < 0.2:
                        kind = "general"
                    profile = _profile(rng, hub.side)
                    site = services.site_create(
                        provider=user.organisation,
                        actor=user,
                        name=f"{name} {CITIES[city].name_en} {'ABCD'[s]}",
                        hub=hub_code,
                        city=city,
                        kind=kind,
                        pue=profile.pue,
                        green_share=profile.green_share,
                        wue=profile.wue,
                    )
                    sites += 1
                    weights = [east if hub.side is Side.EAST else west for *_, east, west in POOL_SHAPES]
                    for shape in rng.choices(POOL_SHAPES, weights=weights, k=rng.randint(2, 4)):
                        label, accel, per_node, cpu, cores, memory, _e, _w = shape
                        accelerated = accel is not None
                        services.pool_create(
                            site=site,
                            actor=user,
                            name=label,
                            node_count=rng.choice([4, 8, 16, 32, 64]) if accelerated else rng.choice([8, 16, 32, 64]),
                            cpu_model=devices[cpu],
                            cpu_cores_per_node=cores,
                            memory_gb_per_node=memory,
                            storage_gb_per_node=rng.choice([3840, 7680, 15360]),
                            network_gbps=rng.choice([100, 200, 400]) if accelerated else 25,
                            accelerator_model=devices[accel] if accel else None,
                            accelerators_per_node=per_node,
                            sharing_allowed=accelerated and per_node <= 4,
                        )
                        pools += 1
        return {"providers": providers, "sites": sites, "pools": pools, "buyers": len(BUYERS)}
