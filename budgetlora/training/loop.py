"""Train: one recipe, start to finish, in one readable function.

data -> budgeted model -> AdamW + schedule -> steps with periodic evaluation, early stopping
and checkpoints -> best adapter restored and saved -> final metrics. Accelerate owns the
device and mixed precision (bf16 autocast on a GPU). The batching is ours (dynamic padding
over pre-tokenised rows, order a pure function of seed and epoch) because that is what lets a
killed run resume exactly where it stopped.

The run directory (its files, its owner, --overwrite and checkpoints) is `rundir`'s; every
file is written through `files`, complete under its final name or not at all.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import files

from ..adapters import budget, methods

from . import tracking
from .. import rundir
from ..data.augment import training_extras
from ..data.clean import length_filter
from ..config import Config
from ..data import collate, encode_labels, epoch_batches, infer_label_names, read_table, tokenize, train_val_indices
from ..data import check_training_classes
from .distill import distill_loss, teacher_logits
from ..errors import UserError
from .schedule import scheduler as _scheduler
from ..evaluation.metrics import compute_logits, full_metrics, pad_id_of, quick_metrics
from ..adapters.model import build_model, check_max_length, load_tokenizer, save_adapter, trainable_state

def _accelerator(precision: str, **tracking_kwargs):
    from accelerate import Accelerator

    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    # cpu=True on a machine without CUDA lets several launched processes train data-parallel
    # over gloo (Accelerate only picks MULTI_CPU when told it is on the CPU)
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=not torch.cuda.is_available(),
                       **tracking_kwargs)


def _optimizer(cfg: Config, model):
    """AdamW; no weight decay on biases and LayerNorm weights (the usual convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda  # one kernel for all parameters on a GPU
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr, fused=fused or None)


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "val_loss" else value > best


@dataclass
class Hooks:
    """The two functions the loop calls that a caller may wrap or swap without patching budgetlora
    (benchmarks time the training phase with them): `collate(token_ids, rows, pad_id, labels)`
    builds every training batch, `compute_logits(model, token_ids, batch_size, pad_id, autocast)`
    every evaluation (the first call after the last training step ends the training phase)."""

    collate: Callable = collate
    compute_logits: Callable = compute_logits


def _claim(out: Path, *, overwrite: bool, resume: bool):
    """(plan, lock): the main process owns the run directory (rundir.claim); with several
    processes every one learns the plan, or the one-line refusal, from it."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    plan = lock = refusal = None
    if state.is_main_process:
        try:
            plan, lock = rundir.claim(out, overwrite=overwrite, resume=resume)
        except UserError as e:
            refusal = str(e)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        plan, refusal = broadcast_object_list([plan, refusal])
    if refusal:
        raise UserError(refusal)
    return plan, lock


def train(
    cfg: Config | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    trust_pickle: bool = False,
    log=print,
    hooks: Hooks | None = None,
) -> dict:
    """Train `cfg` into run directory `out`; returns the final metrics (also in metrics.json).

    `out` is owned by this call from start to end: another train (or resume, or sweep trial)
    into it is refused. overwrite=True keeps the old run until the new one has finished."""
    plan, lock = _claim(Path(out), overwrite=overwrite, resume=resume)
    try:
        return _run(cfg, plan, trust_pickle=trust_pickle, log=log, hooks=hooks or Hooks())
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Config | None, plan: rundir.RunPlan, *, trust_pickle: bool, log, hooks: Hooks) -> dict:
    out = plan.work  # where this run writes until it has finished (see rundir)
    state = None  # the checkpoint to resume from, read (and refused if corrupt) before any work
    if plan.resume:
        cfg, state = rundir.read_config(out), rundir.load_checkpoint(out)
        if plan.staged:
            log(f"resuming the interrupted --overwrite of {plan.out} (the old run stays until this one finishes)")
    check_max_length(cfg.model)
    t_start = time.time()
    accelerator = _accelerator(cfg.train.precision, **tracking.accelerator_kwargs(cfg.train.tracker, out))
    accelerator.wait_for_everyone()  # every process has checked `out` before any writes to it
    main_process = accelerator.is_main_process
    if not main_process:
        log = _silent

    # ---- data: read, label, split
    table = read_table(cfg.data.train, cfg.data, split="train", trust_pickle=trust_pickle)
    label_names = infer_label_names(table, cfg.data.label_names)
    if plan.resume:
        label_names = rundir.read_labels(out)
    labels = encode_labels(table, label_names)
    train_idx, val_idx = train_val_indices(labels, cfg.data, cfg.train.seed)
    check_training_classes(labels[train_idx], label_names, cfg.data.train, log=log)
    test = None
    if cfg.data.test:
        test_table = read_table(cfg.data.test, cfg.data, split="test", trust_pickle=trust_pickle)
        test = (test_table, encode_labels(test_table, label_names))

    # ---- tokenise once (cached on disk)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    pad_id = pad_id_of(tokenizer)
    texts = table.texts
    with accelerator.main_process_first():  # one process fills the cache, the others read it
        if cfg.data.length_filter:  # training rows only, by untruncated token length
            full = np.array([len(t) for t in tokenize([texts[i] for i in train_idx], tokenizer, 1_000_000)])
            keep = length_filter(full, cfg.data.length_filter)
            log(f"length filter {cfg.data.length_filter}: {int((~keep).sum())} of {len(keep)} training rows dropped")
            train_idx = train_idx[keep]
        # only the rows this run uses (a max_train_samples run tokenises its sample, not the file)
        train_ids = tokenize([texts[i] for i in train_idx], tokenizer, cfg.model.max_length)
        val_ids = tokenize([texts[i] for i in val_idx], tokenizer, cfg.model.max_length)
    # augmentation (data.extra_train files, data.synonym_rate): appended to the training rows only
    extra_texts, extra_labels = training_extras(cfg, texts, labels, train_idx, val_idx, label_names,
                                                trust_pickle=trust_pickle, log=log)
    if extra_texts:
        train_ids = train_ids + tokenize(extra_texts, tokenizer, cfg.model.max_length)
    y_train, y_val = np.concatenate([labels[train_idx], extra_labels]), labels[val_idx]

    # ---- model and budget: refused here, before the teacher runs or anything is written
    steps_per_epoch = math.ceil(len(train_ids) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * steps_per_epoch)
    model = build_model(cfg, label_names, total_steps=total_steps)  # AdaLoRA schedules over total_steps
    breakdown = budget.count(model, cfg.budget.max_trainable)
    log(f"trainable parameters ({cfg.model.name}, {cfg.adapter.method} r={cfg.adapter.r}):\n{breakdown.table()}")
    budget.check(breakdown, cfg.budget.max_trainable)

    teacher = None  # distillation: the teacher's logits for every training row, computed once
    if cfg.distill.teacher:
        with accelerator.main_process_first():
            teacher = torch.from_numpy(teacher_logits(
                cfg.distill.teacher, [texts[i] for i in train_idx] + extra_texts, label_names,
                max_length=cfg.model.max_length, batch_size=cfg.train.eval_batch_size, log=log))
    by_tokens = cfg.train.batching == "tokens"  # sorts by length itself, group_by_length or not
    lengths = np.array([len(t) for t in train_ids]) if cfg.train.group_by_length or by_tokens else None

    # ---- run directory (written by the main process only)
    if not plan.resume and main_process:
        rundir.create(plan, cfg.to_yaml(), label_names, breakdown.to_dict())
    accelerator.wait_for_everyone()

    # ---- optimisation (data-parallel over processes when launched with `accelerate launch`)
    model.to(accelerator.device)
    optimizer = _optimizer(cfg, model)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    eval_every = cfg.train.eval_every or steps_per_epoch
    metric = cfg.train.metric
    metric_key = {"val_loss": "loss", "accuracy": "accuracy", "macro_f1": "macro_f1"}[metric]

    step, best_value, best_step, bad_evals, best_state, stopped_early = 0, None, None, 0, None, False
    best_val_logits = None  # validation logits of the best checkpoint: the final report reuses them
    train_seconds, samples_seen, tokens_seen = 0.0, 0, 0
    if plan.resume and state is None:
        log(f"{out} has no checkpoint yet: restarting it from step 0 with its saved config")
        if main_process:
            _truncate_history(out / rundir.HISTORY, 0)
            _truncate_train_log(out / rundir.TRAIN_LOG, 0)
    if state is not None:
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best_value, best_step, bad_evals = state["step"], state["best_value"], state["best_step"], state["bad_evals"]
        best_state, train_seconds, samples_seen = state["best_state"], state["train_seconds"], state["samples_seen"]
        tokens_seen = state["tokens_seen"]
        best_val_logits = state.get("best_val_logits")
        methods.load_trainer_state(model, state.get("method"))
        stopped_early = state["stopped_early"]  # a run that stopped early stays stopped
        if main_process:
            _truncate_history(out / rundir.HISTORY, step)
            _truncate_train_log(out / rundir.TRAIN_LOG, step)
        log(f"resumed {out} at step {step}/{total_steps}")
    # the scheduler is stepped by hand, once per optimiser step, so it is not prepared
    parallel_model, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    if world > 1:
        log(f"data-parallel over {world} processes: each takes 1/{world} of every batch of {cfg.train.batch_size}")
    tracking.start(accelerator, cfg, out, resume_step=step)

    from tqdm.auto import tqdm

    show_bar = main_process and cfg.train.progress and sys.stderr.isatty()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not show_bar, dynamic_ncols=True)
    # summed loss and correct predictions since the last train_log.csv row / the last evaluation
    window, window_steps, window_rows = torch.zeros(2, device=accelerator.device), 0, 0
    since_eval, since_eval_rows, since_eval_steps = torch.zeros(2, device=accelerator.device), 0, 0
    phase_start = time.perf_counter()  # training time excludes evaluations and checkpoints
    batches, order_epoch = None, None
    parallel_model.train()
    while step < total_steps and not stopped_early:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            batches, order_epoch = epoch_batches(len(train_ids), cfg.train.seed, epoch, lengths, cfg.train.batch_size,
                                                 by_tokens=by_tokens), epoch
        rows = batches[position]
        mine = np.array_split(rows, world)[rank]
        # summed loss x processes / global batch: after DDP averages the processes' gradients,
        # the step is the mean over the global batch, exactly as in one process
        weight = world / len(rows)
        if len(mine) == 0:  # a last batch smaller than the number of processes
            mine, weight = rows[:1], 0.0
        batch = hooks.collate(train_ids, mine, pad_id, y_train)
        torch.manual_seed(cfg.train.seed * 1_000_003 + step)  # dropout masks: a function of the step

        with accelerator.autocast():
            logits = parallel_model(**batch.model_inputs(accelerator.device)).logits
        if teacher is None:
            loss = F.cross_entropy(logits.float(), batch.labels.to(accelerator.device), reduction="sum") * weight
        else:
            loss = distill_loss(logits.float(), batch.labels.to(accelerator.device),
                                teacher[batch.index].to(accelerator.device),
                                cfg.distill.temperature, cfg.distill.weight) * weight
        extra = methods.extra_loss(model)  # AdaLoRA's orthogonal regularisation; None for other methods
        accelerator.backward(loss if extra is None else loss + extra)
        step_lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        if cfg.train.max_grad_norm:
            accelerator.clip_grad_norm_(parallel_model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        methods.after_step(model, step)  # AdaLoRA's rank allocation: needs this step's gradients
        optimizer.zero_grad(set_to_none=True)
        since_eval_steps += 1
        with torch.no_grad():
            correct = (logits.argmax(-1) == batch.labels.to(accelerator.device)).sum() * (weight > 0)
            sums = torch.stack([loss.detach(), correct.float()])  # stays on the device: no sync per step
            window, since_eval = window + sums, since_eval + sums
        window_steps, window_rows, since_eval_rows = window_steps + 1, window_rows + len(rows), since_eval_rows + len(rows)
        step += 1
        samples_seen += len(rows)
        tokens_seen += sum(len(train_ids[i]) for i in rows)
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == 1 or step == total_steps:
            totals = accelerator.reduce(window, reduction="sum")  # over processes
            loss_sum, correct_sum = totals.tolist()
            seconds = train_seconds + time.perf_counter() - phase_start
            row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_sum / world / window_steps,
                   "accuracy": correct_sum / window_rows, "lr": step_lr,
                   "samples_per_s": samples_seen / max(seconds, 1e-9)}
            if main_process:
                _append_train_log(out / rundir.TRAIN_LOG, row)
            accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)
            window, window_steps, window_rows = torch.zeros_like(window), 0, 0
        if show_bar and step % 10 == 0:
            seconds = train_seconds + time.perf_counter() - phase_start
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            samples_s=f"{samples_seen / max(seconds, 1e-9):.1f}")

        if step % eval_every == 0 or step == total_steps:
            since_eval_totals = accelerator.reduce(since_eval, reduction="sum").tolist()  # (loss, correct) over processes
            train_loss = since_eval_totals[0] / world / max(since_eval_steps, 1)
            train_seconds += time.perf_counter() - phase_start  # .item() waited for the device
            val_logits = _logits(model, val_ids, cfg, pad_id, accelerator, hooks)
            val = quick_metrics(val_logits, y_val)
            record = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                "train_loss": train_loss,
                "lr": scheduler.get_last_lr()[0],
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "samples_per_s": samples_seen / max(train_seconds, 1e-9),
                "train_seconds": train_seconds,  # training only: evaluations and checkpoints excluded
                "elapsed_s": time.time() - t_start,
                "train_accuracy": since_eval_totals[1] / max(since_eval_rows, 1),
            }
            since_eval, since_eval_rows, since_eval_steps = torch.zeros_like(since_eval), 0, 0
            accelerator.log({"val/loss": val["loss"], "val/accuracy": val["accuracy"],
                             "val/macro_f1": val["macro_f1"]}, step=step)
            value = val[metric_key]
            improved = _better(metric, value, best_value)
            if improved:
                best_value, best_step, bad_evals = value, step, 0
                best_state = {k: v.cpu() for k, v in trainable_state(model).items()}
                best_val_logits = val_logits
            else:
                bad_evals += 1
            patience = cfg.train.early_stopping_patience
            stopped_early = bool(patience) and bad_evals >= patience and step < total_steps
            if main_process:
                files.append_line(out / rundir.HISTORY, json.dumps(record))
                if improved:
                    save_adapter(model, out / rundir.ADAPTER)
                rundir.save_checkpoint(out, {
                    "step": step, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "best_value": best_value, "best_step": best_step,
                    "bad_evals": bad_evals, "best_state": best_state, "train_seconds": train_seconds,
                    "samples_seen": samples_seen, "tokens_seen": tokens_seen, "stopped_early": stopped_early,
                    "best_val_logits": best_val_logits,
                    "method": methods.trainer_state(model),
                }, {"step": step, "total_steps": total_steps, "best_step": best_step, "stopped_early": stopped_early})
            message = (f"step {step}/{total_steps} epoch {record['epoch']:.2f} train_loss {record['train_loss']:.4f} "
                       f"val_loss {val['loss']:.4f} val_acc {val['accuracy']:.4f} val_f1 {val['macro_f1']:.4f} "
                       f"{record['samples_per_s']:.1f} samples/s" + (" *" if best_step == step else ""))
            bar.write(message) if show_bar else log(message)
            if stopped_early:
                log(f"early stopping at step {step}: no {metric} improvement in {patience} evaluations")
            phase_start = time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()

    # ---- the best checkpoint, restored and measured in full
    model.load_state_dict(best_state, strict=False)
    if main_process:
        save_adapter(model, out / rundir.ADAPTER, tokenizer)
    if best_val_logits is None:  # a checkpoint from before best_val_logits was kept
        best_val_logits = _logits(model, val_ids, cfg, pad_id, accelerator, hooks)
    result = {
        "recipe": cfg.recipe,
        "best_step": best_step,
        "steps": step,
        "total_steps": total_steps,
        "stopped_early": stopped_early,
        "metric": metric,
        "best_value": best_value,
        "trainable_params": breakdown.trainable,
        "train_rows": len(train_ids),
        "train_rows_extra": len(extra_texts),
        "val_rows": len(val_ids),
        "train_seconds": train_seconds,
        "train_samples_per_s": samples_seen / max(train_seconds, 1e-9),
        "train_tokens_per_s": tokens_seen / max(train_seconds, 1e-9),
        "wall_seconds": time.time() - t_start,
        "device": str(accelerator.device),
        "processes": world,
        "val": full_metrics(best_val_logits, y_val, label_names, seed=cfg.train.seed),
    }
    if test is not None:
        test_table, y_test = test
        test_ids = tokenize(test_table.texts, tokenizer, cfg.model.max_length)
        result["test"] = full_metrics(_logits(model, test_ids, cfg, pad_id, accelerator, hooks), y_test, label_names,
                                      seed=cfg.train.seed)
    if main_process:
        files.write_json(out / rundir.METRICS, result)
        _write_val_predictions(out / rundir.VAL_PREDICTIONS, [texts[i] for i in val_idx], y_val, best_val_logits,
                               label_names)
    final = {"final/val_accuracy": result["val"]["accuracy"], "final/val_macro_f1": result["val"]["macro_f1"]}
    if "test" in result:
        final.update({"final/test_accuracy": result["test"]["accuracy"], "final/test_macro_f1": result["test"]["macro_f1"]})
    accelerator.log(final, step=step)
    accelerator.wait_for_everyone()  # every process is done with the run directory before it moves
    accelerator.end_training()  # (also ends the process group)
    if main_process:
        rundir.finish(plan)  # an --overwrite run replaces the old one only now, finished
        if cfg.train.report:
            _write_report(plan.out, log)
    log(f"best {metric} {best_value:.4f} at step {best_step}; val accuracy {result['val']['accuracy']:.4f}"
        + (f", test accuracy {result['test']['accuracy']:.4f}" if "test" in result else "")
        + f"; run saved in {plan.out}")
    return result


def _logits(model, token_ids, cfg: Config, pad_id: int, accelerator, hooks: Hooks) -> np.ndarray:
    """Logits for all rows; with several processes each computes a share and all get the whole."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return hooks.compute_logits(model, token_ids, cfg.train.eval_batch_size, pad_id, accelerator.autocast)
    from accelerate.utils import gather_object

    share = np.arange(len(token_ids))[rank::world]
    logits = hooks.compute_logits(model, [token_ids[i] for i in share], cfg.train.eval_batch_size, pad_id,
                            accelerator.autocast)
    out = None
    for rows, part in gather_object([(share, logits)]):
        if len(rows) == 0:
            continue
        if out is None:
            out = np.empty((len(token_ids), part.shape[1]), dtype=np.float32)
        out[rows] = part
    return out


def _silent(message: str) -> None:
    pass


def _truncate_history(path: Path, step: int) -> None:
    """Drop evaluations logged after the checkpoint we resume from (and a partial last line)."""
    if not path.is_file():
        return
    kept = [record for record in files.read_jsonl(path) if record.get("step", step + 1) <= step]
    files.write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def _write_val_predictions(path: Path, texts: list[str], labels: np.ndarray, logits: np.ndarray,
                           label_names: list[str]) -> None:
    """One row per validation text: what the report's misclassified sample is drawn from."""
    import pandas as pd

    from ..evaluation.metrics import softmax

    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame({"text": texts, "true": [label_names[i] for i in labels],
                          "pred": [label_names[i] for i in pred], "confidence": probs.max(axis=1)})
    files.write_csv(path, frame)


def _write_report(out: Path, log) -> None:
    """The run report; a failure to draw it costs a warning, never the run it describes."""
    from ..evaluation.report import write_report  # report reads the run directory this function just finished

    try:
        paths = write_report(out)
    except Exception as e:  # noqa: BLE001 -- the run is saved; say what went wrong, in one line
        import warnings

        warnings.warn(f"run report not written ({type(e).__name__}: {e}); retry with `budgetlora report {out}`",
                      stacklevel=2)
        return
    log(f"report: {paths['html']}")


TRAIN_LOG_COLUMNS = ("step", "epoch", "loss", "accuracy", "lr", "samples_per_s")


def _append_train_log(path: Path, row: dict) -> None:
    if not path.is_file():
        files.write_text(path, ",".join(TRAIN_LOG_COLUMNS) + "\n")
    files.append_line(path, ",".join(repr(row[c]) if isinstance(row[c], float) else str(row[c])
                                     for c in TRAIN_LOG_COLUMNS))


def _truncate_train_log(path: Path, step: int) -> None:
    """Drop train_log.csv rows logged after the checkpoint we resume from (and a partial last line)."""
    if not path.is_file():
        return
    header, *rows = path.read_text(encoding="utf-8").splitlines() or [",".join(TRAIN_LOG_COLUMNS)]
    kept = [line for line in rows if _complete_log_row(line) and int(line.split(",", 1)[0]) <= step]
    files.write_text(path, "".join(line + "\n" for line in [header, *kept]))


def _complete_log_row(line: str) -> bool:
    fields = line.split(",")
    if len(fields) != len(TRAIN_LOG_COLUMNS) or not fields[0].isdigit():
        return False
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True
