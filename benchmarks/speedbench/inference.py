"""Inference: predict the validation rows with the trained model, tokenisation excluded.
Trainer pipelines: Trainer.predict. budgetlora: `load_predictor` (merged weights; precision auto
and fp32; the ONNX int8 export on a CPU), length-sorted batches."""

from __future__ import annotations

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


def budgetlora_predict(out_dir: Path, split: dict, spec: Spec, args) -> dict:
    """{variant: figures} for the saved run through budgetlora's public inference path
    (`load_predictor`): "auto" first (bf16 where the hardware has it: what `serve` runs), then
    "fp32" (what `predict` runs by default), then the ONNX int8 export on a CPU (unless --no-int8)."""
    from budgetlora import load_predictor

    variants = {"auto": lambda: load_predictor(out_dir, precision="auto"),
                "fp32": lambda: load_predictor(out_dir, precision="fp32")}
    if not cuda() and not args.no_int8:
        variants["onnx-int8"] = lambda: int8_predictor(out_dir)
    figures = {}
    for label, load in variants.items():
        try:
            figures[label] = predict_with(load(), split, args)
        except Exception as e:  # noqa: BLE001 -- one variant failing must not lose the others' figures
            figures[label] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return figures


def int8_predictor(out_dir: Path):
    from budgetlora import export_run, load_predictor

    folder = out_dir.with_name(out_dir.name + "-export")
    export_run(out_dir, folder, ["hf", "onnx", "onnx-int8"], overwrite=True, log=lambda m: None)
    return load_predictor(folder, backend="onnx-int8")


def predict_with(predictor, split: dict, args) -> dict:
    ids = predictor.encode(split["val_texts"])  # tokenising is not timed (nor is it for Trainer.predict)
    predictor.logits(ids[:8], args.eval_batch_size)  # warm-up
    sync()
    with LoadMeter() as infer_load:
        t0 = time.perf_counter()
        logits = predictor.logits(ids, args.eval_batch_size)
        sync()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples_per_s": len(ids) / seconds, "other_load_cores": infer_load.other_cores,
            "accuracy": float((logits.argmax(-1) == split["val_labels"]).mean()),
            "how": f"load_predictor backend {predictor.backend}, precision {predictor.precision}, "
                   f"batch {args.eval_batch_size}, length-sorted dynamic padding"}
