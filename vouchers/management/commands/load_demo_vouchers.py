"""Load the demo voucher programmes, modelled on real city programmes, from
``vouchers/fixtures/demo_programmes.json`` (data only: a new programme needs
no code). Partner lists and named centres are resolved from the demo market:
``partners.home_hubs`` names the hubs whose verified providers are partners,
``named_sites`` the hubs and kinds of the named computing centres. Windows
run over the current calendar year (China Standard Time).

With the demo market loaded, the demo SME (a Shenzhen start-up) is granted a
Shenzhen voucher and the demo hospital's Chengdu application waits for
review. Idempotent: running it again changes nothing."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from billing.domain.pricing import CST
from marketplace.models import Organisation, Site, User, VerificationStatus
from vouchers import services
from vouchers.models import ApplicationStatus, VoucherApplication, VoucherProgramme

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "demo_programmes.json"
RESOLVED = {"budget", "partners", "named_sites"}


def demo_programmes() -> list[dict[str, Any]]:
    return json.loads(DATA.read_text(encoding="utf-8"))


class Command(BaseCommand):
    help = "Load the demo voucher programmes (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        operator = User.objects.filter(username="operator", role="operator").first()
        now = timezone.now()
        year_start = now.astimezone(CST).replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        made = []
        for data in demo_programmes():
            if VoucherProgramme.objects.filter(name=data["name"]).exists():
                continue
            providers = self._partners(data.get("partners"))
            sites = self._sites(data.get("named_sites"))
            if (data.get("partners") and not providers) or (data.get("named_sites") and not sites):
                self.stdout.write(self.style.WARNING(f"Skipped {data['name']}: load the demo market first."))
                continue
            values = {k: v for k, v in data.items() if k not in RESOLVED}
            values["application_opens"] = year_start
            values["application_closes"] = year_start.replace(year=year_start.year + 1)
            with transaction.atomic():
                services.programme_create(
                    actor=operator,
                    values=values,
                    providers=providers,
                    sites=sites,
                    budget=Decimal(data["budget"]),
                    funding_reference=f"demo-{year_start.year}",
                )
            made.append(data["name"])
        self._demo_applications(operator)
        if made:
            self.stdout.write(self.style.SUCCESS(f"Demo voucher programmes loaded: {', '.join(made)}"))
        else:
            self.stdout.write("Demo voucher programmes already loaded.")

    def _partners(self, spec: dict[str, Any] | None) -> list[Organisation]:
        if not spec:
            return []
        return list(
            Organisation.objects.filter(
                category="provider",
                verification_status=VerificationStatus.VERIFIED,
                home_hub__in=spec.get("home_hubs", []),
            ).order_by("id")
        )

    def _sites(self, spec: dict[str, Any] | None) -> list[Site]:
        if not spec:
            return []
        return list(Site.objects.filter(hub__in=spec.get("hubs", []), kind__in=spec.get("kinds", [])).order_by("id"))

    def _demo_applications(self, operator: User | None) -> None:
        for username, programme_name, amount, flags, approve in (
            ("buyer-sme", "Shenzhen compute vouchers", Decimal("200000.00"), ["startup"], True),
            ("buyer-hospital", "Chengdu compute vouchers", Decimal("500000.00"), [], False),
        ):
            user = User.objects.filter(username=username).first()
            programme = VoucherProgramme.objects.filter(name=programme_name).first()
            if user is None or programme is None or operator is None:
                continue
            if VoucherApplication.objects.filter(programme=programme, applicant_id=user.organisation_id).exists():
                continue
            application = services.application_submit(
                user=user,
                programme=programme,
                requested_amount=amount,
                intended_use="Training and serving our models on the exchange (demo data).",
                flags=flags,
            )
            if approve and application.status == ApplicationStatus.PENDING_REVIEW:
                services.application_approve(
                    application=application, actor=operator, flags=flags, reason="demo data: checks passed"
                )
