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
    return set((cpuinfo_value("flags") or "").split())


def device_name() -> str:
    import torch

    if cuda():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    return f"CPU {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


def default_peak_tflops() -> tuple[float | None, str]:
    """(peak TFLOP/s, how it was obtained) for the current device."""
    import torch

    if cuda():
        name = torch.cuda.get_device_name(0)
        for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
            if key in name:
                return GPU_PEAK_TFLOPS[key], f"{name}: {GPU_PEAK_TFLOPS[key]:g} TFLOP/s dense bf16 (spec sheet)"
        return 989.0, f"{name}: unknown GPU, assumed H100 989 TFLOP/s dense bf16; pass --peak-tflops"
    ghz = cpu_clock_ghz()
    if ghz is None:
        return None, "unknown CPU clock; pass --peak-tflops"
    per_cycle = 64 if "avx512f" in cpu_flags() else 32
    threads = torch.get_num_threads()
    peak = threads * ghz * per_cycle / 1000
    return peak, (f"{threads} threads x {ghz:.3f} GHz x {per_cycle} FP32 FLOP/cycle "
                  f"({'AVX-512' if per_cycle == 64 else 'AVX2'}: 2 FMA pipes) = {peak:.4f} TFLOP/s (estimate)")
