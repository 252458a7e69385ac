"""The normalised compute unit (NCU, 统一度量) and compute classes.

One **NCU** is one TFLOPS (10^12 floating-point operations per second) of
*delivered* dense throughput at the reference precision of the capacity's
compute class; one **NCU-hour** is that throughput for one hour.

* Reference precision, following the convention of China's compute-power
  index (the one behind the plan's CP = CP_general + CP_intelligent +
  CP_super): general-purpose (通用) capacity counts in FP32, intelligent
  (智能) capacity in FP16/BF16, supercomputing (超级) capacity in FP64.
  Edge (边缘) capacity counts in FP16 when it has accelerators, else FP32.
* Delivered = published peak dense throughput × the pool's measured
  benchmark factor (operator-verified; 1 until measured).
* An accelerated pool's units come from its accelerators; a CPU-only pool's
  from its cores (socket peak ÷ cores per socket).

So a node of 8 × H100 SXM (989.4 TFLOPS FP16 dense each) with factor 0.9 is
8 × 989.4 × 0.9 = 7,123.68 NCU; a price of ¥X per NCU-hour compares offers on
different hardware of the same class directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

NCU_PLACES = Decimal("0.0001")  # units are stated to four decimals


class Precision(StrEnum):
    FP64 = "fp64"
    FP32 = "fp32"
    FP16 = "fp16"  # FP16/BF16 dense, no sparsity
    INT8 = "int8"  # TOPS


class ComputeClass(StrEnum):
    GENERAL = "general"  # 通用
    INTELLIGENT = "intelligent"  # 智能
    SUPER = "super"  # 超级
    EDGE = "edge"  # 边缘


class SiteKind(StrEnum):
    GENERAL = "general"  # general data centre
    INTELLIGENT = "intelligent"  # 智算中心
    SUPERCOMPUTING = "supercomputing"  # 超算中心
    EDGE = "edge"  # 边缘


class SoftwareStack(StrEnum):
    """What a workload is built for; a CUDA job cannot run on CANN."""

    CUDA = "cuda"  # NVIDIA
    CANN = "cann"  # Huawei Ascend
    ROCM_DTK = "rocm-dtk"  # AMD ROCm and Hygon DTK
    NEUWARE = "neuware"  # Cambricon
    KUNLUN_XPU = "kunlun-xpu"  # Kunlunxin XPU SDK
    CPU = "cpu"  # CPU-only (the pool's CPU architecture must match)


class CpuArchitecture(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


class DeviceKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    DCU = "dcu"
    MLU = "mlu"
    XPU = "xpu"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Published peak dense throughput of one device (a CPU: one socket)."""

    code: str
    kind: DeviceKind
    fp64_tflops: Decimal
    fp32_tflops: Decimal
    fp16_tflops: Decimal
    int8_tops: Decimal
    cores: int = 0  # CPUs only: cores per socket

    def peak(self, precision: Precision) -> Decimal:
        return {
            Precision.FP64: self.fp64_tflops,
            Precision.FP32: self.fp32_tflops,
            Precision.FP16: self.fp16_tflops,
            Precision.INT8: self.int8_tops,
        }[precision]

    def per_core(self, precision: Precision) -> Decimal:
        if self.kind is not DeviceKind.CPU or self.cores <= 0:
            raise ValueError(f"{self.code} is not a CPU with a core count")
        return self.peak(precision) / self.cores


@dataclass(frozen=True, slots=True)
class PoolShape:
    """What the unit arithmetic needs to know of a resource pool."""

    compute_class: ComputeClass
    node_count: int
    cpu: DeviceSpec | None
    cpu_cores_per_node: int
    accelerator: DeviceSpec | None
    accelerators_per_node: int
    benchmark_factor: Decimal = Decimal(1)

    def __post_init__(self) -> None:
        if self.node_count < 0 or self.cpu_cores_per_node < 0 or self.accelerators_per_node < 0:
            raise ValueError("node, core and accelerator counts cannot be negative")
        if self.benchmark_factor <= 0:
            raise ValueError("a benchmark factor must be positive")

    @property
    def accelerated(self) -> bool:
        return self.accelerator is not None and self.accelerators_per_node > 0


def compute_class_for(site_kind: SiteKind, accelerated: bool) -> ComputeClass:
    """The class a pool counts in: the site's kind decides edge and super;
    otherwise accelerators make it intelligent and CPUs general."""
    if site_kind is SiteKind.EDGE:
        return ComputeClass.EDGE
    if site_kind is SiteKind.SUPERCOMPUTING:
        return ComputeClass.SUPER
    return ComputeClass.INTELLIGENT if accelerated else ComputeClass.GENERAL


def reference_precision(compute_class: ComputeClass, accelerated: bool) -> Precision:
    if compute_class is ComputeClass.SUPER:
        return Precision.FP64
    if compute_class is ComputeClass.GENERAL:
        return Precision.FP32
    if compute_class is ComputeClass.INTELLIGENT:
        return Precision.FP16
    return Precision.FP16 if accelerated else Precision.FP32


def quantise_units(value: Decimal) -> Decimal:
    return value.quantize(NCU_PLACES, rounding=ROUND_HALF_UP)


def _delivered(shape: PoolShape, peak: Decimal) -> Decimal:
    return peak * shape.benchmark_factor


def node_tflops(shape: PoolShape, precision: Precision) -> Decimal:
    """Delivered throughput of one node at a precision: accelerators plus CPU cores."""
    total = Decimal(0)
    if shape.accelerator is not None and shape.accelerators_per_node > 0:
        total += shape.accelerators_per_node * shape.accelerator.peak(precision)
    if shape.cpu is not None and shape.cpu_cores_per_node > 0:
        total += shape.cpu_cores_per_node * shape.cpu.per_core(precision)
    return _delivered(shape, total)


def pool_tflops(shape: PoolShape, precision: Precision) -> Decimal:
    return shape.node_count * node_tflops(shape, precision)


def unit_precision(shape: PoolShape) -> Precision:
    return reference_precision(shape.compute_class, shape.accelerated)


def ncu_per_accelerator(shape: PoolShape) -> Decimal:
    """Unrounded NCU of one whole accelerator of the pool."""
    if shape.accelerator is None or shape.accelerators_per_node <= 0:
        raise ValueError("pool has no accelerators")
    return _delivered(shape, shape.accelerator.peak(unit_precision(shape)))


def ncu_per_core(shape: PoolShape) -> Decimal:
    """Unrounded NCU of one CPU core of the pool (CPU-only pools)."""
    if shape.cpu is None:
        raise ValueError("pool has no CPU model")
    return _delivered(shape, shape.cpu.per_core(unit_precision(shape)))


def node_ncu(shape: PoolShape) -> Decimal:
    """Unrounded NCU of one whole node: its accelerators, or its cores if it has none."""
    if shape.accelerated:
        return shape.accelerators_per_node * ncu_per_accelerator(shape)
    return shape.cpu_cores_per_node * ncu_per_core(shape)


def pool_ncu(shape: PoolShape) -> Decimal:
    return shape.node_count * node_ncu(shape)


def slice_ncu(shape: PoolShape, *, accelerator_thousandths: int = 0, cores: int = 0) -> Decimal:
    """Unrounded NCU of part of a node: thousandths of accelerators (1000 = one
    whole device) on an accelerated pool, or cores on a CPU-only pool."""
    if accelerator_thousandths < 0 or cores < 0:
        raise ValueError("a slice cannot be negative")
    if shape.accelerated and cores:
        raise ValueError("an accelerated pool sells accelerator thousandths, not cores")
    if not shape.accelerated and accelerator_thousandths:
        raise ValueError("a CPU-only pool has no accelerators to slice")
    if shape.accelerated:
        return ncu_per_accelerator(shape) * accelerator_thousandths / 1000
    return ncu_per_core(shape) * cores


def ncu_hours(ncu: Decimal, seconds: Decimal | int) -> Decimal:
    """NCU-hours delivered by ``ncu`` units over ``seconds``, to four decimals."""
    if ncu < 0 or seconds < 0:
        raise ValueError("units and seconds cannot be negative")
    return quantise_units(ncu * Decimal(seconds) / 3600)


def price_per_ncu_hour(price_per_node_hour: Decimal, shape: PoolShape) -> Decimal:
    """Convert a node-hour price to the comparable NCU-hour price (unrounded)."""
    units = node_ncu(shape)
    if units <= 0:
        raise ValueError("a node with no units has no unit price")
    return price_per_node_hour / units
