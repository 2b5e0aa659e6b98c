"""budgetlora: `budgetlora.train` with recipe r6-qkv-a24 and the spec's batch size, grouping and
precision (its own loop: dynamic padding, its length grouping, `train.precision=auto`: bf16 where
the CPU or GPU computes it natively).

The loop is timed from outside through budgetlora's public `Hooks`: the first batch it collates
starts the clock, the first evaluation after the last step (eval_every = steps) stops it, and
the time spent collating is what separates loop time from step time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .common import log, sync
from .data import budgetlora_config
from .inference import budgetlora_predict
from .meters import LoadMeter, MemoryMeter
from .specs import Spec, samples_in_steps, steps_for


class LoopClock:
    """budgetlora's default collate and compute_logits, wrapped to time-stamp the training loop
    and count the padded and real tokens of its batches."""

    def __init__(self, meter: MemoryMeter):
        from budgetlora import Hooks

        self.defaults, self.meter = Hooks(), meter
        self.start = self.end = None
        self.collate_seconds, self.padded_tokens, self.real_tokens = 0.0, 0, 0

    def collate(self, token_ids, rows, pad_id, labels):
        t0 = time.perf_counter()
        if self.start is None:
            sync()
            self.start = t0
        batch = self.defaults.collate(token_ids, rows, pad_id, labels)
        if self.end is None:
            self.padded_tokens += batch.input_ids.numel()
            self.real_tokens += int(batch.attention_mask.sum())
        self.collate_seconds += time.perf_counter() - t0
        return batch

    def compute_logits(self, model, token_ids, batch_size, pad_id, autocast):
        if self.start is not None and self.end is None:
            sync()
            self.end = time.perf_counter()
            self.meter.mark("train")
        return self.defaults.compute_logits(model, token_ids, batch_size, pad_id, autocast)

    def hooks(self):
        from budgetlora import Hooks

        return Hooks(collate=self.collate, compute_logits=self.compute_logits)


def loop_figures(clock: LoopClock, res: dict) -> dict:
    """Loop and step time and tokens from the clock; budgetlora's own figures where it saw no end."""
    if clock.end is None:
        tokens = res.get("train_tokens_per_s", 0) * res["train_seconds"] or None
        return {"tokens": int(round(tokens)) if tokens else None, "padded_tokens": None,
                "loop_seconds": res["train_seconds"],
                "loop_seconds_how": "budgetlora train_seconds (the hooks saw no evaluation after training)",
                "step_seconds": None, "step_seconds_how": "loop minus time inside collate"}
    loop_s = clock.end - clock.start
    return {"tokens": clock.real_tokens or None, "padded_tokens": clock.padded_tokens,
            "loop_seconds": loop_s, "loop_seconds_how": "first collate -> first compute_logits (budgetlora Hooks)",
            "step_seconds": loop_s - clock.collate_seconds, "step_seconds_how": "loop minus time inside collate"}


def run_budgetlora(spec: Spec, args, model_path: str, split: dict, seed: int, workdir: Path, meter: MemoryMeter) -> dict:
    from budgetlora import train

    n_train = len(split["train_texts"])
    steps = steps_for(spec, args, n_train)
    cfg = budgetlora_config(spec, args, model_path, seed, steps)
    out_dir = workdir / f"{spec.name}-{seed}-{time.monotonic_ns()}"
    if not args.warm_token_cache:  # a cold token cache per run: budgetlora tokenises like the Trainer does
        os.environ["BUDGETLORA_CACHE"] = str(out_dir.with_name(out_dir.name + "-cache"))
    messages = []
    clock = LoopClock(meter)
    t_wall = time.perf_counter()
    with LoadMeter() as train_load:
        res = train(cfg, out_dir, overwrite=True, log=messages.append, hooks=clock.hooks())
    wall = time.perf_counter() - t_wall
    meter.mark("train")
    if args.verbose:
        for m in messages:
            log(f"budgetlora: {m}")
    if res["train_rows"] != n_train or res["val_rows"] != len(split["val_texts"]):
        log(f"WARNING: budgetlora split {res['train_rows']}/{res['val_rows']} differs from ours "
            f"{n_train}/{len(split['val_texts'])}")
    infer = budgetlora_predict(out_dir, split, spec, args)
    first = next(iter(infer.values()))
    return {
        "steps": res["steps"],
        "samples": samples_in_steps(res["steps"], n_train, spec.batch_size),
        **loop_figures(clock, res),
        "train_other_load_cores": train_load.other_cores,
        "infer_other_load_cores": first["other_load_cores"],
        "budgetlora_train_seconds": res["train_seconds"],
        "budgetlora_train_samples_per_s": res["train_samples_per_s"],
        "budgetlora_train_tokens_per_s": res.get("train_tokens_per_s"),
        "budgetlora_wall_seconds": res["wall_seconds"],
        "val_accuracy": res["val"]["accuracy"],
        "val_loss": res["val"]["loss"],
        "val_rows": res["val_rows"],
        "train_rows": res["train_rows"],
        "trainable_params": res["trainable_params"],
        "infer_seconds": first["seconds"],
        "infer_samples_per_s": first["samples_per_s"],
        "infer_variants": infer,
        "infer_how": first["how"],
        "device": res.get("device"),
        "precision_used": res.get("precision"),
        "attention": res.get("attention"),
        "wall_seconds": wall,
    }
