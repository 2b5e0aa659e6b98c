"""What the machine and its Python are: nvidia-smi, the GPU as torch sees it, the versions of the
packages budgetlora and the speed benchmark import (and where each came from: the image or the
carried wheels), CPU and memory. Run as a script it prints that as JSON (the check runs it in a
subprocess, so the check's own process never starts CUDA), or writes it to the file named."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

# distributions budgetlora and the speed benchmark need (dill, multiprocess: datasets' own needs)
PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "dill", "multiprocess", "tokenizers",
            "safetensors", "numpy", "pandas", "pyarrow", "PyYAML", "scikit-learn", "tqdm", "matplotlib", "tensorboard",
            "onnxruntime"]
SMI_QUERY = "name,driver_version,memory.total,clocks.max.sm,power.limit,temperature.gpu,utilization.gpu"


def shell(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable: {type(e).__name__}: {e}"
    return (done.stdout + done.stderr).strip()


def packages() -> dict:
    """{distribution: version and folder} without importing them; `datasets` also imported, the one
    the GPU machine's image lacks."""
    found = {}
    for name in PACKAGES:
        try:
            dist = importlib.metadata.distribution(name)
            found[name] = {"version": dist.version, "location": str(dist.locate_file(""))}
        except importlib.metadata.PackageNotFoundError:
            found[name] = {"error": "not installed"}
    try:
        importlib.import_module("datasets")
    except Exception as e:  # noqa: BLE001 -- a broken install is a finding, not a crash
        found["datasets"]["import_error"] = f"{type(e).__name__}: {e}"[:300]
    return found


def gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda_available": False}
    props = torch.cuda.get_device_properties(0)
    return {"cuda_available": True, "name": props.name, "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "bf16_supported": torch.cuda.is_bf16_supported(),
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def collect() -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # budgetlora from the checkout
    from budgetlora.hardware import native_bf16_cpu

    return {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "native_bf16_cpu": native_bf16_cpu(),
        "memory_gib": memory_gib(),
        "gpu": gpu(), "packages": packages(),
        "nvidia_smi_query": shell(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv"]),
        "nvidia_smi": shell(["nvidia-smi"]),
        "git_commit": shell(["git", "rev-parse", "HEAD"]),
        "pythonpath": os.environ.get("PYTHONPATH"),
    }


if __name__ == "__main__":
    text = json.dumps(collect(), indent=2, default=str)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
