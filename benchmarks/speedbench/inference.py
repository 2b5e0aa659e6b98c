"""Inference: predict the validation rows with the trained model, tokenisation excluded.
Trainer pipelines: Trainer.predict. budgetlora: load_run (merged LoRA, and unmerged) and
compute_logits over budgetlora.data.tokenize ids (length-sorted batches)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np

from .common import cuda, sync
from .meters import LoadMeter
from .specs import Spec


def trainer_predict(trainer, val_ds, split: dict, spec: Spec, args) -> dict:
    """Validation accuracy and inference speed of a trained Trainer."""
    trainer.predict(val_ds.select(range(min(8, len(val_ds)))))  # warm-up
    sync()
    with LoadMeter() as infer_load:
        t0 = time.perf_counter()
        pred = trainer.predict(val_ds)
        sync()
        infer_s = time.perf_counter() - t0
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    # Trainer.predict returns rows in its eval sampler's order, which with group_by_length is a
    # length-grouped shuffle (transformers 5 `_get_eval_sampler`), not dataset order: compare with
    # the label_ids it returns alongside, never with the dataset's labels.
    labels = pred.label_ids if pred.label_ids is not None else split["val_labels"]
    in_dataset_order = pred.label_ids is None or bool(np.array_equal(np.asarray(pred.label_ids), split["val_labels"]))
    return {
        "val_accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean()),
        "predict_rows_in_dataset_order": in_dataset_order,
        "val_rows": len(split["val_texts"]),
        "infer_seconds": infer_s,
        "infer_samples_per_s": len(val_ds) / infer_s,
        "infer_other_load_cores": infer_load.other_cores,
        "infer_how": f"Trainer.predict, batch {args.eval_batch_size}, "
                     + ("rows padded to max_length" if spec.pad_to_max else "dynamic padding")
                     + (", length-grouped eval order" if spec.group_by_length else ", dataset order"),
    }


def bf16_autocast(spec: Spec):
    """The autocast budgetlora.train evaluates under: bf16 on a GPU, none otherwise."""
    import torch

    if spec.precision == "bf16" and cuda():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return None


def budgetlora_predict(out_dir: Path, split: dict, spec: Spec, args) -> dict:
    """{variant: figures} for the saved run: "merged" and "unmerged" where load_run can merge."""
    from budgetlora import load_run

    variants = {"default": {}}
    if "merge" in inspect.signature(load_run).parameters:  # newer budgetlora merges LoRA into the weights
        variants = {"merged": {"merge": True}, "unmerged": {"merge": False}}
    return {label: predict_loaded_run(out_dir, kw, split, spec, args) for label, kw in variants.items()}


def predict_loaded_run(out_dir: Path, load_kw: dict, split: dict, spec: Spec, args) -> dict:
    import torch

    from budgetlora import load_run
    from budgetlora.data import tokenize
    from budgetlora.evaluation.metrics import compute_logits, pad_id_of

    autocast = bf16_autocast(spec)
    model, tokenizer, run_cfg, _ = load_run(out_dir, **load_kw)
    model.to(torch.device("cuda" if cuda() else "cpu"))
    ids = tokenize(split["val_texts"], tokenizer, run_cfg.model.max_length)  # cached by train(): not timed
    pad_id = pad_id_of(tokenizer)
    compute_logits(model, ids[:8], args.eval_batch_size, pad_id, autocast)  # warm-up
    sync()
    with LoadMeter() as infer_load:
        t0 = time.perf_counter()
        logits = compute_logits(model, ids, args.eval_batch_size, pad_id, autocast)
        sync()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples_per_s": len(ids) / seconds, "other_load_cores": infer_load.other_cores,
            "accuracy": float((logits.argmax(-1) == split["val_labels"]).mean()),
            "how": f"load_run({', '.join(f'{k}={v}' for k, v in load_kw.items())}) + compute_logits, "
                   f"batch {args.eval_batch_size}, length-sorted dynamic padding"
                   + (", bf16 autocast" if autocast else "")}
