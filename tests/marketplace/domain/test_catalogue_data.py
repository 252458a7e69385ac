"""The device catalogue fixture is the data every offer is priced from: check its shape and its plausibility.

A typo here (a sparse figure where a dense one belongs, a CPU figure for the whole
node instead of one socket, a CUDA card tagged CANN) silently misprices the market,
so each rule below is one such mistake the data must not contain.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from typing import Any

import pytest

from marketplace.domain.units import CpuArchitecture, DeviceKind, DeviceSpec, Precision, SoftwareStack

KEYS = {
    "code",
    "name",
    "vendor",
    "kind",
    "architecture",
    "domestic",
    "software_stack",
    "fp64_tflops",
    "fp32_tflops",
    "fp16_tflops",
    "int8_tops",
    "memory_gb",
    "power_w",
    "cores",
    "source",
}
FIGURES = ("fp64_tflops", "fp32_tflops", "fp16_tflops", "int8_tops")
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
URL = re.compile(r"https?://\S+")

# Which software stacks a device of each kind can carry (a CUDA job cannot run on CANN).
STACKS_BY_KIND = {
    DeviceKind.CPU: {SoftwareStack.CPU},
    DeviceKind.GPU: {SoftwareStack.CUDA, SoftwareStack.ROCM_DTK},
    DeviceKind.NPU: {SoftwareStack.CANN},
    DeviceKind.DCU: {SoftwareStack.ROCM_DTK},
    DeviceKind.MLU: {SoftwareStack.NEUWARE},
    DeviceKind.XPU: {SoftwareStack.KUNLUN_XPU},
}
DOMESTIC_VENDORS = {"Huawei", "Hygon", "Cambricon", "Kunlunxin", "Phytium"}
FOREIGN_VENDORS = {"NVIDIA", "AMD", "Intel"}

REQUIRED_CODES = {
    "nvidia-h100-sxm5-80gb",
    "nvidia-h800-sxm5-80gb",
    "nvidia-h20-96gb",
    "nvidia-a100-sxm4-80gb",
    "nvidia-a800-sxm4-80gb",
    "nvidia-l40s-48gb",
    "nvidia-l20-48gb",
    "nvidia-a10-24gb",
    "nvidia-rtx-4090-24gb",
    "nvidia-t4-16gb",
    "nvidia-v100-sxm2-32gb",
    "nvidia-v100-pcie-16gb",
    "nvidia-p100-pcie-16gb",
    "huawei-ascend-910b",
    "cambricon-mlu370-x8",
    "kunlunxin-r200",
    "intel-xeon-platinum-8480plus",
    "amd-epyc-9654",
    "huawei-kunpeng-920-6426",
    "hygon-c86-7390",
    "phytium-ft-2000plus-64",
}


def load_catalogue() -> list[dict[str, Any]]:
    text = (files("marketplace") / "fixtures" / "device_catalogue.json").read_text(encoding="utf-8")
    return json.loads(text)


def to_spec(record: dict[str, Any]) -> DeviceSpec:
    return DeviceSpec(
        code=record["code"],
        kind=DeviceKind(record["kind"]),
        fp64_tflops=Decimal(record["fp64_tflops"]),
        fp32_tflops=Decimal(record["fp32_tflops"]),
        fp16_tflops=Decimal(record["fp16_tflops"]),
        int8_tops=Decimal(record["int8_tops"]),
        cores=record["cores"],
    )


def figure(record: dict[str, Any], key: str) -> Decimal:
    return Decimal(record[key])


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


CATALOGUE = load_catalogue()
CPUS = [r for r in CATALOGUE if r["kind"] == DeviceKind.CPU]
ACCELERATORS = [r for r in CATALOGUE if r["kind"] != DeviceKind.CPU]


def by_code(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"argvalues": records, "ids": [str(r.get("code")) for r in records]}


def test_the_catalogue_lists_at_least_22_devices_of_which_6_domestic() -> None:
    assert isinstance(CATALOGUE, list)
    assert len(CATALOGUE) >= 22
    assert sum(1 for r in CATALOGUE if r["domestic"] is True) >= 6


def test_the_catalogue_has_cpus_and_accelerators_of_both_origins() -> None:
    assert {r["architecture"] for r in CPUS} == {CpuArchitecture.X86_64, CpuArchitecture.AARCH64}
    assert any(r["domestic"] for r in CPUS) and any(not r["domestic"] for r in CPUS)
    assert any(r["domestic"] for r in ACCELERATORS) and any(not r["domestic"] for r in ACCELERATORS)


def test_the_models_the_market_expects_are_listed() -> None:
    codes = {r["code"] for r in CATALOGUE}
    assert REQUIRED_CODES - codes == set()


def test_codes_are_unique_lowercase_slugs() -> None:
    codes = [r["code"] for r in CATALOGUE]
    assert len(codes) == len(set(codes))
    bad = [c for c in codes if not isinstance(c, str) or not SLUG.fullmatch(c)]
    assert bad == []


def test_display_names_are_unique() -> None:
    names = [r["name"] for r in CATALOGUE]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_every_record_has_exactly_the_agreed_keys(record: dict[str, Any]) -> None:
    assert set(record) == KEYS


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_every_field_has_the_right_type_and_an_enum_value(record: dict[str, Any]) -> None:
    for key in ("code", "name", "vendor", "source"):
        assert isinstance(record[key], str) and record[key].strip(), key
    assert record["kind"] in {k.value for k in DeviceKind}
    assert record["software_stack"] in {s.value for s in SoftwareStack}
    assert record["architecture"] is None or record["architecture"] in {a.value for a in CpuArchitecture}
    assert isinstance(record["domestic"], bool)
    assert isinstance(record["cores"], int) and not isinstance(record["cores"], bool)
    assert is_number(record["power_w"]) and record["power_w"] > 0
    assert record["memory_gb"] is None or (is_number(record["memory_gb"]) and record["memory_gb"] > 0)


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_figures_are_decimal_strings_that_are_finite_and_not_negative(record: dict[str, Any]) -> None:
    for key in FIGURES:
        assert isinstance(record[key], str), f"{key} must be a string so no float rounding creeps in"
        try:
            value = Decimal(record[key])
        except InvalidOperation:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"{key}={record[key]!r} is not a decimal")
        assert value.is_finite() and value >= 0, key


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_every_figure_fits_the_column_the_data_migration_writes(record: dict[str, Any]) -> None:
    # DeviceModel keeps figures as DECIMAL(10, 3), memory as DECIMAL(8, 2) and power as an integer;
    # anything finer would be rounded silently on load and the table would disagree with this file.
    for key in FIGURES:
        value = Decimal(record[key])
        assert value == value.quantize(Decimal("0.001")), f"{key}={value} has more than three decimals"
        assert value < Decimal(10) ** 7, key
    if record["memory_gb"] is not None:
        memory = Decimal(str(record["memory_gb"]))
        assert memory == memory.quantize(Decimal("0.01")) and memory < Decimal(10) ** 6
    assert float(record["power_w"]).is_integer()


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_every_record_cites_a_source_with_an_address(record: dict[str, Any]) -> None:
    assert URL.search(record["source"]), record["source"]


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_the_software_stack_fits_the_device_kind(record: dict[str, Any]) -> None:
    assert SoftwareStack(record["software_stack"]) in STACKS_BY_KIND[DeviceKind(record["kind"])]


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_the_domestic_flag_follows_the_vendor(record: dict[str, Any]) -> None:
    assert record["vendor"] in DOMESTIC_VENDORS | FOREIGN_VENDORS, "classify the new vendor here"
    assert record["domestic"] is (record["vendor"] in DOMESTIC_VENDORS)


@pytest.mark.parametrize("record", **by_code(CPUS))
def test_a_cpu_is_one_socket_with_cores_an_architecture_and_no_device_memory(record: dict[str, Any]) -> None:
    assert record["cores"] > 0
    assert record["architecture"] is not None
    assert record["memory_gb"] is None
    assert figure(record, "fp64_tflops") > 0


@pytest.mark.parametrize("record", **by_code(CPUS))
def test_a_cpu_follows_the_fma_formula(record: dict[str, Any]) -> None:
    # cores x clock x FLOPs/cycle: a SIMD FMA unit does twice as many FP32 as FP64 operations
    # (each figure rounded to three decimals, so allow 1.5 thousandths between them).
    assert abs(figure(record, "fp32_tflops") - 2 * figure(record, "fp64_tflops")) <= Decimal("0.0015")
    assert figure(record, "fp16_tflops") >= figure(record, "fp32_tflops")
    # 4 to 200 GFLOPS FP64 per core spans every server core from 128-bit NEON to AVX-512;
    # outside it the figure is for a whole node, or in GFLOPS rather than TFLOPS.
    per_core = figure(record, "fp64_tflops") / record["cores"]
    assert Decimal("0.004") <= per_core <= Decimal("0.2")


@pytest.mark.parametrize("record", **by_code(ACCELERATORS))
def test_an_accelerator_has_device_memory_and_no_cores_or_cpu_architecture(record: dict[str, Any]) -> None:
    assert record["cores"] == 0
    assert record["architecture"] is None
    assert record["memory_gb"] is not None and record["memory_gb"] > 0


@pytest.mark.parametrize("record", **by_code(ACCELERATORS))
def test_an_accelerator_is_fastest_at_low_precision(record: dict[str, Any]) -> None:
    # Tensor/matrix units (or packed half precision) make FP16 at least the FP32 rate,
    # and no accelerator here does FP64 faster than FP32.
    assert figure(record, "fp16_tflops") > 0
    assert figure(record, "fp16_tflops") >= figure(record, "fp32_tflops") >= figure(record, "fp64_tflops")


@pytest.mark.parametrize("record", **by_code(ACCELERATORS))
def test_accelerator_figures_are_dense_not_sparse(record: dict[str, Any]) -> None:
    # Dense FP16 per board watt tops out near 2.25 TFLOPS/W (B200: 2,250 at 1,000 W; L4: 121 at 72 W
    # is 1.7). A structured-sparsity figure doubles that, so a number above 2.5 is a sparse one.
    assert figure(record, "fp16_tflops") / Decimal(str(record["power_w"])) <= Decimal("2.5")


@pytest.mark.parametrize("record", **by_code(CATALOGUE))
def test_every_record_converts_to_a_device_spec(record: dict[str, Any]) -> None:
    spec = to_spec(record)
    assert spec.kind is DeviceKind(record["kind"])
    assert spec.peak(Precision.FP16) == Decimal(record["fp16_tflops"])
    assert spec.peak(Precision.FP64) == Decimal(record["fp64_tflops"])
    if spec.kind is DeviceKind.CPU:
        assert abs(spec.per_core(Precision.FP32) * spec.cores - spec.fp32_tflops) <= Decimal("1e-20")
    else:
        with pytest.raises(ValueError):
            spec.per_core(Precision.FP32)


def test_the_h100_figure_is_the_one_the_unit_definition_is_written_against() -> None:
    h100 = next(r for r in CATALOGUE if r["code"] == "nvidia-h100-sxm5-80gb")
    assert Decimal(h100["fp16_tflops"]) == Decimal("989.4")
