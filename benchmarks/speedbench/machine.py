"""What the device is: CPU model, clock and flags, the device line of the report, and the peak
FLOP/s that MFU is measured against."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

from .common import cuda

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
                   "L4": 121.0, "A10": 125.0}


# The flags that decide which matmul kernels a CPU runs (fp32 AVX2 / AVX-512, int8 VNNI, native bf16)
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpuinfo_value(key: str) -> str | None:
    """The first /proc/cpuinfo value for exactly `key` ("model name", "model", "cpu MHz", "flags")."""
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def cpu_model() -> str:
    return cpuinfo_value("model name") or platform.processor() or platform.machine()


def cpu_identity() -> dict:
    """Which CPU this is beyond its model name, which a VM may keep generic ("AMD EPYC" for a Zen 1
    with AVX2 only and for a Zen 4 with avx512_bf16): vendor, family and model numbers, and the
    vector flags that decide the kernels."""
    return {"model_name": cpu_model(), "vendor": cpuinfo_value("vendor_id"), "family": cpuinfo_value("cpu family"),
            "model": cpuinfo_value("model"), "vector_flags": sorted(cpu_flags() & set(VECTOR_FLAGS))}


def cpu_clock_ghz() -> float | None:
    mhz = cpuinfo_value("cpu MHz")
    return None if mhz is None else float(mhz) / 1000


def cpu_flags() -> set[str]:
    from budgetlora.hardware import cpu_flags as kernel_flags

    return kernel_flags()


def device_name() -> str:
    import torch

    if cuda():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    return f"CPU {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


def measured_matmul_tflops(precision: str, size: int = 2048, seconds: float = 1.0) -> float:
    """Dense square matmul TFLOP/s this process reaches in `precision` (fp32 / bf16): the peak
    MFU is measured against on a CPU, where no spec sheet says what 2 shared cores deliver."""
    import time

    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = "cuda" if cuda() else "cpu"
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    if cuda():
        torch.cuda.synchronize()
    return 2 * size ** 3 * calls / (time.perf_counter() - start) / 1e12


def default_peak_tflops() -> tuple[dict, str]:
    """({precision: peak TFLOP/s}, how it was obtained) for the current device."""
    import torch

    if cuda():
        name = torch.cuda.get_device_name(0)
        for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
            if key in name:
                peak = GPU_PEAK_TFLOPS[key]
                return {"bf16": peak, "fp32": peak}, f"{name}: {peak:g} TFLOP/s dense bf16 (spec sheet), for every precision"
        return {"bf16": 989.0, "fp32": 989.0}, f"{name}: unknown GPU, assumed H100 989 TFLOP/s dense bf16; pass --peak-tflops"
    from budgetlora.hardware import native_bf16_cpu

    # without native bf16 a 2048x2048 bf16 matmul is emulated (a Zen 1 took minutes for the four
    # calls, about 200x slower than fp32): a 256x256 one measures the same emulation in seconds
    bf16_size = 2048 if native_bf16_cpu() else 256
    peaks = {"fp32": measured_matmul_tflops("fp32"), "bf16": measured_matmul_tflops("bf16", size=bf16_size)}
    return peaks, (f"measured here, {torch.get_num_threads()} threads: fp32 {peaks['fp32']:.3f} TFLOP/s (2048x2048 "
                   f"matmul), bf16 {peaks['bf16']:.4f} TFLOP/s ({bf16_size}x{bf16_size}"
                   f"{'' if bf16_size == 2048 else ', no native bf16 on this CPU'}); each run's MFU is against the "
                   f"peak of the precision it ran in")
