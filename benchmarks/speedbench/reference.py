"""The Hugging Face reference as a Trainer + PEFT script builds it: the model with LoRA on q,k,v
and its own head trained, the tokenised datasets, and TrainingArguments for the shared recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .common import LORA, OPTIM, cuda
from .specs import Spec

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


def count_encoder_params(model_path: str, num_labels: int) -> int:
    """encoder_nonembedding_params from the config alone (meta device: no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(
            AutoConfig.from_pretrained(model_path, num_labels=num_labels))
    return encoder_nonembedding_params(model)


def build_peft_model(model_path: str, label_names: list[str], seed: int, dropout: float):
    """What a Trainer + PEFT script does: the model with its head, LoRA on q,k,v, head trained."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    id2label = dict(enumerate(label_names))
    config = AutoConfig.from_pretrained(model_path, num_labels=len(label_names), id2label=id2label,
                                        label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(seed)  # same head / LoRA init sequence as budgetlora.build_model
    model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config, dtype=torch.float32,
                                                               ignore_mismatched_sizes=True)
    n_enc = encoder_nonembedding_params(model)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout,
                      target_modules=qkv_targets(model), modules_to_save=head_modules(model))
    return get_peft_model(model, lora), n_enc


def trainer_dataset(tokenizer, texts, labels, pad_to_max: bool):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": list(texts), "labels": [int(v) for v in labels]})
    padding = "max_length" if pad_to_max else False

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=OPTIM["max_length"], padding=padding)

    return ds.map(encode, batched=True, remove_columns=["text"])


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
