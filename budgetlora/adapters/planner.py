"""Planner: which head x target set x adapter method (x rank) fits a trainable-parameter budget, from config.json alone.

A configuration's trainable count is

    trainable(r) = fixed + sum over adapted modules of cost(method, module, r)

where `fixed` is the fully trained part of the head plus the biases that `adapter.bias` (or,
for bitfit, `adapter.layernorm_bias`) makes trainable, counted by `budget.count` on the meta model
with those parameters marked trainable as PEFT will mark them, and cost(...) is what PEFT itself
adds to that one module: it is measured by putting the method's PEFT tuner on a lone meta-device
copy of the module (no weights anywhere) and counting its trainable parameters. For most methods
that cost is affine in r (LoRA: r * (in + out), DoRA: + out, VeRA: out + r, ...), so two
measurements give it for every r; a method whose registry entry says otherwise (LoKr, whose
factorisation changes with r) is measured at each r it is asked about. Rank-free methods (IA3,
BitFit, LayerNorm) have one count. The largest rank that fits is found by bisection, up to
min(in, out) of the adapted Linears (a higher rank adds parameters, not expressiveness). The
tests check these figures against models actually built with PEFT (`budget.count`), and `fill`
re-checks its answer the same way.

Target sets: the four roles, each on all layers and on the top half and top quarter of the
layers (adapter.top_layers); a method that adapts LayerNorms (`layernorm`) has one target set per
layer choice (every LayerNorm). Methods: every registered one its registry entry marks `planned`.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field

from torch import nn

from . import methods
from ..config import HEAD_TYPES, TARGET_ROLES, AdapterConfig, Config
from ..errors import UserError
from .budget import Breakdown, count
from .model import (HeadSpec, adapter_targets, bias_layernorms, build_model, head_modules, load_backbone,
                    method_fits_head, prepare_head)
from .registry import MethodSpec, Placement, method_names, method_spec

# The recommendation: among plain LoRA entries (the method with the most evidence behind it), the
# widest target set (most adapted modules) that still allows this rank; among equals the higher
# rank, then the head earlier in HEAD_PREFERENCE. A heuristic stated up front, not a measured result.
MIN_RECOMMENDED_R = 8
RECOMMENDED_METHOD = "lora"
HEAD_PREFERENCE = ("standard_lora", "linear", "mean", "standard")
HEAD_REASON = {
    "standard_lora": "the model's own head shape (and plain-PEFT reload) for a fraction of the standard head's cost",
    "linear": "the cheapest head, first-token pooling like the model's own head",
    "mean": "the cheapest head, mean pooling",
    "standard": "the model's own head trained fully",
}


# ---------------------------------------------------------------- one module's cost, measured on PEFT


class _Lone(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer


@functools.lru_cache(maxsize=None)
def _measured(spec: MethodSpec, r: int, alpha: float, kind: str, shape: tuple, feedforward: bool) -> int:
    """Trainable parameters PEFT adds to one meta module of `kind` and `shape` under method `spec` at rank r."""
    import torch

    with torch.device("meta"):
        layer = nn.Linear(*shape) if kind == "linear" else nn.LayerNorm(shape[0])
    placement = Placement(targets=("layer",), feedforward=("layer",) if feedforward else (), seq_cls=False, meta=True)
    model = methods.peft_model(_Lone(layer), AdapterConfig(method=spec.name, r=r, alpha=alpha), placement)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def module_cost(method: str, module: nn.Module, r: int, feedforward: bool = False, alpha: float = 8.0) -> int:
    """Trainable parameters of `method` at rank r on one module (a Linear, or a LayerNorm for `layernorm`)."""
    if isinstance(module, nn.Linear):
        kind, shape = "linear", (module.in_features, module.out_features)
    else:
        kind, shape = "layernorm", tuple(module.normalized_shape)

    spec = method_spec(method)

    def at(rank: int) -> int:
        return _measured(spec, rank, alpha, kind, shape, feedforward)

    if not spec.rank:
        return at(1)
    if spec.affine:
        one, two = at(1), at(2)
        return one + (r - 1) * (two - one)
    return at(r)


@dataclass
class Cost:
    """Exact trainable count of one head + target set + method, as a function of the rank."""

    head: str
    targets: str | list[str]
    method: str
    top_layers: int | None
    modules: int  # adapted encoder modules
    fixed: int  # rank-independent: fully trained head + trainable biases
    head_fixed: int  # the head's part of `fixed`
    rank_cap: int | None  # min(in, out) over the adapted Linears; None for rank-free methods
    parts: list = field(default_factory=list, repr=False)  # (module, feedforward, fixed rank or None, in head)

    @property
    def rank_free(self) -> bool:
        return not method_spec(self.method).rank

    def _adapter(self, r: int, head_only: bool = False) -> int:
        return sum(module_cost(self.method, m, fixed_r or r, ff)
                   for m, ff, fixed_r, in_head in self.parts if in_head or not head_only)

    def trainable(self, r: int = 1) -> int:
        return self.fixed + self._adapter(r)

    def head_params(self, r: int = 1) -> int:
        return self.head_fixed + self._adapter(r, head_only=True)

    @property
    def per_rank(self) -> int | None:
        """Parameters one more rank costs (None for rank-free methods; for LoKr it varies: at r=1)."""
        return None if self.rank_free else self.trainable(2) - self.trainable(1)

    def max_rank(self, budget: int) -> int:
        """Largest r (at most rank_cap) with trainable(r) <= budget; 0 when not even r=1 fits."""
        if self.rank_free:
            return 0
        if self.trainable(1) > budget:
            return 0
        low, high = 1, self.rank_cap
        while low < high:  # the costs grow with r
            mid = (low + high + 1) // 2
            if self.trainable(mid) <= budget:
                low = mid
            else:
                high = mid - 1
        return low


@dataclass
class Entry:
    head: str
    targets: str | list[str]
    method: str
    top_layers: int | None  # adapt only the last k layers (None: all)
    modules: int
    r: int | None  # largest rank that fits (0: does not fit; None: rank-free method)
    capped: bool  # r stopped at min(in, out) of the adapted Linears, not by the budget
    trainable: int  # at r (at r=1 when it does not fit)
    head_params: int
    left: int  # budget - trainable
    fixed: int
    per_rank: int | None

    @property
    def fits(self) -> bool:
        return self.left >= 0

    def targets_label(self) -> str:
        t = self.targets if isinstance(self.targets, str) else ",".join(self.targets)
        return t + (f" top {self.top_layers}" if self.top_layers else "")

    def label(self) -> str:
        rank = "" if self.r is None else f" at r={self.r}"
        return f"{self.head} + {self.method} on {self.targets_label()}{rank}"


@dataclass
class Plan:
    model: str
    num_labels: int
    budget: int
    bias: str
    entries: list[Entry]  # those that fit, grouped by method, best rank first
    unfit: list[Entry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # head (or head + method) -> why it is not available
    recommended: int | None = None  # index into entries
    reason: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recommended"] = asdict(self.entries[self.recommended]) if self.recommended is not None else None
        return d

    def table(self, limit: int | None = None) -> str:
        lines = [f"{self.model}, {self.num_labels} classes, budget {self.budget:,} trainable "
                 f"(adapter.bias={self.bias}): {len(self.entries)} configurations fit"]
        lines.append(f"    {'method':<10} {'head':<14} {'targets':<20} {'modules':>7} {'max r':>6} {'trainable':>11} "
                     f"{'head':>9} {'left':>9}")
        shown = range(len(self.entries)) if not limit else sorted(set(range(min(limit, len(self.entries))))
                                                                  | ({self.recommended} - {None}))
        for i in shown:
            e = self.entries[i]
            mark = "*" if i == self.recommended else " "
            r = "-" if e.r is None else f"{e.r}{'^' if e.capped else ''}"
            lines.append(f"  {mark} {e.method:<10} {e.head:<14} {e.targets_label():<20} {e.modules:>7} {r:>6} "
                         f"{e.trainable:>11,} {e.head_params:>9,} {e.left:>9,}")
        if len(shown) < len(self.entries):
            lines.append(f"  ... {len(self.entries) - len(shown)} more (--limit 0 shows all, --json lists all)")
        if any(e.capped for e in self.entries):
            lines.append("^ rank capped at min(in, out) of the adapted Linears, not by the budget")
        if self.recommended is not None:
            lines.append(f"recommended (*): {self.entries[self.recommended].label()}: {self.reason}")
        for e in self.unfit:
            at = "" if e.r is None else " even at r=1"
            lines.append(f"does not fit: {e.method} {e.head} + {e.targets_label()} needs {e.trainable:,}{at}")
        for what, why in self.skipped.items():
            lines.append(f"not available: {what}: {why}")
        return "\n".join(lines)


# ---------------------------------------------------------------- costs of a whole configuration


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cost_of(model: nn.Module, head: HeadSpec, a: AdapterConfig) -> Cost:
    """Exact cost of adapter settings `a` (method, targets, layers, rank_pattern, bias) with `head`,
    on a (meta) model already passed through prepare_head; the rank stays free."""
    from peft.utils.other import get_pattern_key

    spec = method_spec(a.method)
    modules = dict(model.named_modules())
    targets, ffn = adapter_targets(model, a, head)
    heads = head_modules(model)
    for name in targets:
        if spec.adapts == "linear" and not isinstance(modules[name], nn.Linear):
            raise UserError(f"adapter target {name} is a {type(modules[name]).__name__}; the planner counts Linear layers only")
    pattern = a.rank_pattern or {}
    parts = [(modules[n], n in ffn, pattern.get(get_pattern_key(list(pattern), n)) if pattern else None, _under(n, heads))
             for n in targets]
    fixed = _fixed_part(model, modules, head, a, targets)
    caps = [min(m.in_features, m.out_features) for m, _, _, _ in parts if isinstance(m, nn.Linear)]
    return Cost(
        head=head.type,
        targets=a.targets if spec.adapts == "linear" else spec.adapts,
        method=a.method,
        top_layers=a.top_layers,
        modules=sum(1 for *_, in_head in parts if not in_head),
        fixed=fixed.trainable,
        head_fixed=fixed.head,
        rank_cap=min(caps) if spec.rank else None,
        parts=parts,
    )


def _fixed_part(model: nn.Module, modules: dict, head: HeadSpec, a: AdapterConfig, targets: list[str]) -> Breakdown:
    """The rank-independent trainable parameters: the fully trained head and the biases that
    adapter.bias or adapter.layernorm_bias train. The (meta) model's parameters are marked
    trainable as PEFT will mark them, then counted by budget.count, so they fall into head and
    biases as a built model's do. `modules`: model.named_modules() as a dict."""
    saved = list(head.modules_to_save)
    if head.seq_cls:  # PEFT's sequence-classification wrapper adds these (suffix match)
        saved += [n for n in modules if n and n.split(".")[-1] in ("classifier", "score") and not _under(n, saved)]
    layernorm_biases = {f"{n}.bias" for n in bias_layernorms(model, a)}
    adapted = set(targets)
    for name, p in model.named_parameters():
        p.requires_grad_(_under(name, saved) or name in layernorm_biases or _bias_trained(name, a.bias, adapted))
    return count(model)


def _bias_trained(name: str, bias: str, adapted: set[str]) -> bool:
    """PEFT's rule for adapter.bias: `all` trains every bias, `lora_only` those of the adapted modules."""
    if bias == "all":
        return "bias" in name
    return bias == "lora_only" and name.endswith(".bias") and name.rsplit(".", 1)[0] in adapted


def _prepared(base: nn.Module, head_type: str) -> tuple[nn.Module, HeadSpec]:
    model = copy.deepcopy(base)  # meta tensors: cheap
    return model, prepare_head(model, head_type)


def _entry(c: Cost, budget: int) -> Entry:
    if c.rank_free:
        r, at = None, 1
    else:
        r = c.max_rank(budget)
        at = max(r, 1)
    trainable = c.trainable(at)
    return Entry(head=c.head, targets=c.targets, method=c.method, top_layers=c.top_layers, modules=c.modules, r=r,
                 capped=bool(r) and r == c.rank_cap and c.trainable(r + 1) <= budget, trainable=trainable,
                 head_params=c.head_params(at), left=budget - trainable, fixed=c.fixed, per_rank=c.per_rank)


def layer_choices(num_layers: int) -> list[int | None]:
    """All layers, the top half, the top quarter (adapter.top_layers)."""
    out = [None]
    for k in (num_layers // 2, num_layers // 4):
        if 1 <= k < num_layers and k not in out:
            out.append(k)
    return out


def plan(cfg: Config, label_names: list[str], budget: int | None = None, heads=HEAD_TYPES, target_sets=None,
         method_names=None, layer_sets=None) -> Plan:
    """Every head x target set x layer choice x method that fits `budget` (default cfg.budget.max_trainable),
    with its largest rank. Adapter settings not planned over (alpha, bias, rank_pattern) come from cfg."""
    budget = cfg.budget.max_trainable if budget is None else budget
    if target_sets is None:
        target_sets = list(TARGET_ROLES)
        if not isinstance(cfg.adapter.targets, str):  # explicit module names in the config: plan them too
            target_sets.append(cfg.adapter.targets)
    method_names = planned_methods() if method_names is None else list(method_names)
    specs = {m: method_spec(m) for m in method_names}  # an unknown name: UserError listing the registered ones
    base = load_backbone(cfg.model.name, label_names, meta=True)
    if layer_sets is None:
        layer_sets = layer_choices(base.config.num_hidden_layers)
    fits, unfit, skipped = [], [], {}
    for head_type in heads:
        try:
            model, head = _prepared(base, head_type)
        except UserError as e:
            skipped[f"head {head_type}"] = str(e)
            continue
        for method, spec in specs.items():
            if not method_fits_head(spec, head):
                skipped[f"head {head_type} + {method}"] = "no adapter for the head's Linear; use another head"
                continue
            if cfg.adapter.bias != "none" and not spec.bias:
                skipped[f"{method}"] = f"adapter.bias={cfg.adapter.bias} is not supported by this method"
                continue
            for top in layer_sets:
                for targets in (target_sets if spec.adapts == "linear" else [spec.adapts]):
                    a = _settings(cfg.adapter, method, targets, top)
                    e = _entry(cost_of(model, head, a), budget)
                    (fits if e.fits and e.r != 0 else unfit).append(e)
    order = {h: i for i, h in enumerate(HEAD_PREFERENCE)}
    by_method = {m: i for i, m in enumerate(method_names)}
    fits.sort(key=lambda e: (by_method[e.method], -(e.r or 0), -e.modules, order.get(e.head, 99)))
    result = Plan(model=cfg.model.name, num_labels=len(label_names), budget=budget, bias=cfg.adapter.bias,
                  entries=fits, unfit=unfit, skipped=skipped)
    _recommend(result, order)
    return result


def planned_methods() -> list[str]:
    """The methods `plan` tries by default: every registered one its entry marks `planned`."""
    return method_names(planned=True)


def _settings(a: AdapterConfig, method: str, targets, top_layers) -> AdapterConfig:
    """`a` for one planned entry: its method, targets and layers; the pattern and LayerNorm-bias
    settings of the config only for methods that read them (the others are planned without)."""
    spec = method_spec(method)
    out = copy.deepcopy(a)
    out.method, out.top_layers, out.layers = method, top_layers, None
    if spec.adapts == "linear":
        out.targets = targets
    if not spec.patterns:
        out.rank_pattern = out.alpha_pattern = None
    if not spec.layernorm_bias:
        out.layernorm_bias = False
    return out


def _recommend(result: Plan, head_order: dict) -> None:
    fits = result.entries
    if not fits:
        return
    pool = [i for i, e in enumerate(fits) if e.method == RECOMMENDED_METHOD] or \
           [i for i, e in enumerate(fits) if e.method == fits[0].method]
    good = [i for i in pool if (fits[i].r or 0) >= MIN_RECOMMENDED_R]
    if good:
        best = min(good, key=lambda i: (-fits[i].modules, -fits[i].r, head_order.get(fits[i].head, 99)))
        why = f"the widest target set ({fits[best].modules} modules) that still allows r >= {MIN_RECOMMENDED_R}"
    else:
        best = pool[0]
        why = f"nothing allows r >= {MIN_RECOMMENDED_R}; the highest rank"
    if fits[best].method == RECOMMENDED_METHOD:
        why = f"plain LoRA (the default, best understood method), {why}"
    result.recommended = best
    result.reason = f"{why}; {fits[best].head} head: {HEAD_REASON.get(fits[best].head, '')}"


def config_cost(cfg: Config, label_names: list[str]) -> Cost:
    """The exact cost of cfg's own head, method, targets and layers (any rank)."""
    base = load_backbone(cfg.model.name, label_names, meta=True)
    spec = prepare_head(base, cfg.head.type)
    return cost_of(base, spec, cfg.adapter)


def fill(cfg: Config, label_names: list[str], budget: int | None = None) -> tuple[Config, Cost]:
    """cfg with adapter.r set to the largest rank whose model fits the budget (checked on a built meta model)."""
    budget = cfg.budget.max_trainable if budget is None else budget
    if not method_spec(cfg.adapter.method).rank:
        raise UserError(f"adapter.method={cfg.adapter.method} has no rank to fill; `budgetlora params` gives its exact count")
    cost = config_cost(cfg, label_names)
    r = cost.max_rank(budget)
    if r < 1:
        raise UserError(
            f"nothing fits budget.max_trainable={budget:,} with head.type={cfg.head.type}, adapter.method={cfg.adapter.method}, "
            f"adapter.targets={cfg.adapter.targets}: r=1 already needs {cost.trainable(1):,}; use a cheaper head "
            f"(linear, mean, standard_lora), fewer targets or layers, or a larger budget"
        )
    filled = copy.deepcopy(cfg)
    method_spec(cfg.adapter.method).set_rank(filled.adapter, r)  # AdaLoRA: target_r lowered to r if above
    filled.budget.max_trainable = budget
    built = count(build_model(filled, label_names, meta=True)).trainable
    if built != cost.trainable(r):  # a bug in the planner's count, never user input
        raise RuntimeError(f"planner counted {cost.trainable(r):,} for r={r} but the built model has {built:,}")
    return filled, cost
