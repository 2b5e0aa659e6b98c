"""The registry of adapter methods: one `MethodSpec` per `adapter.method` (in the spirit of timm's
model registry and PEFT's per-tuner folders).

A spec holds everything budgetlora knows about one method: the builder of its PEFT config, the
adapter.* keys it reads (load_config refuses the others), how it is counted and planned, the
limits it puts on other keys, and what building, training and saving need beyond PEFT's
defaults. config, model, budget, planner and the CLI ask the registry; none keeps its own list
of names. The built-in methods register themselves in budgetlora/adapters/methods.py. Adding a
method is one call:

    register_method(MethodSpec("mylora", build=my_lora_config, patterns=True, bias=True))

after which `adapter.method=mylora` is validated, counted, planned, trained and saved like the
others. `build(adapter_config, placement)` returns a `peft.PeftConfig`; `placement.common()`
gives the keyword arguments every PEFT config takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

# a spec's functions take the run's AdapterConfig (budgetlora.config), which itself reads this registry:
# the annotations name it without importing it, so config -> registry stays the only arrow between them
AdapterConfig = Any

ADAPTS = {"linear": "Linear", "layernorm": "LayerNorm"}  # the kinds of module a method is put on -> torch class


@dataclass(frozen=True)
class Placement:
    """A builder's input: where the adapter goes (full module names, as model.py resolved them)
    and what the model is built for."""

    targets: tuple[str, ...]  # the adapted modules
    feedforward: tuple[str, ...] = ()  # those among them that are FFN Linears (IA3 scales their input)
    modules_to_save: tuple[str, ...] = ()  # head modules trained fully
    layernorms: tuple[str, ...] = ()  # LayerNorms whose bias is trained (adapter.layernorm_bias)
    seq_cls: bool = True  # PEFT task_type SEQ_CLS (False under head.type=standard_lora, see model.py)
    meta: bool = False  # only counted: no weights, so no initialisation that reads them
    total_steps: int | None = None  # the training length; None when only counted or reloaded

    def common(self) -> dict:
        """The keyword arguments every PEFT config takes: task type, target modules, modules saved."""
        import peft

        return dict(task_type=peft.TaskType.SEQ_CLS if self.seq_cls else None,
                    target_modules=list(self.targets), modules_to_save=list(self.modules_to_save))


@dataclass(frozen=True)
class MethodSpec:
    """One adapter method. Only `name` and `build` are required; the defaults describe a plain
    rank-based tuner on Linear layers that PEFT builds, saves and reloads by itself."""

    name: str
    build: Callable[[AdapterConfig, Placement], Any]  # -> the method's peft.PeftConfig
    # ---- the adapter.* keys it reads, besides alpha/dropout (as its builder uses them) and layers/top_layers
    rank: bool = True  # adapter.r; False: rank-free (one count, no rank to plan or fill)
    patterns: bool = False  # adapter.rank_pattern / adapter.alpha_pattern
    bias: bool = False  # adapter.bias
    layernorm_bias: bool = False  # adapter.layernorm_bias
    # "linear": the Linears adapter.targets names; "layernorm": every LayerNorm of the chosen layers (no targets)
    adapts: str = "linear"
    at_most_r: tuple[str, ...] = ()  # keys that may not exceed adapter.r (AdaLoRA's target_r)
    # ---- counting and planning
    affine: bool = True  # per-module cost a + b * r: two measurements give every rank (else measured at each r)
    planned: bool = True  # among `budgetlora plan`'s default methods (False: counts exactly as another one)
    # ---- building, training, saving and reloading beyond PEFT's defaults
    rewrites_base: bool = False  # its initialisation changes the base weights (PiSSA, OLoRA): originals kept
    quantization: Callable[[], Any] | None = None  # the base's transformers quantization config (QLoRA)
    merges: bool = True  # load_run folds it into the base weights
    after_build: Callable[[Any], None] | None = None  # fixes to the PeftModel after get_peft_model
    save: Callable[[Any, Path], None] | None = None  # instead of PEFT's save_pretrained
    extra_loss: Callable[[Any], Any] | None = None  # a term added to the training loss (a tensor or None)
    after_step: Callable[[Any, int], None] | None = None  # after each optimiser step (0-based step)
    trainer_state: Callable[[Any], dict] | None = None  # what a resumed run needs besides the weights
    load_trainer_state: Callable[[Any, dict], None] | None = None  # puts trainer_state's dict back

    def __post_init__(self):
        if not self.name or self.adapts not in ADAPTS:  # a bug in the registering code, not user input
            raise ValueError(f"MethodSpec {self.name!r}: needs a name, and adapts in {tuple(ADAPTS)} "
                             f"(got {self.adapts!r})")

    def check(self, a: AdapterConfig) -> None:
        """Refuse adapter settings this method does not read or allow (load_config calls it):
        one-line UserErrors that name the key and the way out."""
        for key in ("rank_pattern", "alpha_pattern"):
            if getattr(a, key) and not self.patterns:
                raise UserError(f"adapter.{key} is not supported by adapter.method={self.name}; "
                                f"use one of {', '.join(method_names(patterns=True))} or drop it")
        if a.bias != "none" and not self.bias:
            raise UserError(f"adapter.bias={a.bias} is not supported by adapter.method={self.name}; "
                            f"set adapter.bias=none or use one of {', '.join(method_names(bias=True))}")
        if a.layernorm_bias and not self.layernorm_bias:
            owners = " or ".join(method_names(layernorm_bias=True))
            whole = "".join(f", or adapter.method={m} for whole LayerNorms" for m in method_names(adapts="layernorm"))
            raise UserError(f"adapter.layernorm_bias=true is a {owners} setting, not supported by "
                            f"adapter.method={self.name}; use adapter.method={owners}{whole}")
        for key in self.at_most_r:
            value = getattr(a, key)
            if value is not None and value > a.r:
                raise UserError(f"adapter.{key}={value} is above adapter.r={a.r}; adapter.method={self.name} needs "
                                f"adapter.{key} <= adapter.r: lower adapter.{key} or raise adapter.r")

    def set_rank(self, a: AdapterConfig, r: int) -> None:
        """Give settings `a` rank r, lowering the keys that may not exceed it (`at_most_r`) to r."""
        a.r = r
        for key in self.at_most_r:
            if (getattr(a, key) or 0) > r:
                setattr(a, key, r)


_REGISTRY: dict[str, MethodSpec] = {}
METHODS = MappingProxyType(_REGISTRY)  # name -> spec, in registration order; a live, read-only view


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add `spec` under spec.name; ValueError if that name is taken (unregister it first)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"adapter method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> MethodSpec:
    """Remove and return the spec registered under `name`."""
    return _REGISTRY.pop(name)


def method_spec(name: str) -> MethodSpec:
    """The spec of adapter method `name`; a UserError listing the registered ones if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown adapter method {name!r}; choose from {', '.join(_REGISTRY)}") from None


def method_names(**where) -> list[str]:
    """Registered names, in registration order, whose spec fields equal `where`: method_names(bias=True)."""
    return [name for name, spec in _REGISTRY.items() if all(getattr(spec, k) == v for k, v in where.items())]
