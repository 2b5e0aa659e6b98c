"""Benchmark: accuracy and speed of a run's exports (torch merged, ONNX fp32, ONNX int8).

For each seed (the seed of the train/validation split and of training), the quickstart recipe is
trained on the real MiniLM-L6 with the bundled AG News rows, exported with `--format onnx,onnx-int8`,
and every backend predicts the bundled held-out evaluation rows (disjoint from everything trained
or selected on). Reports accuracy per backend and seed, the int8 - fp32 gap, and rows/s per backend
on this machine (CPU named). Public API only.

    python benchmarks/export_int8.py --seeds 1 2 3 --out benchmarks/results/export-int8-cpu-minilm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from budgetlora import load_config, train
from budgetlora.data import encode_labels, read_table
from budgetlora.deploy.export import export_run
from budgetlora.deploy.predictor import load_predictor
from budgetlora.quickstart import minilm_path, sample_files


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    native = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "amx_int8") if f in flags.split()]
    return f"{name} ({', '.join(native) or 'no bf16/vnni flags'})"


def one_seed(seed: int, work: Path, rows: int | None) -> dict:
    train_file, eval_file = sample_files()
    cfg = load_config("minilm-quickstart", [f"model.name={minilm_path()}", f"data.train={train_file}",
                                            f"train.seed={seed}", "train.progress=false"])
    run = work / f"run-{seed}"
    train(cfg, run, log=lambda m: None)
    export_run(run, work / f"export-{seed}", ["onnx", "onnx-int8"], log=lambda m: None)
    table = read_table(str(eval_file), cfg.data, split="test")
    texts = table.texts[:rows] if rows else table.texts
    result = {"seed": seed, "rows": len(texts)}
    for name, path, backend in [("torch", run, "torch"), ("onnx", work / f"export-{seed}", "onnx"),
                                ("onnx-int8", work / f"export-{seed}", "onnx-int8")]:
        predictor = load_predictor(path, backend=backend)
        labels = encode_labels(table, predictor.label_names)[: len(texts)]
        ids = predictor.encode(texts)
        started = time.perf_counter()
        logits = predictor.logits(ids, batch_size=64)
        seconds = time.perf_counter() - started
        result[name] = {"accuracy": float(np.mean(logits.argmax(1) == labels)), "rows_per_s": len(texts) / seconds}
    result["int8_minus_fp32_points"] = 100 * (result["onnx-int8"]["accuracy"] - result["onnx"]["accuracy"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", type=int, default=None, help="evaluate only the first N held-out rows")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per_seed = [one_seed(seed, Path(tmp), args.rows) for seed in args.seeds]
    gaps = [r["int8_minus_fp32_points"] for r in per_seed]
    summary = {"cpu": cpu_name(), "seeds": per_seed, "mean_int8_minus_fp32_points": float(np.mean(gaps)),
               "worst_int8_minus_fp32_points": float(min(gaps))}
    for r in per_seed:
        print(f"seed {r['seed']}: " + "  ".join(f"{b} acc {r[b]['accuracy']:.4f} ({r[b]['rows_per_s']:.0f} rows/s)"
                                                for b in ("torch", "onnx", "onnx-int8")))
    print(f"int8 - fp32: mean {summary['mean_int8_minus_fp32_points']:+.2f} points, "
          f"worst {summary['worst_int8_minus_fp32_points']:+.2f}  [{summary['cpu']}]")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
