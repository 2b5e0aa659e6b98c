"""What this machine offers a model: the device to infer on, native bf16, and what `auto` picks.

`inference_device()` is the GPU of this process (its LOCAL_RANK's under `accelerate launch`, so
the shards of a sharded predict spread over the GPUs) or the CPU.

`native_bf16_cpu()` asks the same CPU feature probe torch's own CPU kernels use (cpuinfo, via
`torch.cpu._is_avx512_bf16_supported` / `_is_amx_tile_supported`): bf16 runs in hardware only
with AVX512-BF16 or AMX. oneDNN's `_is_mkldnn_bf16_supported` is not used, because it is also
true on AVX512 CPUs that emulate bf16 (slower than fp32 there). When torch lacks the probe,
the kernel's flags in /proc/cpuinfo answer.

`choose(requested, device)` turns `auto` into `fp32` or `bf16` and says why, in one line
a run's log or a server's /info can show; `attention(...)` does the same for the attention
kernel of a training run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Choice:
    value: str  # fp32 / bf16 / fp16; or an attention kernel
    reason: str

    def __str__(self) -> str:
        return f"{self.value} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as torch's probe sees it."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if callable(p)]
    if probes:
        return any(p() for p in probes)
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def inference_device() -> str:
    """"cuda:K" for this process (K = LOCAL_RANK modulo the GPU count) when CUDA is there, else "cpu"."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0) or 0) % torch.cuda.device_count()}"


# From this many tokens a row, SDPA trains faster than eager attention on a CPU in fp32 and keeps no
# rows x heads x L x L attention weights for the backward pass; below it the two are equal.
SDPA_FROM_TOKENS = 256


def attention(requested: str, device: str, precision: str, typical_length: int | None = None,
              attention_dropout: float | None = None) -> Choice:
    """The attention kernel for training: eager, sdpa, or `default` (the library's choice), for
    rows of about `typical_length` tokens (`typical_length`; None: short rows) and the attention
    weights' drop probability (None: unknown, taken as nonzero).

    Measured on CPUs (docs/speed.md, benchmarks/attention.py): SDPA's flash-attention backward in
    bf16 costs more than the eager softmax(QK^T)V it replaces (MiniLM-L6, batch 32 x 52 tokens:
    342 vs 195 ms a step); with dropout SDPA draws torch's slow CPU masks while eager attention
    draws budgetlora's fast ones (training/fast_dropout.py). In fp32 without attention dropout the
    two are equal up to 128 tokens and SDPA wins from SDPA_FROM_TOKENS (MiniLM-L6, batch 16, Zen 3:
    1.22x at 256 tokens; 1.50x and 37% less peak memory at 512); with attention dropout torch's
    CPU SDPA falls back to its math kernel, as slow as eager and keeping the same weights, so
    eager stays. On GPUs SDPA is the faster one.
    """
    if requested != "auto":
        return Choice(requested, "set in the configuration")
    if device != "cpu":
        return Choice("default", "auto: the library's default (SDPA where the model has it)")
    length = f" on rows of about {typical_length} tokens" if typical_length else ""
    if precision == "fp32" and attention_dropout == 0 and typical_length and typical_length >= SDPA_FROM_TOKENS:
        return Choice("sdpa", f"auto: on a CPU in fp32{length}, SDPA trains faster than eager attention "
                              f"from {SDPA_FROM_TOKENS} tokens and keeps no L x L attention weights")
    dropout = " with attention dropout" if precision == "fp32" and attention_dropout != 0 else ""
    return Choice("eager", f"auto: on a CPU in {precision}{length}{dropout}, eager attention trains faster than SDPA")


def typical_length(lengths) -> int:
    """The row length (tokens) that half of all tokens are in rows at least as long as: the length
    most of a run's compute goes to, which a few long rows or many short ones do not swing."""
    import numpy as np

    ordered = np.sort(np.asarray(lengths, dtype=np.int64))
    if not len(ordered):
        return 0
    cumulative = np.cumsum(ordered)
    return int(ordered[np.searchsorted(cumulative, cumulative[-1] / 2)])


# On a CPU, a forward pass of more than about 2,000 tokens (rows x padded length) only spills
# the caches: MiniLM-L6 inference on AG News rows ran 1.4-1.6x faster with batches capped at
# 512-4,096 tokens than at 128 rows (docs/speed.md). GPUs want the whole batch.
CPU_BATCH_TOKENS = 2048


def inference_batch_tokens(device: str) -> int | None:
    """The most tokens one inference forward pass should hold on `device` (None: no cap)."""
    return CPU_BATCH_TOKENS if device == "cpu" else None


def torch_dtype(precision: str):
    """The torch dtype a chosen precision (fp32 / bf16 / fp16) computes in."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def choose(requested: str, device: str) -> Choice:
    """The precision `requested` (auto / fp32 / bf16 / fp16) means on `device` ("cpu" or "cuda")."""
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "bf16" and device == "cpu" and not native_bf16_cpu():
        return Choice("bf16", "set in the configuration, but this CPU has no native bf16 (no avx512_bf16/amx_bf16): "
                              "bf16 runs emulated, many times slower than fp32; precision auto picks fp32 here")
    if requested != "auto":
        return Choice(requested, "set in the configuration")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return Choice("bf16", "auto: the GPU computes bf16 natively")
        return Choice("fp32", "auto: the GPU has no native bf16")
    if native_bf16_cpu():
        return Choice("bf16", "auto: the CPU has native bf16 (avx512_bf16 or amx_bf16)")
    return Choice("fp32", "auto: the CPU has no native bf16 (no avx512_bf16/amx_bf16), where bf16 is slower than fp32")
