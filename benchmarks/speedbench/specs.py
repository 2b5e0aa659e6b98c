"""Pipeline specs: a name such as ``trainer-tuned+nogroup`` becomes batch size, precision,
padding, grouping and LoRA dropout; and how many steps give every pipeline the same samples."""

from __future__ import annotations

import dataclasses
import math

from .common import LORA, REFERENCE_BATCH, cuda

BASES = ("trainer-published", "trainer-tuned", "budgetlora")


@dataclasses.dataclass
class Spec:
    name: str
    kind: str  # "trainer" or "budgetlora"
    batch_size: int
    precision: str  # "fp32" or "bf16"; budgetlora also "auto"
    pad_to_max: bool
    group_by_length: bool
    dropout: float
    batching: str = "rows"  # budgetlora's train.batching
    fast_dropout: bool = True  # budgetlora's train.fast_dropout (its CPU dropout masks)
    fused_lora: bool = True  # budgetlora's train.fused_lora (its CPU LoRA layers)
    attention: str = "auto"  # budgetlora's model.attention


def budgetlora_groups_by_default() -> bool | None:
    """budgetlora's train.group_by_length default, or None where the setting does not exist."""
    from budgetlora.config import TrainConfig

    field = next((f for f in dataclasses.fields(TrainConfig) if f.name == "group_by_length"), None)
    return None if field is None else bool(field.default)


def base_spec(text: str, base: str) -> Spec:
    bf16_default = "bf16" if cuda() else "fp32"
    if base == "trainer-published":
        return Spec(text, "trainer", 16, "fp32", True, False, LORA["dropout"])
    if base == "trainer-tuned":
        return Spec(text, "trainer", 32, bf16_default, False, True, LORA["dropout"])
    if base == "budgetlora":  # its own default: auto, i.e. bf16 where the hardware has it
        return Spec(text, "budgetlora", 32, "auto", False, budgetlora_groups_by_default(), LORA["dropout"])
    raise SystemExit(f"unknown pipeline {base!r}; choose {', '.join(BASES)} (+modifiers)")


def apply_modifier(spec: Spec, mod: str) -> None:
    if mod.startswith("b") and mod[1:].isdigit():
        spec.batch_size = int(mod[1:])
    elif mod in ("dynpad", "maxpad") and spec.kind == "budgetlora":
        raise SystemExit(f"{spec.name}: budgetlora always pads dynamically; +{mod} is for the Trainer pipelines")
    elif mod in ("nogroup", "group") and spec.kind == "budgetlora" and budgetlora_groups_by_default() is None:
        raise SystemExit(f"{spec.name}: this budgetlora has no train.group_by_length setting")
    elif mod in ("nogroup", "group"):
        spec.group_by_length = mod == "group"
    elif mod in ("dynpad", "maxpad"):
        spec.pad_to_max = mod == "maxpad"
    elif mod == "nodrop":
        spec.dropout = 0.0
    elif mod in ("fp32", "bf16"):
        spec.precision = mod
    elif mod == "tokens" and spec.kind == "budgetlora":
        spec.batching = "tokens"
    elif mod == "torchdrop" and spec.kind == "budgetlora":
        spec.fast_dropout = False
    elif mod == "pefttrain" and spec.kind == "budgetlora":
        spec.fused_lora = False
    elif mod in ("sdpa", "eager") and spec.kind == "budgetlora":
        spec.attention = mod
    else:
        raise SystemExit(f"unknown modifier +{mod} in {spec.name!r}")


def parse_spec(text: str) -> Spec:
    """``base+mod+mod``: a base pipeline, then its modifiers in order."""
    base, *mods = text.strip().split("+")
    spec = base_spec(text, base)
    for mod in mods:
        apply_modifier(spec, mod)
    return spec


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
