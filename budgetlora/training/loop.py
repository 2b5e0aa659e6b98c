"""Training loop: the recipe of a run, in the order it runs (in the spirit of torchtune's recipes).

setup (data, budgeted model, run directory, optimiser, a checkpoint to resume) -> training steps
-> an evaluation every train.eval_every steps (early stopping, the best adapter, a checkpoint)
-> finish (the best checkpoint restored and measured in full, final metrics, the report).

What the loop carries from step to step and a checkpoint saves is one definition, `TrainState`.
Accelerate owns the device, the processes and mixed precision (bf16 autocast where the CPU or GPU
computes bf16 natively, chosen by `hardware.choose`; frozen encoder weights stored in bf16). The
batching is ours (dynamic padding over pre-tokenised rows, order a pure function of seed and
epoch) because that is what lets a killed run resume exactly where it stopped. The run directory
(its files, its owner, --overwrite, checkpoints) is `rundir`'s.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import hardware, rundir
from ..adapters import budget, methods
from ..adapters.model import (attention_dropout, build_model, check_max_length, load_tokenizer, save_adapter,
                              store_frozen_encoder_in, trainable_state)
from ..config import Config
from ..data import (check_training_classes, collate, encode_labels, epoch_batches, infer_label_names, read_table,
                    tokenize, train_val_indices)
from ..data.augment import training_extras
from ..data.clean import length_filter
from ..errors import UserError
from ..evaluation.metrics import compute_logits, full_metrics, pad_id_of, quick_metrics, softmax
from . import tracking
from .distill import distill_loss, teacher_logits
from .fast_dropout import use_fast_dropout
from .fused_lora import use_fused_lora
from .schedule import scheduler as lr_scheduler
from .selftrain import SelfTraining


@dataclass
class Hooks:
    """The two functions the loop calls that a caller may wrap or swap without patching budgetlora
    (benchmarks time the training phase with them): `collate(token_ids, rows, pad_id, labels)`
    builds every training batch, `compute_logits(model, token_ids, batch_size, pad_id, autocast)`
    every evaluation (the first call after the last training step ends the training phase)."""

    collate: Callable = collate
    compute_logits: Callable = compute_logits


@dataclass
class TrainState:
    """Everything the loop carries from step to step besides the weights and the optimiser; a
    checkpoint is this plus those (`to_checkpoint` / `from_checkpoint`)."""

    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    best_state: dict | None = None  # trainable tensors at the best evaluation (CPU)
    best_val_logits: np.ndarray | None = None  # validation logits there: the final metrics reuse them
    stopped_early: bool = False  # a run that stopped early stays stopped when resumed
    train_seconds: float = 0.0  # training only: evaluations and checkpoints excluded
    samples_seen: int = 0
    tokens_seen: int = 0
    head_init: dict | None = None  # head.init=probe: the LP fit at setup (a resumed run keeps its checkpoint's head)
    round: int = 0  # self-training round (selftrain.py); its steps start after step round_start
    round_start: int = 0

    def samples_per_s(self, seconds: float | None = None) -> float:
        return self.samples_seen / max(self.train_seconds if seconds is None else seconds, 1e-9)

    def to_checkpoint(self, model, optimizer, scheduler) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "trainable": trainable_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "method": methods.trainer_state(model)}

    @classmethod
    def from_checkpoint(cls, saved: dict, model, optimizer, scheduler) -> "TrainState":
        model.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        methods.load_trainer_state(model, saved.get("method"))
        return cls(**{f.name: saved.get(f.name, f.default) for f in fields(cls)})


@dataclass
class RunData:
    """The rows of a run, labelled and tokenised, as setup hands them to the loop."""

    label_names: list[str]
    tokenizer: object
    pad_id: int
    val_texts: list[str]
    train_ids: list[np.ndarray]
    val_ids: list[np.ndarray]
    y_train: np.ndarray
    y_val: np.ndarray
    extra_rows: int  # augmentation rows appended to train_ids
    lengths: np.ndarray | None  # token lengths of train_ids, for length-grouped batches
    teacher: torch.Tensor | None = None  # distillation: teacher logits per training row
    test: tuple | None = None  # (token ids, labels) of data.test


class Sums:
    """Summed loss and correct predictions since the last report, kept on the device (no sync per step)."""

    def __init__(self, device):
        self.totals, self.steps, self.rows = torch.zeros(2, device=device), 0, 0

    def add(self, sums: torch.Tensor, rows: int) -> None:
        self.totals, self.steps, self.rows = self.totals + sums, self.steps + 1, self.rows + rows

    def take(self, accelerator) -> tuple[float, float]:
        """(mean loss per step, accuracy) over every process since the last take; then reset."""
        loss_sum, correct_sum = accelerator.reduce(self.totals, reduction="sum").tolist()
        result = loss_sum / accelerator.num_processes / max(self.steps, 1), correct_sum / max(self.rows, 1)
        self.totals, self.steps, self.rows = torch.zeros_like(self.totals), 0, 0
        return result


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
    into it is refused. overwrite=True keeps the old run until the new one has finished.
    resume=True continues the run's saved config (cfg None, or equal to it)."""
    plan, lock = _claim(Path(out), overwrite=overwrite, resume=resume)
    try:
        recipe = Recipe(cfg, plan, trust_pickle=trust_pickle, log=log, hooks=hooks or Hooks())
        recipe.setup()
        recipe.train()
        if recipe.selftrain:  # data.unlabelled: rounds of pseudo-labelled rows (selftrain.py)
            recipe.selftrain.run_rounds()
        return recipe.finish()
    finally:
        if lock is not None:
            lock.release()


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


class Recipe:
    """One training run: `setup`, `train` (steps, evaluations, checkpoints), `finish`."""

    def __init__(self, cfg: Config | None, plan: rundir.RunPlan, *, trust_pickle: bool, log, hooks: Hooks):
        self.plan, self.out, self.hooks, self.trust_pickle = plan, plan.work, hooks, trust_pickle
        self.cfg, self.saved = self._config_and_checkpoint(cfg, log)
        self.t_start = time.time()
        self.precision = hardware.choose(self.cfg.train.precision, "cuda" if torch.cuda.is_available() else "cpu")
        self.accelerator = _accelerator(self.precision.value,
                                        **tracking.accelerator_kwargs(self.cfg.train.tracker, self.out))
        self.main = self.accelerator.is_main_process
        self.log = log if self.main else _silent
        self.log(f"precision {self.precision}")

    def _config_and_checkpoint(self, cfg: Config | None, log) -> tuple[Config, dict | None]:
        """The config to train and the checkpoint to resume (read, and refused if corrupt, before any work)."""
        if not self.plan.resume:
            if cfg is None:
                raise UserError("train() needs a config (cfg), or resume=True to continue a run")
            check_max_length(cfg.model)
            return cfg, None
        saved_cfg = rundir.read_config(self.out)
        if cfg is not None and cfg.to_dict() != saved_cfg.to_dict():
            raise UserError(f"resume continues {self.out}'s saved config.yaml, and the config given differs; "
                            "pass cfg=None (CLI: drop --recipe/--set)")
        if self.plan.staged:
            log(f"resuming the interrupted --overwrite of {self.plan.out} (the old run stays until this one finishes)")
        check_max_length(saved_cfg.model)
        return saved_cfg, rundir.load_checkpoint(self.out)

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        """Data, budgeted model (refused over budget before anything is written), run directory,
        optimiser and schedule, and the state to start from."""
        cfg, accelerator = self.cfg, self.accelerator
        accelerator.wait_for_everyone()  # every process has read the plan before any writes
        self.data = self._setup_data()
        self.attention = hardware.attention(cfg.model.attention, accelerator.device.type, self.precision.value,
                                            hardware.typical_length([len(ids) for ids in self.data.train_ids]),
                                            attention_dropout(cfg.model))
        self.log(f"attention {self.attention}")
        self.labelled_rows = len(self.data.train_ids) - self.data.extra_rows  # before augmentation and pseudo labels
        self.selftrain = SelfTraining.attach(self)  # None without data.unlabelled
        self.set_steps((self.saved or {}).get("round_start", 0))
        self.model, self.breakdown = self._setup_model()
        self.data.teacher = self._setup_teacher()
        if not self.plan.resume and self.main:
            rundir.create(self.plan, cfg.to_yaml(), self.data.label_names, self.breakdown.to_dict())
        accelerator.wait_for_everyone()
        self.model.to(accelerator.device)
        self.fitted_baseline = None  # the baseline's probe, when LP-FT fitted it at setup
        head_init = self._init_head() if self.saved is None else None  # LP-FT: before step 0, never on resume
        if self.precision.value in ("bf16", "fp16"):  # after counting: the budget counts fp32 weights
            store_frozen_encoder_in(self.model, hardware.torch_dtype(self.precision.value))
        if cfg.train.fast_dropout and accelerator.device.type == "cpu":
            use_fast_dropout(self.model)
        if cfg.train.fused_lora and accelerator.device.type == "cpu":
            fused = use_fused_lora(self.model)
            if fused:
                self.log(f"fused LoRA layers: {fused} (train.fused_lora: base and adapter written in one pass)")
        self.optimizer = _optimizer(cfg, self.model)
        self.scheduler = lr_scheduler(cfg, self.optimizer, self.total_steps - self.round_start)
        self.state = self._restore()
        if head_init is not None:
            self.state.head_init = head_init
        # the scheduler is stepped by hand, once per optimiser step, so it is not prepared
        self.parallel_model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        if accelerator.num_processes > 1:
            self.log(f"data-parallel over {accelerator.num_processes} processes: each takes "
                     f"1/{accelerator.num_processes} of every batch of {cfg.train.batch_size}")
        tracking.start(accelerator, cfg, self.out, resume_step=self.state.step)

    def set_steps(self, round_start: int = 0) -> None:
        """Steps of the training rows as they are now; a self-training round's count on from round_start."""
        cfg = self.cfg
        self.round_start = round_start
        self.steps_per_epoch = math.ceil(len(self.data.train_ids) / cfg.train.batch_size)
        self.total_steps = round_start + (cfg.train.max_steps or math.ceil(cfg.train.epochs * self.steps_per_epoch))
        self.eval_every = cfg.train.eval_every or self.steps_per_epoch

    def _setup_data(self) -> RunData:
        """Read, label and split the rows, tokenise them once (cached), append augmentation rows."""
        cfg = self.cfg
        table = read_table(cfg.data.train, cfg.data, split="train", trust_pickle=self.trust_pickle)
        label_names = rundir.read_labels(self.out) if self.plan.resume else infer_label_names(table, cfg.data.label_names)
        labels = encode_labels(table, label_names)
        train_idx, val_idx = train_val_indices(labels, cfg.data, cfg.train.seed)
        check_training_classes(labels[train_idx], label_names, cfg.data.train, log=self.log)
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
        texts = table.texts
        with self.accelerator.main_process_first():  # one process fills the cache, the others read it
            train_idx = self._length_filtered(train_idx, texts, tokenizer)
            # only the rows this run uses (a max_train_samples run tokenises its sample, not the file)
            train_ids = tokenize([texts[i] for i in train_idx], tokenizer, cfg.model.max_length)
            val_ids = tokenize([texts[i] for i in val_idx], tokenizer, cfg.model.max_length)
        # augmentation (data.extra_train files, data.synonym_rate): appended to the training rows only
        extra_texts, extra_labels = training_extras(cfg, texts, labels, train_idx, val_idx, label_names,
                                                    trust_pickle=self.trust_pickle, log=self.log)
        if extra_texts:
            train_ids = train_ids + tokenize(extra_texts, tokenizer, cfg.model.max_length)
        self.teacher_texts = [texts[i] for i in train_idx] + extra_texts
        grouped = cfg.train.group_by_length or cfg.train.batching == "tokens"
        return RunData(label_names=label_names, tokenizer=tokenizer, pad_id=pad_id_of(tokenizer),
                       val_texts=[texts[i] for i in val_idx], train_ids=train_ids, val_ids=val_ids,
                       y_train=np.concatenate([labels[train_idx], extra_labels]), y_val=labels[val_idx],
                       extra_rows=len(extra_texts), lengths=np.array([len(t) for t in train_ids]) if grouped else None,
                       test=self._test_rows(label_names, tokenizer))

    def _length_filtered(self, train_idx: np.ndarray, texts: list[str], tokenizer) -> np.ndarray:
        """data.length_filter: training rows within the token-length percentiles (untruncated lengths)."""
        bounds = self.cfg.data.length_filter
        if not bounds:
            return train_idx
        full = np.array([len(t) for t in tokenize([texts[i] for i in train_idx], tokenizer, 1_000_000)])
        keep = length_filter(full, bounds)
        self.log(f"length filter {bounds}: {int((~keep).sum())} of {len(keep)} training rows dropped")
        return train_idx[keep]

    def _test_rows(self, label_names: list[str], tokenizer) -> tuple | None:
        """data.test, read now (a bad file is refused before training), tokenised at the end."""
        if not self.cfg.data.test:
            return None
        table = read_table(self.cfg.data.test, self.cfg.data, split="test", trust_pickle=self.trust_pickle)
        return table, encode_labels(table, label_names)

    def _setup_model(self):
        """The budgeted model and its exact breakdown; over budget is refused here."""
        cfg = self.cfg
        attention = None if self.attention.value == "default" else self.attention.value
        model = build_model(cfg, self.data.label_names, total_steps=self.total_steps,  # AdaLoRA schedules over it
                            attention=attention)
        breakdown = budget.count(model, cfg.budget.max_trainable)
        self.log(f"trainable parameters ({cfg.model.name}, {cfg.adapter.method} r={cfg.adapter.r}):\n{breakdown.table()}")
        budget.check(breakdown, cfg.budget.max_trainable)
        return model, breakdown

    def _setup_teacher(self) -> torch.Tensor | None:
        """Distillation: the teacher's logits for every training row, computed once (and cached)."""
        cfg = self.cfg
        if not cfg.distill.teacher:
            return None
        with self.accelerator.main_process_first():
            return torch.from_numpy(teacher_logits(cfg.distill.teacher, self.teacher_texts, self.data.label_names,
                                                   max_length=cfg.model.max_length,
                                                   batch_size=cfg.train.eval_batch_size, log=self.log))

    def _init_head(self) -> dict | None:
        """head.init=probe (LP-FT): the head's output layer fitted on the frozen features of the
        training rows (probe.init_head, in fp32; or the baseline's fit, shared), before any step;
        its validation accuracy is logged."""
        cfg, data = self.cfg, self.data
        if cfg.head.init != "probe":
            return None
        from .probe import fit_baseline, head_init_from_baseline, init_head

        if self._head_shares_baseline():
            self.fitted_baseline = fit_baseline(cfg.model.name, data.pad_id, len(data.label_names),
                                                (data.train_ids, data.y_train), batch_size=cfg.train.eval_batch_size,
                                                precision=cfg.train.precision)
            info = head_init_from_baseline(self.model, self.fitted_baseline)
            # the model's logits before any step are the probe's on these features (up to rounding),
            # which the baseline needs at the end anyway (then read from the feature cache)
            fitted = self.fitted_baseline
            val_logits = fitted.fit.logits(fitted.encoder.features(data.val_ids))
        else:
            info = init_head(self.model, data.train_ids, data.y_train, data.pad_id, model_name=cfg.model.name,
                             batch_size=cfg.train.eval_batch_size)
            # every process scores all validation rows (a few hundred, once): no gather at setup
            val_logits = compute_logits(self.model, data.val_ids, cfg.train.eval_batch_size, data.pad_id)
        info["val_accuracy"] = quick_metrics(val_logits, data.y_val)["accuracy"]
        self.log(f"head.init=probe: {info['layer']} fitted on {info['rows']} training rows (C={info['C']:g}) in "
                 f"{info['seconds']:.1f} s; validation accuracy before any step {info['val_accuracy']:.4f}")
        return info

    def _head_shares_baseline(self) -> bool:
        """LP-FT can reuse the baseline's fit (probe.head_init_from_baseline): a baseline is run on
        the same rows (no augmentation rows), the head pools as it does, and the base is not
        quantised (QLoRA's 4-bit base gives other features than the frozen encoder)."""
        from .probe import HEAD_POOLING, detect_pooling

        cfg = self.cfg
        return (cfg.train.baseline == "probe" and self.data.extra_rows == 0
                and HEAD_POOLING.get(cfg.head.type) == detect_pooling(cfg.model.name)[0]
                and methods.method_spec(cfg.adapter.method).quantization is None)

    def _restore(self) -> TrainState:
        """A fresh state, or the checkpoint's (a run killed before its first checkpoint restarts at step 0)."""
        if not self.plan.resume:
            return TrainState()
        if self.saved is None:
            self.log(f"{self.out} has no checkpoint yet: restarting it from step 0 with its saved config")
            state = TrainState()
        else:
            state = TrainState.from_checkpoint(self.saved, self.model, self.optimizer, self.scheduler)
            self.log(f"resumed {self.out} at step {state.step}/{self.total_steps}")
        if self.main:
            rundir.truncate_logs(self.out, state.step)  # what was logged after that checkpoint is logged again
        return state

    # ---------------------------------------------------------------- training

    def train(self) -> None:
        """Steps until the end or early stopping; an evaluation (and checkpoint) every eval_every steps."""
        from tqdm.auto import tqdm

        cfg, state, device = self.cfg, self.state, self.accelerator.device
        self.show_bar = self.main and cfg.train.progress and sys.stderr.isatty()
        self.bar = tqdm(total=self.total_steps, initial=state.step, desc="train", unit="step",
                        disable=not self.show_bar, dynamic_ncols=True)
        self.since_log, self.since_eval = Sums(device), Sums(device)
        self.phase_start = time.perf_counter()  # training time excludes evaluations and checkpoints
        batches, order_epoch = None, None
        self.parallel_model.train()
        while state.step < self.total_steps and not state.stopped_early:
            epoch, position = divmod(state.step - self.round_start, self.steps_per_epoch)
            if epoch != order_epoch:
                batches, order_epoch = epoch_batches(len(self.data.train_ids), cfg.train.seed, epoch, self.data.lengths,
                                                     cfg.train.batch_size, by_tokens=cfg.train.batching == "tokens"), epoch
            rows = batches[position]
            step_lr, loss = self.train_step(rows)
            self._after_step(rows, step_lr, loss)
            if (state.step - self.round_start) % self.eval_every == 0 or state.step == self.total_steps:
                self.evaluate()
                self.phase_start = time.perf_counter()
        self.bar.close()
        self.accelerator.wait_for_everyone()

    def train_step(self, rows: np.ndarray) -> tuple[float, torch.Tensor]:
        """One optimiser step on the global batch `rows`; returns (the rate it used, its loss)."""
        cfg, accelerator, data, step = self.cfg, self.accelerator, self.data, self.state.step
        world = accelerator.num_processes
        mine = np.array_split(rows, world)[accelerator.process_index]
        # summed loss x processes / global batch: after DDP averages the processes' gradients,
        # the step is the mean over the global batch, exactly as in one process
        weight = world / len(rows)
        if len(mine) == 0:  # a last batch smaller than the number of processes
            mine, weight = rows[:1], 0.0
        batch = self.hooks.collate(data.train_ids, mine, data.pad_id, data.y_train)
        torch.manual_seed(cfg.train.seed * 1_000_003 + step)  # dropout masks: a function of the step
        labels = batch.labels.to(accelerator.device)
        with accelerator.autocast():
            logits = self.parallel_model(**batch.model_inputs(accelerator.device)).logits
        if data.teacher is None:
            loss = F.cross_entropy(logits.float(), labels, reduction="sum",
                                   label_smoothing=cfg.train.label_smoothing) * weight
        else:
            loss = distill_loss(logits.float(), labels, data.teacher[batch.index].to(accelerator.device),
                                cfg.distill.temperature, cfg.distill.weight, cfg.train.label_smoothing) * weight
        extra = methods.extra_loss(self.model)  # AdaLoRA's orthogonal regularisation; None for other methods
        accelerator.backward(loss if extra is None else loss + extra)
        step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        if cfg.train.max_grad_norm:
            accelerator.clip_grad_norm_(self.parallel_model.parameters(), cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        methods.after_step(self.model, step)  # AdaLoRA's rank allocation: needs this step's gradients
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            correct = (logits.argmax(-1) == labels).sum() * (weight > 0)
            sums = torch.stack([loss.detach(), correct.float()])
        self.since_log.add(sums, len(rows))
        self.since_eval.add(sums, len(rows))
        return step_lr, loss

    def _after_step(self, rows: np.ndarray, step_lr: float, loss: torch.Tensor) -> None:
        """Count the step; a train_log.csv row every train.log_every steps; the progress bar."""
        state, cfg = self.state, self.cfg
        state.step += 1
        state.samples_seen += len(rows)
        state.tokens_seen += sum(len(self.data.train_ids[i]) for i in rows)
        self.bar.update(1)
        seconds = state.train_seconds + time.perf_counter() - self.phase_start
        if state.step % cfg.train.log_every == 0 or state.step == 1 or state.step == self.total_steps:
            mean_loss, accuracy = self.since_log.take(self.accelerator)
            row = {"step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4), "loss": mean_loss,
                   "accuracy": accuracy, "lr": step_lr, "samples_per_s": state.samples_per_s(seconds)}
            if self.main:
                rundir.append_train_log(self.out, row)
            self.accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=state.step)
        if self.show_bar and state.step % 10 == 0:
            self.bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                 samples_s=f"{state.samples_per_s(seconds):.1f}")

    # ---------------------------------------------------------------- evaluation and checkpoints

    def evaluate(self) -> None:
        """Validation metrics, the best so far (early stopping), metrics.jsonl, adapter, checkpoint."""
        state, cfg = self.state, self.cfg
        train_loss, train_accuracy = self.since_eval.take(self.accelerator)
        state.train_seconds += time.perf_counter() - self.phase_start  # take() waited for the device
        val_logits = self.logits(self.data.val_ids)
        val = quick_metrics(val_logits, self.data.y_val)
        record = {"step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4), "train_loss": train_loss,
                  "lr": self.scheduler.get_last_lr()[0], "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                  "val_macro_f1": val["macro_f1"], "samples_per_s": state.samples_per_s(),
                  "train_seconds": state.train_seconds, "elapsed_s": time.time() - self.t_start,
                  "train_accuracy": train_accuracy}
        self.accelerator.log({f"val/{k}": val[k] for k in ("loss", "accuracy", "macro_f1")}, step=state.step)
        metric = cfg.train.metric
        value = val[METRIC_KEYS[metric]]
        improved = _better(metric, value, state.best_value)
        if improved:
            state.best_value, state.best_step, state.bad_evals = value, state.step, 0
            state.best_state = {k: v.cpu() for k, v in trainable_state(self.model).items()}
            state.best_val_logits = val_logits
        else:
            state.bad_evals += 1
        patience = cfg.train.early_stopping_patience
        state.stopped_early = bool(patience) and state.bad_evals >= patience and state.step < self.total_steps
        if self.main:
            self.save_checkpoint(record, improved)
        message = (f"step {state.step}/{self.total_steps} epoch {record['epoch']:.2f} train_loss {train_loss:.4f} "
                   f"val_loss {val['loss']:.4f} val_acc {val['accuracy']:.4f} val_f1 {val['macro_f1']:.4f} "
                   f"{record['samples_per_s']:.1f} samples/s" + (" *" if improved else ""))
        self.bar.write(message) if self.show_bar else self.log(message)
        if state.stopped_early:
            self.log(f"early stopping at step {state.step}: no {metric} improvement in {patience} evaluations")

    def save_checkpoint(self, record: dict, improved: bool) -> None:
        """The evaluation's line, the adapter if it is the best so far, then the checkpoint (last:
        a kill before it resumes from the previous one and logs this evaluation again)."""
        state = self.state
        rundir.append_history(self.out, record)
        if improved:
            save_adapter(self.model, self.out / rundir.ADAPTER)
        rundir.save_checkpoint(self.out, state.to_checkpoint(self.model, self.optimizer, self.scheduler),
                               {"step": state.step, "total_steps": self.total_steps, "best_step": state.best_step,
                                "stopped_early": state.stopped_early})

    def logits(self, token_ids: list[np.ndarray]) -> np.ndarray:
        """Logits for all rows; with several processes each computes a share and all get the whole."""
        accelerator, batch_size, pad_id = self.accelerator, self.cfg.train.eval_batch_size, self.data.pad_id
        world, rank = accelerator.num_processes, accelerator.process_index
        if world == 1:
            return self.hooks.compute_logits(self.model, token_ids, batch_size, pad_id, accelerator.autocast)
        from accelerate.utils import gather_object

        share = np.arange(len(token_ids))[rank::world]
        part = self.hooks.compute_logits(self.model, [token_ids[i] for i in share], batch_size, pad_id,
                                         accelerator.autocast)
        out = None
        for rows, logits in gather_object([(share, part)]):
            if len(rows):
                out = np.empty((len(token_ids), logits.shape[1]), dtype=np.float32) if out is None else out
                out[rows] = logits
        return out

    # ---------------------------------------------------------------- finish

    def finish(self) -> dict:
        """The best checkpoint restored and saved with the tokenizer, measured in full; metrics.json,
        val_predictions.csv, the report; an --overwrite run swapped in."""
        state, data, cfg, accelerator = self.state, self.data, self.cfg, self.accelerator
        self.model.load_state_dict(state.best_state, strict=False)
        if self.main:
            save_adapter(self.model, self.out / rundir.ADAPTER, data.tokenizer)
        if state.best_val_logits is None:  # a checkpoint from before best_val_logits was kept
            state.best_val_logits = self.logits(data.val_ids)
        result = self._final_metrics()
        if self.main:
            from .. import files

            files.write_json(self.out / rundir.METRICS, result)
            rundir.write_val_predictions(self.out, data.val_texts, data.y_val, softmax(state.best_val_logits),
                                         data.label_names)
        final = {f"final/{split}_{k}": result[split][k] for split in ("val", "test") if split in result
                 for k in ("accuracy", "macro_f1")}
        accelerator.log(final, step=state.step)
        accelerator.wait_for_everyone()  # every process is done with the run directory before it moves
        accelerator.end_training()  # (also ends the process group)
        if self.main:
            rundir.finish(self.plan)  # an --overwrite run replaces the old one only now, finished
            if cfg.train.report:
                _write_report(self.plan.out, self.log)
        self.log(f"best {cfg.train.metric} {state.best_value:.4f} at step {state.best_step}; val accuracy "
                 f"{result['val']['accuracy']:.4f}"
                 + (f", test accuracy {result['test']['accuracy']:.4f}" if "test" in result else "")
                 + f"; run saved in {self.plan.out}")
        return result

    def _final_metrics(self) -> dict:
        state, data, cfg = self.state, self.data, self.cfg
        result = {
            "recipe": cfg.recipe, "best_step": state.best_step, "steps": state.step, "total_steps": self.total_steps,
            "stopped_early": state.stopped_early, "metric": cfg.train.metric, "best_value": state.best_value,
            "trainable_params": self.breakdown.trainable, "train_rows": len(data.train_ids),
            "train_rows_extra": data.extra_rows, "val_rows": len(data.val_ids), "train_seconds": state.train_seconds,
            # the class mix the model learned, for label-shift correction (evaluation/label_shift.py)
            "train_label_counts": dict(zip(data.label_names, np.bincount(data.y_train, minlength=len(data.label_names))
                                           .tolist())),
            "train_samples_per_s": state.samples_per_s(),
            "train_tokens_per_s": state.tokens_seen / max(state.train_seconds, 1e-9),
            "wall_seconds": time.time() - self.t_start, "device": str(self.accelerator.device),
            "precision": self.precision.value, "attention": self.attention.value,
            "processes": self.accelerator.num_processes,
            "val": full_metrics(state.best_val_logits, data.y_val, data.label_names, seed=cfg.train.seed),
        }
        test = None
        if self.selftrain:
            result["selftrain"] = self.selftrain.summary()
        if data.test is not None:
            table, y_test = data.test
            test = tokenize(table.texts, data.tokenizer, cfg.model.max_length), y_test
            result["test"] = full_metrics(self.logits(test[0]), y_test, data.label_names, seed=cfg.train.seed)
        if state.head_init is not None:
            result["head_init"] = state.head_init
        if cfg.train.baseline == "probe":  # after wall_seconds: its own seconds are in it
            result["baseline"] = self._baseline(test, result)
        return result

    def _baseline(self, test: tuple | None, result: dict) -> dict:
        """train.baseline=probe: frozen features + logistic regression on the same training rows
        (augmentation and pseudo-labelled rows left out), measured on the same validation (and test) rows; its weights
        in baseline_probe.npz."""
        from .probe import BASELINE_WEIGHTS, baseline, baseline_line, save_fit

        data, cfg = self.data, self.cfg
        n = self.labelled_rows  # the labelled rows only: no augmentation, no pseudo labels
        b, fit = baseline(cfg.model.name, data.pad_id, data.label_names, (data.train_ids[:n], data.y_train[:n]),
                          (data.val_ids, data.y_val), test=test, seed=cfg.train.seed,
                          batch_size=cfg.train.eval_batch_size, precision=cfg.train.precision,
                          fitted=self.fitted_baseline)
        if self.main:
            save_fit(self.out / BASELINE_WEIGHTS, fit, pooling=b["pooling"])
        self.log(baseline_line(b, result))
        return b


# ---------------------------------------------------------------- small pieces


def _accelerator(precision: str, **tracking_kwargs):
    """Accelerate in `precision` (fp32 / bf16 / fp16, already chosen by hardware.choose)."""
    from accelerate import Accelerator

    from accelerate.state import AcceleratorState

    mixed = "no" if precision == "fp32" else precision
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed) and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        # Accelerate keeps one process-wide state and refuses another precision in the same
        # process (a notebook, a sweep: a bf16 run, then an fp32 one); it has no public reset, so
        # the per-precision part is cleared the way its own tests do, keeping the process state
        AcceleratorState._reset_state()
    # cpu=True on a machine without CUDA lets several launched processes train data-parallel
    # over gloo (Accelerate only picks MULTI_CPU when told it is on the CPU)
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), **tracking_kwargs)


def _optimizer(cfg: Config, model):
    """AdamW; no weight decay on biases and LayerNorm weights (the usual convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda  # one kernel for all parameters on a GPU
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr, fused=fused or None)


METRIC_KEYS = {"val_loss": "loss", "accuracy": "accuracy", "macro_f1": "macro_f1"}  # train.metric -> quick_metrics key


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "val_loss" else value > best


def _silent(message: str) -> None:
    pass


def _write_report(out: Path, log) -> None:
    """The run report; a failure to draw it costs a warning, never the run it describes."""
    from ..errors import warn
    from ..evaluation.report import write_report  # report reads the run directory this function just finished

    try:
        paths = write_report(out)
    except Exception as e:  # noqa: BLE001 -- the run is saved; say what went wrong, in one line
        warn(f"run report not written ({type(e).__name__}: {e}); retry with `budgetlora report {out}`")
        return
    log(f"report: {paths['html']}")
