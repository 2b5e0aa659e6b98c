#!/usr/bin/env python
"""Eager against SDPA attention on this machine, by sequence length: training samples/s and peak memory.

`model.attention: auto` picks the attention kernel a run trains with (budgetlora/hardware.py). At
AG News lengths (about 52 tokens) eager and SDPA train equally fast in fp32 on a CPU and eager is
far faster in bf16 (docs/speed.md). Eager attention keeps every layer's rows x heads x L x L
probabilities for the backward pass, so its cost and memory grow with the square of the length
while SDPA's flash kernel keeps none: this measures where, if anywhere, that crosses over.

Each (length, kernel) pair is one `budgetlora train` in a fresh process (the public CLI), on rows
made long enough to fill `length` tokens (consecutive AG News rows joined, so nothing is padding),
`--steps` optimiser steps of `--batch` rows, the minilm-quickstart recipe's adapter (LoRA r=8 on
all linear layers) with a random head and no baseline. Recorded: the run's own
`train_samples_per_s` (optimiser steps only) and the process's peak RSS (os.wait4), plus the CPU.

    python benchmarks/attention.py --lengths 64,128,256,512 --json benchmarks/results/attention-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speedbench.machine import cpu_identity, device_name  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ag_news" / "train.csv.gz"


def long_rows(source: Path, rows: int, join: int) -> pd.DataFrame:
    """`rows` texts, each `join` consecutive AG News rows joined (about 50 tokens each), labelled
    as their first row: long enough that every length measured truncates instead of padding."""
    frame = pd.read_csv(source).head(rows * join)
    groups = [frame.iloc[i:i + join] for i in range(0, len(frame) - join + 1, join)][:rows]
    return pd.DataFrame({"text": [" ".join(g["text"].astype(str)) for g in groups],
                         "label": [g["label"].iloc[0] for g in groups]})


def run_once(model: str, data: Path, out: Path, length: int, kernel: str, args) -> dict:
    command = [sys.executable, "-m", "budgetlora", "train", "--recipe", "minilm-quickstart", "--out", str(out),
               "--overwrite"]
    for setting in (f"model.name={model}", f"data.train={data}", f"model.max_length={length}",
                    f"model.attention={kernel}", f"train.precision={args.precision}", f"train.batch_size={args.batch}",
                    f"train.max_steps={args.steps}", "train.warmup=0", "data.val_size=32", "data.max_train_samples=null",
                    "head.init=random", "train.baseline=none", "train.report=false", "train.tracker=none",
                    "train.progress=false", f"train.seed={args.seed}", *args.set):
        command += ["--set", setting]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"length {length} {kernel} failed:\n{output[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"length": length, "attention": metrics["attention"], "overrides": args.set, "precision": metrics["precision"], "batch": args.batch,
            "steps": metrics["steps"], "train_samples_per_s": metrics["train_samples_per_s"],
            "train_tokens_per_s": metrics["train_samples_per_s"] * length, "train_seconds": metrics["train_seconds"],
            "peak_rss_mib": usage.ru_maxrss / 1024, "process_seconds": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="encoder folder or hub id (default: the PyPI MiniLM copy)")
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--lengths", default="64,128,256,512")
    p.add_argument("--kernels", default="eager,sdpa")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="another recipe override, e.g. model.encoder_dropout=0.1")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from budgetlora.quickstart import minilm_path

    model = args.model or minilm_path()
    lengths = [int(n) for n in args.lengths.split(",")]
    kernels = [k for k in args.kernels.split(",") if k]
    results = []
    with tempfile.TemporaryDirectory(prefix="attention-bench-") as tmp:
        data = Path(tmp) / "long.csv"
        rows = args.batch * args.steps + 32 + 64  # training, validation, and spare for the split
        long_rows(Path(args.data), rows, join=max(2, max(lengths) // 40 + 2)).to_csv(data, index=False)
        for length in lengths:
            for kernel in kernels:  # each length's kernels back to back: a slower machine hits both alike
                result = run_once(model, data, Path(tmp) / f"{kernel}-{length}", length, kernel, args)
                results.append(result)
                print(f"length {length:4d} {kernel:5s} {result['precision']}: {result['train_samples_per_s']:7.2f} samples/s, "
                      f"peak RSS {result['peak_rss_mib']:7.0f} MiB", flush=True)
    report = {"benchmark": "attention", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": device_name(), "cpu_identity": cpu_identity(), "model": model,
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "results": results}
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
