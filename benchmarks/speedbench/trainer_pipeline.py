"""trainer-published and trainer-tuned: Hugging Face Trainer + PEFT on the shared rows and recipe.

One Trainer run; the spec decides the rest. trainer-published pads every row to 256 tokens
(default_data_collator), batch 16, random order, fp32. trainer-tuned pads per batch
(DataCollatorWithPadding), groups by length, batch 32, bf16 on a GPU. Loop time is the
Trainer's own train_runtime; step time comes from an on_step_begin -> on_step_end callback."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import (AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback,
                          default_data_collator)

from .common import sync
from .inference import trainer_predict
from .meters import LoadMeter, MemoryMeter
from .reference import build_peft_model, trainer_dataset, training_arguments
from .specs import Spec, samples_in_steps, steps_for


class StepTimer(TrainerCallback):
    """Seconds inside the optimizer steps (forward, backward, clipping, optimizer, scheduler)."""

    def __init__(self):
        self.seconds, self.steps, self.t0 = 0.0, 0, None

    def on_step_begin(self, a, state, control, **kw):
        sync()
        self.t0 = time.perf_counter()

    def on_step_end(self, a, state, control, **kw):
        sync()
        self.seconds += time.perf_counter() - self.t0
        self.steps += 1


class CountingCollator:
    """The spec's collator, noting (padded, real) tokens of every batch it builds, in order."""

    def __init__(self, collate):
        self.collate = collate
        self.batch_tokens: list[tuple[int, int]] = []

    def __call__(self, features):
        batch = self.collate(features)
        self.batch_tokens.append((batch["input_ids"].numel(), int(batch["attention_mask"].sum())))
        return batch


def loop_figures(trainer, out, collator: CountingCollator, timer: StepTimer, n_train: int, batch_size: int) -> dict:
    steps = int(trainer.state.global_step)
    used = collator.batch_tokens[:steps]  # the loader may collate one batch ahead
    return {
        "steps": steps,
        "samples": samples_in_steps(steps, n_train, batch_size),
        "tokens": int(trainer.state.num_input_tokens_seen) or sum(r for _, r in used),
        "padded_tokens": sum(p for p, _ in used),
        "loop_seconds": out.metrics["train_runtime"],
        "loop_seconds_how": "Trainer train_runtime",
        "step_seconds": timer.seconds,
        "step_seconds_how": "callback on_step_begin -> on_step_end",
        "hf_train_samples_per_second": out.metrics.get("train_samples_per_second"),
        "train_loss": out.training_loss,
    }


def run_trainer(spec: Spec, args, model_path: str, split: dict, seed: int, workdir: Path, meter: MemoryMeter) -> dict:
    t_wall = time.perf_counter()
    n_train = len(split["train_texts"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model, n_enc = build_peft_model(model_path, split["label_names"], seed, spec.dropout)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t_tok = time.perf_counter()
    train_ds = trainer_dataset(tokenizer, split["train_texts"], split["train_labels"], spec.pad_to_max)
    val_ds = trainer_dataset(tokenizer, split["val_texts"], split["val_labels"], spec.pad_to_max)
    tokenize_s = time.perf_counter() - t_tok
    collator = CountingCollator(default_data_collator if spec.pad_to_max else DataCollatorWithPadding(tokenizer))
    timer = StepTimer()
    targs = training_arguments(spec, args, workdir / f"{spec.name}-{seed}-{time.monotonic_ns()}",
                               steps_for(spec, args, n_train), seed)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator,
                      processing_class=tokenizer, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # keep stdout for the table (the final log line only)
    sync()
    with LoadMeter() as train_load:
        out = trainer.train()
        sync()
    meter.mark("train")
    result = loop_figures(trainer, out, collator, timer, n_train, spec.batch_size)
    result.update(trainer_predict(trainer, val_ds, split, spec, args))
    result.update({
        "tokenize_seconds": tokenize_s,
        "train_rows": n_train,
        "trainable_params": trainable,
        "encoder_nonembedding_params": n_enc,
        "train_other_load_cores": train_load.other_cores,
        "optimizer": trainer.args.optim if isinstance(trainer.args.optim, str) else trainer.args.optim.value,
    })
    del trainer, model, out
    result["wall_seconds"] = time.perf_counter() - t_wall
    return result
