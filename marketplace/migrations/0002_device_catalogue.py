"""Load the device catalogue from marketplace/fixtures/device_catalogue.json.

Rerunnable: rows are matched by code and updated in place."""

import json
from decimal import Decimal
from pathlib import Path

from django.db import migrations

CATALOGUE = Path(__file__).resolve().parent.parent / "fixtures" / "device_catalogue.json"
DECIMALS = ("fp64_tflops", "fp32_tflops", "fp16_tflops", "int8_tops")


def load_catalogue(apps, schema_editor):
    DeviceModel = apps.get_model("marketplace", "DeviceModel")
    for entry in json.loads(CATALOGUE.read_text(encoding="utf-8")):
        values = {
            "name": entry["name"],
            "vendor": entry["vendor"],
            "kind": entry["kind"],
            "architecture": entry["architecture"] or "",
            "domestic": entry["domestic"],
            "software_stack": entry["software_stack"],
            "memory_gb": None if entry["memory_gb"] is None else Decimal(str(entry["memory_gb"])),
            "power_w": int(entry["power_w"]),
            "cores": int(entry["cores"]),
            "source": entry["source"],
            **{name: Decimal(entry[name]) for name in DECIMALS},
        }
        DeviceModel.objects.update_or_create(code=entry["code"], defaults=values)


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0001_initial")]

    operations = [migrations.RunPython(load_catalogue, migrations.RunPython.noop)]
