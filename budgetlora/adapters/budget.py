"""Budget: count a model's trainable parameters exactly, break them down, enforce the limit.

Counting is done on the built PEFT model itself (real or on the meta device), so the figure is
the one training will see, and it agrees with PEFT's own `get_nb_trainable_parameters`. The
breakdown (adapter by module type, head, biases) is ours: PEFT only gives the total.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from .methods import layernorm_bias_copies
from .model import head_modules, module_type

ADAPTER_RE = re.compile(r"^(?P<module>.+?)\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\b")


@dataclass
class Breakdown:
    trainable: int
    frozen: int  # parameters of the pretrained model that stay fixed
    adapter: int
    head: int
    biases: int
    other: int
    adapter_by_module: dict[str, int] = field(default_factory=dict)
    adapted_modules: int = 0
    max_trainable: int | None = None
    head_type: str | None = None

    @property
    def share(self) -> float:
        """Trainable parameters as a fraction of the model (frozen + trainable)."""
        return self.trainable / max(1, self.frozen + self.trainable)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["share"] = self.share
        if self.max_trainable is not None:
            d["over_budget_by"] = max(0, self.trainable - self.max_trainable)
        return d

    def table(self) -> str:
        rows = [("adapter: " + name, n) for name, n in self.adapter_by_module.items()]
        rows += [(f"head ({self.head_type})" if self.head_type else "head", self.head), ("biases", self.biases)]
        if self.other:
            rows.append(("other", self.other))
        width = max(len(r[0]) for r in rows + [("trainable total", 0)])
        lines = [f"  {name:<{width}}  {n:>12,}" for name, n in rows]
        lines.append(f"  {'trainable total':<{width}}  {self.trainable:>12,}  ({100 * self.share:.3f}% of {self.frozen + self.trainable:,})")
        if self.max_trainable is not None:
            left = self.max_trainable - self.trainable
            status = f"{left:,} left" if left >= 0 else f"OVER by {-left:,}"
            lines.append(f"  {'budget':<{width}}  {self.max_trainable:>12,}  ({status})")
        return "\n".join(lines)


def _tuner_layers(model) -> dict[str, str]:
    """Name of every PEFT tuner layer (a LoRA/LoHa/IA3/... wrapped module) -> its module path in the base model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: name.removeprefix("base_model.model.") for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def count(model, max_trainable: int | None = None) -> Breakdown:
    """Exact trainable-parameter breakdown of a PEFT model, for every adapter method.

    `adapter` is every trainable parameter a PEFT tuner layer adds in the encoder (LoRA A/B,
    DoRA magnitudes, LoHa/LoKr factors, AdaLoRA's E, VeRA's scaling vectors, IA3 vectors, BEFT
    biases, LayerNorm copies), by module type. `head` is every trainable parameter inside the
    head modules (`model.head_modules`): the fully trained head, and under head.type=standard_lora
    also the adapter on the head's Linear (and a head bias that adapter.bias makes trainable).
    `biases` are the encoder's biases that adapter.bias makes trainable, and the LayerNorm biases
    bitfit trains under adapter.layernorm_bias (PEFT modules_to_save copies whose weight stays
    frozen: that weight counts as frozen, the unused original as nothing). Frozen values a tuner
    keeps (AdaLoRA's rank count; VeRA's projections are buffers, not parameters) are not counted.
    """
    by_module: dict[str, int] = defaultdict(int)
    adapted = set()
    head = biases = other = frozen = 0
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head_prefixes = tuple(head_modules(base))
    tuners = _tuner_layers(model)
    layernorm_copies = {id(p) for norm in layernorm_bias_copies(model) for p in norm.parameters()}
    for name, p in model.named_parameters():
        n = p.numel()
        owner = next((t for t in _prefixes(name) if t in tuners), None) if tuners else None
        in_adapter = owner is not None and not name.startswith(owner + ".base_layer.")
        if not p.requires_grad:
            if id(p) in layernorm_copies or (".modules_to_save." not in name and ".original_module." not in name
                                             and not in_adapter):
                frozen += n
            continue
        path = name.removeprefix("base_model.model.")
        if id(p) in layernorm_copies:
            biases += n
        elif any(path.startswith(prefix + ".") for prefix in head_prefixes):
            head += n
        elif in_adapter or ADAPTER_RE.match(name):
            module = tuners[owner] if in_adapter else ADAPTER_RE.match(name).group("module").removeprefix("base_model.model.")
            by_module[module_type(module)] += n
            adapted.add(module)
        elif ".modules_to_save." in name:
            head += n
        elif name.endswith("bias"):
            biases += n
        else:
            other += n
    # the frozen copy PEFT keeps of the head is not part of the model that gets used
    adapter = sum(by_module.values())
    return Breakdown(
        trainable=adapter + head + biases + other,
        frozen=frozen,
        adapter=adapter,
        head=head,
        biases=biases,
        other=other,
        adapter_by_module=dict(by_module),
        adapted_modules=len(adapted),
        max_trainable=max_trainable,
        head_type=getattr(base, "budgetlora_head", None),
    )


def _prefixes(name: str):
    """"a.b.c.weight" -> "a.b.c", "a.b", "a" (longest first)."""
    parts = name.split(".")
    return (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))


def check(breakdown: Breakdown, max_trainable: int) -> None:
    """Refuse a model over the budget, saying where the parameters go and by how much."""
    if breakdown.trainable > max_trainable:
        parts = ", ".join(f"{k} {v:,}" for k, v in breakdown.adapter_by_module.items())
        raise UserError(
            f"{breakdown.trainable:,} trainable parameters is over budget.max_trainable={max_trainable:,} "
            f"by {breakdown.trainable - max_trainable:,} (adapter {breakdown.adapter:,} [{parts}], head {breakdown.head:,}, "
            f"biases {breakdown.biases:,}); lower adapter.r, use fewer targets, or raise budget.max_trainable"
        )


def plan_from_config(cfg, label_names: list[str]) -> Breakdown:
    """Exact breakdown for a config without reading any weights (meta device)."""
    from .model import build_model

    return count(build_model(cfg, label_names, meta=True), cfg.budget.max_trainable)
