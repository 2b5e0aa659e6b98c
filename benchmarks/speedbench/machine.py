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


def cpuinfo_value(key: str) -> str | None:
    """The first /proc/cpuinfo value for `key` ("model name", "cpu MHz", "flags")."""
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return cpuinfo_value("model name") or platform.processor() or platform.machine()


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
    peaks = {p: measured_matmul_tflops(p) for p in ("fp32", "bf16")}
    return peaks, (f"measured here: 2048x2048 matmul, {torch.get_num_threads()} threads: fp32 {peaks['fp32']:.3f}, "
                   f"bf16 {peaks['bf16']:.3f} TFLOP/s; each run's MFU is against the peak of the precision it ran in")
