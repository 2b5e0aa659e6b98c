#!/usr/bin/env python
"""One quickstart-recipe variant on tuning rows: how the minilm-quickstart recipe was chosen.

Trains the recipe with `--set` changes on a training file and scores the finished run on dev rows,
never on the quickstart's evaluation rows. Make the files first (rows neither bundled file holds):

    python tools/make_quickstart_sample.py --n-train 16000 --out-dir /tmp/qsdata --dev-out /tmp/qsdata/dev.csv.gz
    python -c "import pandas as pd; pd.read_csv('/tmp/qsdata/dev.csv.gz')[:2000].to_csv('/tmp/qsdata/dev2k.csv.gz', index=False)"
    python benchmarks/quickstart_dev.py NAME SEED [KEY=VALUE ...] [--train FILE] [--dev FILE] [--out results.jsonl]

e.g. `... mean8k 1 data.max_train_samples=8000 head.type=mean train.baseline=none`. Appends one JSON
line: dev accuracy, validation accuracy, training samples/s, seconds, the step the run kept.
"""
import argparse
import json
import time

from budgetlora import evaluate_run, load_config, train
from budgetlora.quickstart import minilm_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("seed", type=int)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--train", default="/tmp/qsdata/train.csv.gz")
    p.add_argument("--dev", default="/tmp/qsdata/dev2k.csv.gz")
    p.add_argument("--runs", default="/tmp/quickstart-dev/runs")
    p.add_argument("--out", default="/tmp/quickstart-dev/results.jsonl")
    args = p.parse_args()
    out = f"{args.runs}/{args.name}-s{args.seed}"
    cfg = load_config("minilm-quickstart", [f"model.name={minilm_path()}", f"data.train={args.train}",
                                            f"train.seed={args.seed}", "train.progress=false", *args.overrides])
    started = time.time()
    m = train(cfg, out, overwrite=True, log=lambda s: None)
    trained = time.time()
    dev = evaluate_run(out, args.dev, precision="auto")  # bf16 only where the CPU has it natively
    row = dict(name=args.name, seed=args.seed, overrides=args.overrides, dev_acc=dev["accuracy"],
               val_acc=m["val"]["accuracy"], kept_step=m["best_step"], steps=m["steps"], train_rows=m["train_rows"],
               train_samples_per_s=m["train_samples_per_s"], train_call_s=round(trained - started, 1),
               eval_s=round(time.time() - trained, 1))
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
