"""Planner: which head x target set x LoRA rank fits a trainable-parameter budget, from config.json alone.

Costs are computed analytically on a meta-device model (no weights read): a LoRA of rank r on a
Linear(in, out) adds r * (in + out) trainable parameters, so a configuration costs

    trainable(r) = fixed + r * per_rank

where `fixed` is the fully trained part of the head plus the biases that `adapter.bias` makes
trainable, and `per_rank` sums in + out over every adapted Linear (encoder targets, and the
head's hidden Linear under head.type=standard_lora). The largest rank that fits is then
(budget - fixed) // per_rank. The tests check these figures against models actually built
with PEFT (`budget.count`), and `fill` re-checks its answer the same way.

Only LoRA is planned (the only adapter method so far), over the four target roles and every
head type; layer selection ("top-k layers") is not planned.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from torch import nn

from .config import HEAD_TYPES, TARGET_ROLES, Config
from .errors import UserError
from .model import HeadSpec, head_modules, load_backbone, prepare_head, resolve_targets

# The recommendation: the widest target set (most adapted modules) that still allows this rank;
# among equals the higher rank, then the head earlier in HEAD_PREFERENCE. A heuristic stated
# up front, not a measured result.
MIN_RECOMMENDED_R = 8
HEAD_PREFERENCE = ("standard_lora", "linear", "mean", "standard")
HEAD_REASON = {
    "standard_lora": "the model's own head shape (and plain-PEFT reload) for a fraction of the standard head's cost",
    "linear": "the cheapest head, first-token pooling like the model's own head",
    "mean": "the cheapest head, mean pooling",
    "standard": "the model's own head trained fully",
}


@dataclass
class Cost:
    """Exact trainable count of one head + target set, as a function of the LoRA rank."""

    head: str
    targets: str | list[str]
    modules: int  # adapted encoder Linears
    fixed: int  # rank-independent: fully trained head + trainable biases
    per_rank: int  # sum of in + out over all LoRA'd Linears (encoder + head)
    head_fixed: int  # the head's part of `fixed`
    head_per_rank: int  # the head's part of `per_rank`

    def trainable(self, r: int) -> int:
        return self.fixed + r * self.per_rank

    def head_params(self, r: int) -> int:
        return self.head_fixed + r * self.head_per_rank

    def max_rank(self, budget: int) -> int:
        """Largest r with trainable(r) <= budget; 0 when not even r=1 fits."""
        return max(0, (budget - self.fixed) // self.per_rank) if self.per_rank else 0


@dataclass
class Entry:
    head: str
    targets: str | list[str]
    method: str
    modules: int
    r: int  # largest rank that fits (0: does not fit)
    trainable: int  # at r (at r=1 when it does not fit)
    head_params: int
    left: int  # budget - trainable
    fixed: int
    per_rank: int

    def label(self) -> str:
        t = self.targets if isinstance(self.targets, str) else ",".join(self.targets)
        return f"{self.head} + {self.method} on {t} at r={self.r}"


@dataclass
class Plan:
    model: str
    num_labels: int
    budget: int
    bias: str
    entries: list[Entry]  # those that fit, best rank first
    unfit: list[Entry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # head -> why it is not available
    recommended: int | None = None  # index into entries
    reason: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recommended"] = asdict(self.entries[self.recommended]) if self.recommended is not None else None
        return d

    def table(self) -> str:
        lines = [f"{self.model}, {self.num_labels} classes, budget {self.budget:,} trainable "
                 f"(LoRA, adapter.bias={self.bias}): {len(self.entries)} configurations fit"]
        header = f"    {'head':<14} {'targets':<16} {'modules':>7} {'max r':>6} {'trainable':>11} {'head':>9} {'left':>9}"
        lines.append(header)
        for i, e in enumerate(self.entries):
            mark = "*" if i == self.recommended else " "
            t = e.targets if isinstance(e.targets, str) else ",".join(e.targets)
            lines.append(f"  {mark} {e.head:<14} {t:<16} {e.modules:>7} {e.r:>6} {e.trainable:>11,} "
                         f"{e.head_params:>9,} {e.left:>9,}")
        if self.recommended is not None:
            lines.append(f"recommended (*): {self.entries[self.recommended].label()}: {self.reason}")
        for e in self.unfit:
            lines.append(f"does not fit: {e.head} + {e.targets} needs {e.trainable:,} even at r=1")
        for head, why in self.skipped.items():
            lines.append(f"not available: head {head}: {why}")
        return "\n".join(lines)


# ---------------------------------------------------------------- analytic costs


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cost_of(model: nn.Module, head: HeadSpec, targets, bias: str = "none") -> Cost:
    """Analytic cost of LoRA on `targets` with `head` on a model already passed through prepare_head."""
    modules = dict(model.named_modules())
    encoder = resolve_targets(model, targets)
    lora = encoder + list(head.lora_targets)
    for name in lora:
        if not isinstance(modules[name], nn.Linear):
            raise UserError(f"adapter target {name} is a {type(modules[name]).__name__}; the planner counts Linear layers only")

    def io(name: str) -> int:
        return modules[name].in_features + modules[name].out_features

    saved = list(head.modules_to_save)
    if head.seq_cls:  # PEFT's sequence-classification wrapper adds these (suffix match)
        saved += [n for n in modules if n and n.split(".")[-1] in ("classifier", "score") and not _under(n, saved)]
    heads = head_modules(model)
    head_fixed = sum(p.numel() for n, p in model.named_parameters() if _under(n, saved))
    bias_enc = bias_head = 0
    if bias != "none":
        for n, p in model.named_parameters():
            if _under(n, saved):
                continue
            owner = n.rsplit(".", 1)[0]
            if (bias == "all" and "bias" in n) or (bias == "lora_only" and owner in lora and n.endswith(".bias")):
                if _under(n, heads):
                    bias_head += p.numel()
                else:
                    bias_enc += p.numel()
    head_per_rank = sum(io(n) for n in head.lora_targets)
    return Cost(
        head=head.type,
        targets=targets,
        modules=len(encoder),
        fixed=head_fixed + bias_head + bias_enc,
        per_rank=sum(io(n) for n in encoder) + head_per_rank,
        head_fixed=head_fixed + bias_head,
        head_per_rank=head_per_rank,
    )


def _prepared(base: nn.Module, head_type: str) -> tuple[nn.Module, HeadSpec]:
    model = copy.deepcopy(base)  # meta tensors: cheap
    return model, prepare_head(model, head_type)


def _entry(c: Cost, budget: int, method: str = "lora") -> Entry:
    r = c.max_rank(budget)
    at = max(r, 1)
    return Entry(head=c.head, targets=c.targets, method=method, modules=c.modules, r=r,
                 trainable=c.trainable(at), head_params=c.head_params(at), left=budget - c.trainable(at),
                 fixed=c.fixed, per_rank=c.per_rank)


def plan(cfg: Config, label_names: list[str], budget: int | None = None,
         heads=HEAD_TYPES, target_sets=None) -> Plan:
    """Every head x target set that fits `budget` (default cfg.budget.max_trainable), with its largest rank."""
    budget = cfg.budget.max_trainable if budget is None else budget
    if target_sets is None:
        target_sets = list(TARGET_ROLES)
        if not isinstance(cfg.adapter.targets, str):  # explicit module names in the config: plan them too
            target_sets.append(cfg.adapter.targets)
    base = load_backbone(cfg.model.name, label_names, meta=True)
    fits, unfit, skipped = [], [], {}
    for head_type in heads:
        try:
            model, spec = _prepared(base, head_type)
        except UserError as e:
            skipped[head_type] = str(e)
            continue
        for targets in target_sets:
            e = _entry(cost_of(model, spec, targets, cfg.adapter.bias), budget)
            (fits if e.r >= 1 else unfit).append(e)
    order = {h: i for i, h in enumerate(HEAD_PREFERENCE)}
    fits.sort(key=lambda e: (-e.r, -e.modules, order.get(e.head, 99)))
    result = Plan(model=cfg.model.name, num_labels=len(label_names), budget=budget, bias=cfg.adapter.bias,
                  entries=fits, unfit=unfit, skipped=skipped)
    if fits:
        good = [i for i, e in enumerate(fits) if e.r >= MIN_RECOMMENDED_R]
        if good:
            best = min(good, key=lambda i: (-fits[i].modules, -fits[i].r, order.get(fits[i].head, 99)))
            why = f"the widest target set ({fits[best].modules} modules) that still allows r >= {MIN_RECOMMENDED_R}"
        else:
            best = 0
            why = f"nothing allows r >= {MIN_RECOMMENDED_R}; the highest rank"
        result.recommended = best
        result.reason = f"{why}; {fits[best].head} head: {HEAD_REASON.get(fits[best].head, '')}"
    return result


def config_cost(cfg: Config, label_names: list[str]) -> Cost:
    """The analytic cost of cfg's own head and targets (any rank)."""
    base = load_backbone(cfg.model.name, label_names, meta=True)
    spec = prepare_head(base, cfg.head.type)
    return cost_of(base, spec, cfg.adapter.targets, cfg.adapter.bias)


def fill(cfg: Config, label_names: list[str], budget: int | None = None) -> tuple[Config, Cost]:
    """cfg with adapter.r set to the largest rank whose model fits the budget (checked on a built meta model)."""
    from .budget import count
    from .model import build_model

    budget = cfg.budget.max_trainable if budget is None else budget
    cost = config_cost(cfg, label_names)
    r = cost.max_rank(budget)
    if r < 1:
        raise UserError(
            f"nothing fits budget.max_trainable={budget:,} with head.type={cfg.head.type}, adapter.targets={cfg.adapter.targets}: "
            f"r=1 already needs {cost.trainable(1):,}; use a cheaper head (linear, mean, standard_lora), fewer targets, or a larger budget"
        )
    filled = copy.deepcopy(cfg)
    filled.adapter.r = r
    filled.budget.max_trainable = budget
    built = count(build_model(filled, label_names, meta=True)).trainable
    if built != cost.trainable(r):  # a bug in the analytic count, never user input
        raise RuntimeError(f"planner counted {cost.trainable(r):,} for r={r} but the built model has {built:,}")
    return filled, cost
