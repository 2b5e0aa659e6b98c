#!/usr/bin/env python
"""The quickstart as a user runs it: accuracy on the bundled held-out rows and wall seconds.

Runs `budgetlora quickstart` (a fresh process, a fresh feature cache, nothing warm) once per seed
and precision, and records what the user sees: held-out accuracy with its bootstrap interval, the
linear-probe baseline beside it, the quickstart's own wall seconds and the process's (Python
start and imports included; install excluded), training samples/s, and the machine (CPU model,
family, model and vector flags). The evaluation rows (budgetlora/assets/quickstart/eval.csv.gz) are never
trained or selected on: the recipe was tuned on rows neither bundled file holds
(tools/make_quickstart_sample.py --dev-out).

`--precision fp32` forces the fp32 path (train.precision=fp32): what a CPU without native bf16
runs, measured here on whatever CPU this is (its family, model and vector flags are recorded beside it).

`--time-budget SECONDS` runs `budgetlora quickstart --time-budget SECONDS`: the training rows sized
to this machine's measured speed; the rows each run chose are recorded.

`--shared-cache` gives every run one feature and token cache (the first run fills it): what a user's
second and later quickstarts find. The budgetlora the runs import is recorded (its folder and git
commit): `python -m` imports it from the working folder first, so to measure another checkout run
this script from that checkout's folder (`cd OTHER && python /path/to/benchmarks/quickstart.py`).

    python benchmarks/quickstart.py --seeds 1,2,3 [--precision auto,fp32] [--time-budget 180] [--shared-cache] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speedbench.machine import cpu_identity, cpu_model, device_name  # noqa: E402


def run_once(seed: int, precision: str, workdir: Path, time_budget: float | None = None,
             shared_cache: bool = False) -> dict:
    out = workdir / f"qs-{precision}-s{seed}"
    cache = workdir / ("cache-shared" if shared_cache else f"cache-{precision}-s{seed}")  # fresh: nothing cached
    env = dict(os.environ, BUDGETLORA_CACHE=str(cache))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "budgetlora", "quickstart", "--out", str(out),
                           "--set", f"train.seed={seed}", "--set", f"train.precision={precision}",
                           "--set", "train.progress=false",
                           *(["--time-budget", str(time_budget)] if time_budget is not None else [])],
                          env=env, capture_output=True, text=True)
    process_seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"quickstart seed {seed} {precision} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"seed": seed, "precision_requested": precision, "precision": summary["precision"],
            "eval_accuracy": summary["eval_accuracy"], "eval_accuracy_ci95": summary["eval_accuracy_ci95"],
            "eval_macro_f1": summary["eval_macro_f1"], "eval_rows": summary["eval_rows"],
            "baseline_eval_accuracy": summary.get("baseline_eval_accuracy"),
            "baseline_seconds": summary.get("baseline_seconds"),
            "time_budget_s": time_budget, "train_rows": summary["train_rows"], "train_samples_per_s": summary["train_samples_per_s"],
            "quickstart_wall_seconds": summary["wall_seconds"], "process_wall_seconds": process_seconds,
            "plan": next((line for line in proc.stdout.splitlines() if line.startswith("time budget")), None)}


def budgetlora_checkout() -> dict:
    """The budgetlora package the runs import (PYTHONPATH decides) and its git commit."""
    folder = subprocess.run([sys.executable, "-c", "import budgetlora, os; print(os.path.dirname(budgetlora.__file__))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    return {"package": folder, "commit": commit or None, "uncommitted_changes": bool(dirty)}


def summarise(rows: list[dict]) -> dict:
    def stat(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return None
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    return {key: stat(key) for key in ("eval_accuracy", "baseline_eval_accuracy", "process_wall_seconds",
                                       "quickstart_wall_seconds", "train_samples_per_s", "train_rows")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--precision", default="auto", help="comma-separated: auto, fp32, bf16")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="pass --time-budget to every quickstart (rows sized to the machine)")
    p.add_argument("--shared-cache", action="store_true",
                   help="one feature/token cache for all runs (the first fills it), as a user's later runs find it")
    p.add_argument("--out", default=None, help="results JSON (default: print only)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    precisions = [s.strip() for s in args.precision.split(",") if s.strip()]
    result = {"benchmark": "quickstart", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": device_name(), "cpu": cpu_model(), "cpu_identity": cpu_identity(),
              "command": "budgetlora quickstart --set train.seed=S --set train.precision=P"
                         + (f" --time-budget {args.time_budget:g}" if args.time_budget is not None else ""),
              "cache": "shared by all runs, in run order" if args.shared_cache else "fresh for every run",
              "budgetlora": budgetlora_checkout(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        for seed in seeds:  # interleaved: a slow spell on a shared machine hits every precision alike
            for precision in precisions:
                row = run_once(seed, precision, Path(tmp), args.time_budget, args.shared_cache)
                result["runs"].append(row)
                lo, hi = row["eval_accuracy_ci95"]
                print(f"seed {seed} {row['precision']}: accuracy {row['eval_accuracy']:.4f} ({lo:.4f}-{hi:.4f}), "
                      f"probe {row['baseline_eval_accuracy']:.4f}, {row['process_wall_seconds']:.0f} s "
                      f"({row['train_rows']} rows, {row['train_samples_per_s']:.0f} training samples/s)", flush=True)
    result["summary"] = {prec: summarise([r for r in result["runs"] if r["precision_requested"] == prec])
                         for prec in precisions}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
