"""Properties of the normalised compute unit (NCU) arithmetic in marketplace.domain.units.

Buyers compare offers on different hardware by price per NCU-hour and are metered in
NCU-hours, so these are the rules a buyer or provider would notice if broken: a pool is
the sum of its nodes, a node the sum of its slices, a price survives the conversion to
units and back, and longer leases never cost fewer units.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal, getcontext
from importlib.resources import files

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from marketplace.domain.units import (
    ComputeClass,
    DeviceKind,
    DeviceSpec,
    PoolShape,
    Precision,
    SiteKind,
    compute_class_for,
    ncu_hours,
    ncu_per_accelerator,
    ncu_per_core,
    node_ncu,
    pool_ncu,
    price_per_ncu_hour,
    quantise_units,
    reference_precision,
    slice_ncu,
    unit_precision,
)

PROPERTIES = settings(max_examples=200, deadline=None)
FEN = Decimal("0.01")


# --------------------------------------------------------------------------- helpers


def catalogue_spec(code: str) -> DeviceSpec:
    text = (files("marketplace") / "fixtures" / "device_catalogue.json").read_text(encoding="utf-8")
    record = next(r for r in json.loads(text) if r["code"] == code)
    return DeviceSpec(
        code=record["code"],
        kind=DeviceKind(record["kind"]),
        fp64_tflops=Decimal(record["fp64_tflops"]),
        fp32_tflops=Decimal(record["fp32_tflops"]),
        fp16_tflops=Decimal(record["fp16_tflops"]),
        int8_tops=Decimal(record["int8_tops"]),
        cores=record["cores"],
    )


def assert_close(actual: Decimal, expected: Decimal) -> None:
    """Equal up to the rounding of a few operations at the Decimal context precision."""
    tolerance = max(abs(expected), Decimal(1)) * Decimal(10) ** (4 - getcontext().prec)
    assert abs(actual - expected) <= tolerance, (actual, expected)


# --------------------------------------------------------------------------- strategies

peaks = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(5000), places=4)
peaks_or_zero = st.just(Decimal(0)) | peaks
factors = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1.5"), places=3)
node_counts = st.integers(min_value=1, max_value=4096)
prices = st.decimals(min_value=FEN, max_value=Decimal(100_000), places=2)


@st.composite
def accelerators(draw: st.DrawFn) -> DeviceSpec:
    return DeviceSpec(
        code="accelerator",
        kind=draw(st.sampled_from([k for k in DeviceKind if k is not DeviceKind.CPU])),
        fp64_tflops=draw(peaks_or_zero),
        fp32_tflops=draw(peaks),
        fp16_tflops=draw(peaks),
        int8_tops=draw(peaks_or_zero),
    )


@st.composite
def cpus(draw: st.DrawFn) -> DeviceSpec:
    return DeviceSpec(
        code="cpu",
        kind=DeviceKind.CPU,
        fp64_tflops=draw(peaks),
        fp32_tflops=draw(peaks),
        fp16_tflops=draw(peaks),
        int8_tops=draw(peaks_or_zero),
        cores=draw(st.integers(min_value=1, max_value=192)),
    )


@st.composite
def accelerated_pools(draw: st.DrawFn) -> PoolShape:
    site = draw(st.sampled_from(SiteKind))
    return PoolShape(
        compute_class=compute_class_for(site, accelerated=True),
        node_count=draw(node_counts),
        cpu=draw(st.none() | cpus()),
        cpu_cores_per_node=draw(st.integers(min_value=0, max_value=256)),
        accelerator=draw(accelerators()),
        accelerators_per_node=draw(st.integers(min_value=1, max_value=16)),
        benchmark_factor=draw(factors),
    )


@st.composite
def cpu_only_pools(draw: st.DrawFn) -> PoolShape:
    site = draw(st.sampled_from(SiteKind))
    return PoolShape(
        compute_class=compute_class_for(site, accelerated=False),
        node_count=draw(node_counts),
        cpu=draw(cpus()),
        cpu_cores_per_node=draw(st.integers(min_value=1, max_value=512)),
        accelerator=None,
        accelerators_per_node=0,
        benchmark_factor=draw(factors),
    )


pools = accelerated_pools() | cpu_only_pools()


# --------------------------------------------------------------------------- pools and nodes


@PROPERTIES
@given(pools)
def test_a_pool_holds_node_count_times_the_units_of_one_node(shape: PoolShape) -> None:
    assert pool_ncu(shape) == shape.node_count * node_ncu(shape)
    assert pool_ncu(shape) == shape.node_count * pool_ncu(replace(shape, node_count=1))


@PROPERTIES
@given(accelerated_pools(), node_counts)
def test_two_accelerated_pools_of_the_same_nodes_add_up_exactly(shape: PoolShape, more: int) -> None:
    bigger = replace(shape, node_count=shape.node_count + more)
    assert pool_ncu(bigger) == pool_ncu(shape) + pool_ncu(replace(shape, node_count=more))


@PROPERTIES
@given(cpu_only_pools(), node_counts)
def test_two_cpu_pools_of_the_same_nodes_add_up(shape: PoolShape, more: int) -> None:
    # A core's share of the socket peak is a division, so sums agree to the context precision.
    bigger = replace(shape, node_count=shape.node_count + more)
    assert_close(pool_ncu(bigger), pool_ncu(shape) + pool_ncu(replace(shape, node_count=more)))


@PROPERTIES
@given(accelerated_pools(), st.integers(min_value=1, max_value=16))
def test_units_grow_linearly_with_the_accelerators_per_node(shape: PoolShape, count: int) -> None:
    resized = replace(shape, accelerators_per_node=count)
    assert node_ncu(resized) == count * ncu_per_accelerator(shape)
    assert pool_ncu(resized) * shape.accelerators_per_node == pool_ncu(shape) * count


@PROPERTIES
@given(accelerated_pools(), st.integers(min_value=0, max_value=512))
def test_the_cpu_cores_of_an_accelerated_node_add_no_units(shape: PoolShape, cores: int) -> None:
    assert node_ncu(replace(shape, cpu_cores_per_node=cores)) == node_ncu(shape)


@PROPERTIES
@given(cpu_only_pools(), st.integers(min_value=1, max_value=512))
def test_a_cpu_node_counts_its_cores(shape: PoolShape, cores: int) -> None:
    resized = replace(shape, cpu_cores_per_node=cores)
    assert node_ncu(resized) == cores * ncu_per_core(shape)


@PROPERTIES
@given(accelerated_pools(), factors)
def test_accelerated_units_scale_exactly_with_the_benchmark_factor(shape: PoolShape, factor: Decimal) -> None:
    measured = replace(shape, benchmark_factor=factor)
    unmeasured = replace(shape, benchmark_factor=Decimal(1))
    assert node_ncu(measured) == factor * node_ncu(unmeasured)
    assert node_ncu(measured) * shape.benchmark_factor == node_ncu(shape) * factor


@PROPERTIES
@given(cpu_only_pools(), factors)
def test_cpu_units_scale_with_the_benchmark_factor(shape: PoolShape, factor: Decimal) -> None:
    # A core's share of the socket peak is a division, so this holds to the context precision.
    measured = replace(shape, benchmark_factor=factor)
    assert_close(node_ncu(measured), factor * node_ncu(replace(shape, benchmark_factor=Decimal(1))))


@PROPERTIES
@given(pools)
def test_an_unmeasured_pool_counts_its_published_peak(shape: PoolShape) -> None:
    shape = replace(shape, benchmark_factor=Decimal(1))
    precision = unit_precision(shape)
    if shape.accelerated:
        assert node_ncu(shape) == shape.accelerators_per_node * shape.accelerator.peak(precision)
    else:
        assert_close(node_ncu(shape), shape.cpu_cores_per_node * shape.cpu.peak(precision) / shape.cpu.cores)


# --------------------------------------------------------------------------- slices


@PROPERTIES
@given(accelerated_pools())
def test_a_thousand_thousandths_is_one_whole_accelerator(shape: PoolShape) -> None:
    assert slice_ncu(shape, accelerator_thousandths=1000) == ncu_per_accelerator(shape)
    whole_node = 1000 * shape.accelerators_per_node
    assert slice_ncu(shape, accelerator_thousandths=whole_node) == node_ncu(shape)
    assert slice_ncu(shape, accelerator_thousandths=0) == 0


@PROPERTIES
@given(accelerated_pools(), st.integers(min_value=0, max_value=16_000), st.integers(min_value=0, max_value=16_000))
def test_accelerator_slices_add_up(shape: PoolShape, a: int, b: int) -> None:
    together = slice_ncu(shape, accelerator_thousandths=a + b)
    assert together == slice_ncu(shape, accelerator_thousandths=a) + slice_ncu(shape, accelerator_thousandths=b)


@PROPERTIES
@given(accelerated_pools(), st.integers(min_value=0, max_value=999))
def test_a_smaller_slice_never_holds_more_units(shape: PoolShape, a: int) -> None:
    assert slice_ncu(shape, accelerator_thousandths=a) <= slice_ncu(shape, accelerator_thousandths=a + 1)


@PROPERTIES
@given(cpu_only_pools(), st.integers(min_value=0, max_value=256), st.integers(min_value=0, max_value=256))
def test_core_slices_add_up(shape: PoolShape, a: int, b: int) -> None:
    assert slice_ncu(shape, cores=shape.cpu_cores_per_node) == node_ncu(shape)
    assert_close(slice_ncu(shape, cores=a + b), slice_ncu(shape, cores=a) + slice_ncu(shape, cores=b))


@PROPERTIES
@given(pools, st.integers(min_value=1, max_value=1000))
def test_a_negative_slice_is_refused(shape: PoolShape, n: int) -> None:
    with pytest.raises(ValueError):
        slice_ncu(shape, accelerator_thousandths=-n)
    with pytest.raises(ValueError):
        slice_ncu(shape, cores=-n)


@PROPERTIES
@given(cpu_only_pools(), st.integers(min_value=1, max_value=16_000))
def test_accelerator_thousandths_on_a_cpu_only_pool_are_refused(shape: PoolShape, thousandths: int) -> None:
    # Otherwise the slice would be priced at zero units.
    with pytest.raises(ValueError):
        slice_ncu(shape, accelerator_thousandths=thousandths)


@PROPERTIES
@given(accelerated_pools(), st.integers(min_value=1, max_value=512))
def test_cores_on_an_accelerated_pool_are_refused(shape: PoolShape, cores: int) -> None:
    with pytest.raises(ValueError):
        slice_ncu(shape, cores=cores)


# --------------------------------------------------------------------------- prices


@PROPERTIES
@given(pools, prices)
def test_a_node_hour_price_converts_to_an_ncu_hour_price_and_back(shape: PoolShape, price: Decimal) -> None:
    units = node_ncu(shape)
    assume(units > 0)
    back = price_per_ncu_hour(price, shape) * units
    assert_close(back, price)
    assert back.quantize(FEN) == price


@PROPERTIES
@given(pools, prices, prices)
def test_a_dearer_node_hour_is_a_dearer_ncu_hour(shape: PoolShape, a: Decimal, b: Decimal) -> None:
    assume(node_ncu(shape) > 0 and a < b)
    assert price_per_ncu_hour(a, shape) < price_per_ncu_hour(b, shape)


@PROPERTIES
@given(accelerated_pools(), prices)
def test_a_node_with_no_units_has_no_unit_price(shape: PoolShape, price: Decimal) -> None:
    with pytest.raises(ValueError):
        price_per_ncu_hour(price, replace(shape, benchmark_factor=Decimal(0)))


# --------------------------------------------------------------------------- NCU-hours

ncus = st.decimals(min_value=Decimal(0), max_value=Decimal(10_000_000), places=6)
seconds = st.integers(min_value=0, max_value=400 * 24 * 3600)


@PROPERTIES
@given(ncus, seconds, seconds)
def test_a_longer_lease_never_meters_fewer_ncu_hours(ncu: Decimal, s1: int, s2: int) -> None:
    short, long = sorted((s1, s2))
    assert ncu_hours(ncu, short) <= ncu_hours(ncu, long)


@PROPERTIES
@given(ncus, st.integers(min_value=0, max_value=10_000))
def test_one_hour_meters_the_units_themselves(ncu: Decimal, hours: int) -> None:
    assert ncu_hours(ncu, 3600) == quantise_units(ncu)
    assert ncu_hours(ncu, Decimal(3600)) == quantise_units(ncu)
    assert ncu_hours(ncu, hours * 3600) == quantise_units(ncu * hours)
    assert ncu_hours(ncu, 0) == 0


@PROPERTIES
@given(ncus, seconds)
def test_ncu_hours_are_stated_to_four_decimals(ncu: Decimal, secs: int) -> None:
    metered = ncu_hours(ncu, secs)
    assert metered == metered.quantize(Decimal("0.0001"))
    assert abs(metered - ncu * secs / 3600) <= Decimal("0.00005")


# --------------------------------------------------------------------------- classes and precisions


@pytest.mark.parametrize(
    ("compute_class", "accelerated", "expected"),
    [
        (ComputeClass.GENERAL, False, Precision.FP32),
        (ComputeClass.GENERAL, True, Precision.FP32),
        (ComputeClass.INTELLIGENT, True, Precision.FP16),
        (ComputeClass.INTELLIGENT, False, Precision.FP16),
        (ComputeClass.SUPER, True, Precision.FP64),
        (ComputeClass.SUPER, False, Precision.FP64),
        (ComputeClass.EDGE, True, Precision.FP16),
        (ComputeClass.EDGE, False, Precision.FP32),
    ],
)
def test_each_class_counts_in_its_reference_precision(
    compute_class: ComputeClass, accelerated: bool, expected: Precision
) -> None:
    assert reference_precision(compute_class, accelerated) is expected


@pytest.mark.parametrize(
    ("site", "accelerated", "expected"),
    [
        (SiteKind.GENERAL, False, ComputeClass.GENERAL),
        (SiteKind.GENERAL, True, ComputeClass.INTELLIGENT),
        (SiteKind.INTELLIGENT, False, ComputeClass.GENERAL),
        (SiteKind.INTELLIGENT, True, ComputeClass.INTELLIGENT),
        (SiteKind.SUPERCOMPUTING, False, ComputeClass.SUPER),
        (SiteKind.SUPERCOMPUTING, True, ComputeClass.SUPER),
        (SiteKind.EDGE, False, ComputeClass.EDGE),
        (SiteKind.EDGE, True, ComputeClass.EDGE),
    ],
)
def test_the_site_kind_and_accelerators_decide_the_class(
    site: SiteKind, accelerated: bool, expected: ComputeClass
) -> None:
    assert compute_class_for(site, accelerated) is expected


@PROPERTIES
@given(accelerated_pools())
def test_an_accelerated_pool_counts_its_accelerators_at_the_class_precision(shape: PoolShape) -> None:
    expected = {
        ComputeClass.INTELLIGENT: Precision.FP16,
        ComputeClass.SUPER: Precision.FP64,
        ComputeClass.EDGE: Precision.FP16,
    }[shape.compute_class]
    assert unit_precision(shape) is expected
    assert ncu_per_accelerator(shape) == shape.accelerator.peak(expected) * shape.benchmark_factor


@PROPERTIES
@given(cpu_only_pools())
def test_a_cpu_pool_counts_its_cores_at_the_class_precision(shape: PoolShape) -> None:
    expected = {
        ComputeClass.GENERAL: Precision.FP32,
        ComputeClass.SUPER: Precision.FP64,
        ComputeClass.EDGE: Precision.FP32,
    }[shape.compute_class]
    assert unit_precision(shape) is expected
    assert ncu_per_core(shape) == shape.cpu.per_core(expected) * shape.benchmark_factor


@PROPERTIES
@given(accelerators(), st.sampled_from(Precision))
def test_only_a_cpu_has_a_per_core_figure(device: DeviceSpec, precision: Precision) -> None:
    with pytest.raises(ValueError):
        device.per_core(precision)
    with pytest.raises(ValueError):
        replace(device, cores=64).per_core(precision)


@PROPERTIES
@given(cpus(), st.sampled_from(Precision))
def test_a_cpu_without_a_core_count_has_no_per_core_figure(cpu: DeviceSpec, precision: Precision) -> None:
    assert cpu.per_core(precision) * cpu.cores == pytest.approx(cpu.peak(precision))
    with pytest.raises(ValueError):
        replace(cpu, cores=0).per_core(precision)


def test_a_pool_without_accelerators_has_no_per_accelerator_units() -> None:
    cpu_pool = PoolShape(ComputeClass.GENERAL, 1, catalogue_spec("amd-epyc-9654"), 96, None, 0)
    with pytest.raises(ValueError):
        ncu_per_accelerator(cpu_pool)
    empty = PoolShape(ComputeClass.GENERAL, 1, None, 0, None, 0)
    with pytest.raises(ValueError):
        ncu_per_core(empty)


# --------------------------------------------------------------------------- worked examples from the catalogue


def test_eight_h100_at_factor_0_9_are_7123_68_ncu() -> None:
    # The example in the units module docstring, with the catalogue's H100 figure.
    h100 = catalogue_spec("nvidia-h100-sxm5-80gb")
    shape = PoolShape(
        compute_class=compute_class_for(SiteKind.INTELLIGENT, accelerated=True),
        node_count=1,
        cpu=catalogue_spec("intel-xeon-platinum-8480plus"),
        cpu_cores_per_node=112,
        accelerator=h100,
        accelerators_per_node=8,
        benchmark_factor=Decimal("0.9"),
    )
    assert node_ncu(shape) == Decimal("7123.68")
    assert quantise_units(node_ncu(shape)) == Decimal("7123.6800")
    assert slice_ncu(shape, accelerator_thousandths=500) == Decimal("445.23")
    assert ncu_hours(node_ncu(shape), 90 * 60) == Decimal("10685.5200")


def test_a_dual_socket_xeon_node_is_14_336_general_ncu() -> None:
    # 2 x 56-core Xeon 8480+ at 7.168 TFLOPS FP32 per socket, unmeasured.
    shape = PoolShape(
        compute_class=compute_class_for(SiteKind.GENERAL, accelerated=False),
        node_count=10,
        cpu=catalogue_spec("intel-xeon-platinum-8480plus"),
        cpu_cores_per_node=112,
        accelerator=None,
        accelerators_per_node=0,
    )
    assert node_ncu(shape) == Decimal("14.336")
    assert pool_ncu(shape) == Decimal("143.36")
    assert price_per_ncu_hour(Decimal("14.34"), shape).quantize(FEN) == Decimal("1.00")


def test_unit_prices_show_which_offer_is_cheaper_across_hardware() -> None:
    # Per node-hour the A100 node looks cheaper; per unit of FP16 work the H100 node is.
    a100 = PoolShape(ComputeClass.INTELLIGENT, 4, None, 0, catalogue_spec("nvidia-a100-sxm4-80gb"), 8)
    h100 = PoolShape(ComputeClass.INTELLIGENT, 4, None, 0, catalogue_spec("nvidia-h100-sxm5-80gb"), 8)
    a100_price, h100_price = Decimal(80), Decimal(200)
    assert a100_price < h100_price
    assert price_per_ncu_hour(h100_price, h100) < price_per_ncu_hour(a100_price, a100)
    assert price_per_ncu_hour(a100_price, a100).quantize(Decimal("0.0001")) == Decimal("0.0321")
    assert price_per_ncu_hour(h100_price, h100).quantize(Decimal("0.0001")) == Decimal("0.0253")


def test_a_supercomputing_pool_counts_fp64_so_an_fp64_poor_card_is_worth_little() -> None:
    a100 = PoolShape(ComputeClass.SUPER, 1, None, 0, catalogue_spec("nvidia-a100-sxm4-80gb"), 8)
    h20 = PoolShape(ComputeClass.SUPER, 1, None, 0, catalogue_spec("nvidia-h20-96gb"), 8)
    assert node_ncu(a100) == Decimal("156.0")
    assert node_ncu(h20) == Decimal(8)
    ascend = PoolShape(ComputeClass.SUPER, 1, None, 0, catalogue_spec("huawei-ascend-910b"), 8)
    with pytest.raises(ValueError):
        price_per_ncu_hour(Decimal(100), ascend)


@given(st.integers(min_value=-400 * 24 * 3600, max_value=-1))
def test_negative_time_meters_nothing_and_says_so(negative: int) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        ncu_hours(Decimal(1), negative)
    with pytest.raises(ValueError, match="cannot be negative"):
        ncu_hours(Decimal(-1), 3600)


def test_a_pool_shape_refuses_negative_counts_and_factors() -> None:
    gpu = catalogue_spec("nvidia-h100-sxm5-80gb")
    good = PoolShape(ComputeClass.INTELLIGENT, 1, None, 0, gpu, 8)
    for bad in (
        {"node_count": -1},
        {"accelerators_per_node": -8},
        {"cpu_cores_per_node": -2},
        {"benchmark_factor": Decimal(0)},
        {"benchmark_factor": Decimal("-0.5")},
    ):
        with pytest.raises(ValueError):
            replace(good, **bad)
