"""Time budget: how many training rows fit in SECONDS on this machine, measured before training.

One mechanism for `budgetlora train --time-budget` and `budgetlora quickstart --time-budget`. A
throwaway run of a few steps times a training row (per token, through the loop's public Hooks),
an inference pass times an evaluation row; the training rows are then what the budget leaves
once the seconds already spent, the inference passes the run makes whatever its rows (validation,
test, the caller's evaluation rows) and a reserve are paid, in whole batches. The choice becomes
`data.max_train_samples` in the returned config (a value set there already caps it), so the run's
config.yaml repeats it exactly without a budget. A budget too short for MIN_BUDGET_ROWS rows is
refused in one line naming the budget that would fit.

Why by hand: neither transformers' Trainer nor Accelerate sizes a run to a wall-clock budget
(Trainer's `max_steps` is a step count the user must guess), and a run stopped by time instead
would end mid-schedule, with its learning rate not yet decayed, and could not be repeated.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, with_overrides
from ..errors import UserError

CALIBRATION_STEPS = 6  # the first is a warm-up and is not timed
CALIBRATION_VAL_ROWS = 32  # the throwaway run's validation rows: its own evaluation is not timed
CALIBRATION_INFERENCE_ROWS = 256  # rows spread over the training file, through the merged predictor
INFERENCE_REPEATS = 2  # the faster of two passes: noise only ever adds time
BUDGET_RESERVE_S = 15.0  # the probe's fit, saving, the report, loading the predictor
# the plan takes the machine as this much slower than measured: a shared 2-core VM's speed drifts
# within minutes (31-41 training rows/s over one session on a Zen 3), and a budget is a promise;
# more margin wasted a quarter of a 180 s budget there when the measurement fell on a slow spell
RATE_MARGIN = 1.10
MIN_BUDGET_ROWS = 320  # ten steps of 32: below this the run is not worth its fixed costs
GROUPED_PADDING = 1.05  # padded / real tokens of length-grouped batches of 32 (speed.py's "pad %")


@dataclass
class MachineRates:
    """Seconds per row on this machine, measured by `measure_rates`."""

    train_s_per_row: float  # one training step's share: forward, backward, optimizer
    infer_s_per_row: float  # one row through the model in evaluation mode (the probe's features cost the same)
    seconds: float  # what measuring took


@dataclass
class BudgetPlan:
    """What `plan_time_budget` chose: the config to train, its rows, the baseline's evaluation
    features it computed already (seconds), and the line it logged."""

    cfg: Config
    rows: int
    prepaid_baseline_s: float
    line: str


def process_seconds() -> float:
    """Seconds since this process started: what a CLI has spent (Python's start-up, imports)
    before a budget's own clock starts."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def refuse_unsizable(cfg: Config) -> None:
    """One line for the settings a time budget cannot size: a fixed step count, and the runs whose
    cost does not follow their training rows. (data.max_train_samples stays a cap.)"""
    import os

    fixed = [(cfg.train.max_steps is not None, "train.max_steps"),
             (int(os.environ.get("WORLD_SIZE", "1") or 1) > 1, "several processes (time it on one)"),
             (bool(cfg.data.unlabelled), "data.unlabelled (self-training rounds)"),
             (bool(cfg.distill.teacher), "distill.teacher (the teacher's pass)"),
             (bool(cfg.data.extra_train), "data.extra_train"),
             (cfg.data.synonym_rate > 0, "data.synonym_rate (augmented copies)")]
    clashes = [name for on, name in fixed if on]
    if clashes:
        raise UserError(f"--time-budget sizes the training rows itself and cannot size a run with "
                        f"{', '.join(clashes)}; drop {'it' if len(clashes) == 1 else 'them'} or the budget")


def seconds_per_token(marks: list[float], step_tokens: list[int]) -> float:
    """The median step's seconds per padded token, the first step (a warm-up) left out: `marks`
    holds each step's start and then the last one's end, `step_tokens` each step's tokens. A step
    slowed by something else on the machine does not set the rate."""
    return statistics.median((marks[i + 1] - marks[i]) / step_tokens[i] for i in range(1, len(step_tokens)))


def measure_rates(cfg: Config, texts: list[str], infer_s_per_row: float | None = None) -> MachineRates:
    """Train `cfg` for CALIBRATION_STEPS steps in a throwaway run directory and time, per token,
    the steps after the first; then, unless `infer_s_per_row` was measured already, time its
    merged predictor (what evaluates, and as costly as the probe's frozen encoder) on `texts`,
    after a warm-up (the faster of INFERENCE_REPEATS passes). Steps are timed through the loop's
    public Hooks: a batch is built at the start of every step, and the evaluation that follows the
    last step ends it. A step's time follows its padded tokens, so the median step's rate per
    token, scaled by the rows' mean length (and the few padding tokens of length-grouped batches),
    gives the seconds per training row."""
    from ..deploy.predictor import load_predictor
    from ..evaluation.metrics import predictor_logits
    from .loop import Hooks, train

    started = time.time()
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
    throwaway = with_overrides(cfg, [
        f"data.max_train_samples={CALIBRATION_STEPS * cfg.train.batch_size}", f"data.val_size={CALIBRATION_VAL_ROWS}",
        f"train.max_steps={CALIBRATION_STEPS}", "train.epochs=1", "train.eval_every=null", "train.baseline=none",
        "head.init=random", "train.report=false", "train.tracker=none", "train.progress=false", "data.test=null"])
    with tempfile.TemporaryDirectory(prefix="budgetlora-calibration-") as folder:
        train(throwaway, Path(folder) / "run", log=lambda message: None, hooks=hooks)
        if infer_s_per_row is None:
            predictor = load_predictor(Path(folder) / "run", precision=cfg.train.precision)
            predictor_logits(predictor, texts[:32], progress=False)  # warm-up
            passes = []
            for _ in range(INFERENCE_REPEATS):  # whole passes (small chunks would pad more than the run's)
                begun = time.perf_counter()
                predictor_logits(predictor, texts, progress=False)
                passes.append((time.perf_counter() - begun) / len(texts))
            infer_s_per_row = min(passes)
    mean_length = sum(lengths) / len(lengths)
    train_s_per_token = seconds_per_token(marks, step_tokens)
    return MachineRates(train_s_per_row=train_s_per_token * mean_length * GROUPED_PADDING,
                        infer_s_per_row=infer_s_per_row, seconds=time.time() - started)


def rows_for_time_budget(budget_s: float, spent_s: float, rates: MachineRates, *, fixed_inference_rows: int,
                         available: int, batch_size: int, reserve_s: float = BUDGET_RESERVE_S,
                         inference_per_training_row: float = 1, epochs: float = 1,
                         margin: float = RATE_MARGIN) -> int:
    """Training rows that fit: each costs `epochs` training steps' shares and
    `inference_per_training_row` inference rows (the probe's features, periodic validation); the
    `fixed_inference_rows` (validation, test, evaluation rows) and a reserve are paid whatever the
    rows; every measured cost is taken `margin` times slower. Whole batches, or all `available` rows where they fit; a budget too short for
    MIN_BUDGET_ROWS of them is refused."""
    fixed = spent_s + reserve_s + margin * fixed_inference_rows * rates.infer_s_per_row
    per_row = margin * (epochs * rates.train_s_per_row + inference_per_training_row * rates.infer_s_per_row)
    fit = math.floor((budget_s - fixed) / per_row)
    fit -= fit % batch_size
    if fit < min(MIN_BUDGET_ROWS, available):
        needed = math.ceil(fixed + MIN_BUDGET_ROWS * per_row)
        raise UserError(f"time budget {budget_s:.4g} s is too short on this machine: measuring, evaluation and a "
                        f"reserve take {fixed:.0f} s and {MIN_BUDGET_ROWS} training rows {MIN_BUDGET_ROWS * per_row:.0f} s "
                        f"more; give at least {needed} s (plus Python's start-up), or leave --time-budget out "
                        "(the recipe's rows)")
    return min(available, fit)


def inference_passes(cfg: Config, val_rows: int, test_rows: int, evaluation_rows: int = 0) -> tuple[float, int]:
    """(inference rows per training row, inference rows whatever the training rows) of a run of
    `cfg`. Per training row: the probe's frozen features (baseline or LP-FT) and, with
    train.eval_every, its share of the periodic validation passes. Fixed: the validation passes
    (once an epoch without eval_every, else once at the end) and the probe's over the validation
    rows, the test rows through the model and the probe, the caller's `evaluation_rows` through
    the model (their probe pass is the caller's to prepay: `plan_time_budget`)."""
    frozen = cfg.train.baseline == "probe" or cfg.head.init == "probe"
    epochs = cfg.train.epochs
    if cfg.train.eval_every:
        per_row = int(frozen) + val_rows * epochs / (cfg.train.batch_size * cfg.train.eval_every)
        val_passes = 1
    else:
        per_row, val_passes = int(frozen), math.ceil(epochs)
    baseline = cfg.train.baseline == "probe"
    fixed = val_rows * (val_passes + frozen) + test_rows * (1 + baseline) + evaluation_rows
    return per_row, fixed


def plan_time_budget(cfg: Config, budget_s: float, started: float, *, evaluation_texts: list[str] = (),
                     trust_pickle: bool = False, log=print) -> BudgetPlan:
    """The training rows of `cfg` that fit `budget_s` seconds counted from `started` (time.time()),
    as a config with data.max_train_samples set. `evaluation_texts`: rows the caller evaluates
    after training, through the model and (train.baseline=probe) the baseline's probe; that probe
    pass runs here, first, into the feature cache the end reads it back from, and times an
    inference row over all those rows (steadier than a short sample); from the cache it costs
    nothing and the merged predictor is timed on a sample instead."""
    from ..data import read_table
    from ..data.split import validation_rows

    if not (math.isfinite(budget_s) and budget_s > 0):
        raise UserError(f"--time-budget {budget_s}: give a number of seconds above 0, e.g. --time-budget 600")
    refuse_unsizable(cfg)
    texts = read_table(cfg.data.train, cfg.data, split="train", trust_pickle=trust_pickle).texts
    test_rows = len(read_table(cfg.data.test, cfg.data, split="test", trust_pickle=trust_pickle).texts) \
        if cfg.data.test else 0
    infer_s_per_row, prepaid = None, 0.0
    if evaluation_texts and cfg.train.baseline == "probe":
        from ..adapters.model import load_tokenizer
        from .probe import frozen_features

        begun = time.time()
        tokenizer = load_tokenizer(cfg.model.name)
        encoding = time.time()
        _, cached = frozen_features(cfg, tokenizer, list(evaluation_texts))
        prepaid = time.time() - begun
        infer_s_per_row = None if cached else (time.time() - encoding) / len(evaluation_texts)
    sample = texts[::max(1, len(texts) // CALIBRATION_INFERENCE_ROWS)][:CALIBRATION_INFERENCE_ROWS]
    rates = measure_rates(cfg, sample, infer_s_per_row)
    val_rows = validation_rows(cfg.data.val_size, len(texts))
    per_row, fixed_rows = inference_passes(cfg, val_rows, test_rows, len(evaluation_texts))
    spent = time.time() - started
    available = len(texts) - val_rows
    cap = cfg.data.max_train_samples
    if cap is not None and cap < available:
        available = cap
    rows = rows_for_time_budget(budget_s, spent, rates, fixed_inference_rows=fixed_rows,
                                inference_per_training_row=per_row, epochs=cfg.train.epochs,
                                available=available, batch_size=cfg.train.batch_size)
    line = (f"time budget {budget_s:.4g} s: measured {1 / rates.train_s_per_row:.1f} training and "
            f"{1 / rates.infer_s_per_row:.0f} inference rows/s in {rates.seconds + prepaid:.0f} s; {spent:.0f} s spent "
            f"so far -> {rows} training rows (of {available}{' (data.max_train_samples)' if available == cap else ''}), "
            f"{cfg.train.epochs:g} epoch(s)")
    log(line)
    return BudgetPlan(with_overrides(cfg, [f"data.max_train_samples={rows}"]), rows, prepaid, line)
