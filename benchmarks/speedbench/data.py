"""The rows and the model every pipeline shares: budgetlora's config for a spec, the exact
train/validation rows budgetlora trains on (its own functions), and a random-init model copy."""

from __future__ import annotations

from pathlib import Path

from .common import LORA, OPTIM, RECIPE
from .specs import Spec, budgetlora_groups_by_default, parse_spec


def budgetlora_config(spec: Spec, args, model_path: str, seed: int, steps: int | None):
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
        *([] if spec.fast_dropout else ["train.fast_dropout=false"]),
        *([] if spec.fused_lora else ["train.fused_lora=false"]),
        *([] if spec.attention == "auto" else [f"model.attention={spec.attention}"]),
    ]
    if steps is not None:
        overrides += [f"train.max_steps={steps}", f"train.eval_every={steps}"]
    if budgetlora_groups_by_default() is not None:
        overrides.append(f"train.group_by_length={str(spec.group_by_length).lower()}")
    return load_config(RECIPE, overrides)


def load_split(args, model_path: str, seed: int) -> dict:
    """The exact rows budgetlora.train trains and validates on (same functions, same logic)."""
    from budgetlora import train_val_indices
    from budgetlora.data import encode_labels, infer_label_names, read_table

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


def prepare_model(args, workdir: Path) -> tuple[str, dict]:
    """The model folder every pipeline loads (a random-weights copy with --random-init)."""
    if not args.random_init:
        return args.model, {"weights": "pretrained", "source": args.model}
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = workdir / "random-init-model"
    config = AutoConfig.from_pretrained(args.model)
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(folder)
    del model
    return str(folder), {"weights": "random init (seed 0) from config.json", "source": args.model}
