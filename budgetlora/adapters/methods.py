"""The built-in adapter methods, each one entry of the registry (budgetlora/adapters/registry.py),
and the calls that apply whatever method a model has: its PEFT model, training hooks and saving.

Every method is one of PEFT's own tuners, put on the model by `get_peft_model`, so saving,
reloading (`PeftModel.from_pretrained`) and merging are PEFT's. What is adapted is always the
exact list of module names that model.py resolved (role or names, then `adapter.layers` /
`adapter.top_layers`). Trainable parameters per adapted Linear(in, out):

    method     PEFT config                                      trainable per module
    lora       LoraConfig                                       r * (in + out)
    rslora     LoraConfig(use_rslora=True): alpha / sqrt(r)     r * (in + out)
    dora       LoraConfig(use_dora=True)                        r * (in + out) + out (magnitude)
    pissa      LoraConfig(init_lora_weights="pissa")            r * (in + out)
    olora      LoraConfig(init_lora_weights="olora")            r * (in + out)
    qlora      LoraConfig on a 4-bit NF4 base (bitsandbytes)    r * (in + out)
    loha       LoHaConfig (Hadamard product of two low ranks)   2 * r * (in + out)
    lokr       LoKrConfig (Kronecker product)                   PEFT's factorisation of in and out
    adalora    AdaLoraConfig(init_r=r, target_r)                r * (in + out) + r  (peak: pruning masks)
    vera       VeraConfig (r = rank of the shared projections)  out + r  (projections: frozen buffers)
    ia3        IA3Config                                        out; in for FFN modules (feedforward)
    bitfit     BeftConfig (PEFT's bias tuning)                  out: one bias vector per targeted Linear
               (+ adapter.layernorm_bias: hidden per LayerNorm, as a modules_to_save copy, weight frozen)
    layernorm  LNTuningConfig                                   weight + bias of every LayerNorm

`bitfit` trains a bias for each targeted Linear (adapter.targets=all_linear: every Linear bias of
the encoder, BitFit's Linear part). With adapter.layernorm_bias=true it also trains the bias of every
LayerNorm in the selected layers (and the embeddings' one when all layers are selected): with
all_linear that is every bias of the encoder, BitFit as published (roberta-base: 102,144).
PEFT's BEFT cannot do that part itself: BeftModel._create_new_module (peft/tuners/beft/model.py)
raises TypeError for anything but torch.nn.Linear, BeftLayer keeps one added vector per Linear
output, and BeftConfig has no `bias` field, so the generic bias="all" handling of BaseTuner
(tuners_utils.py `_mark_only_adapters_as_trainable` / `_get_learnable_bias_state_dict`, which read
getattr(config, "bias", "none")) never applies to it; LNTuningConfig trains weight and bias of
each LayerNorm and is another PEFT type (one PeftModel, one type). So those LayerNorms go into
the config's `modules_to_save` (PEFT copies each into a ModulesToSaveWrapper, saves and reloads the
copy: a plain `PeftModel.from_pretrained` rebuilds it with the same logits), and its `after_build`
freezes the copy's weight, leaving only the bias trainable (PEFT's trainable count agrees). The weight is
saved unchanged beside the bias (hidden floats per LayerNorm). Caveat: PEFT itself marks whole
modules_to_save trainable, so a run reloaded with `PeftModel.from_pretrained(..., is_trainable=True)`
outside budgetlora would train those LayerNorm weights too.

`layernorm` ignores adapter.targets: it adapts every LayerNorm in the selected layers (and the
embeddings' LayerNorm when all layers are selected).

PiSSA and OLoRA start from a decomposition of the pretrained weight and leave the *residual* in
the base model, so an adapter saved as is would need that modified base. `save_adapter` therefore
uses PEFT's conversion (`path_initial_model_for_weight_conversion`) from the initial adapter kept
in memory here: what is saved is a plain LoRA of rank 2r on the original base model.

AdaLoRA prunes ranks while training: `after_step` calls PEFT's `update_and_allocate` every step
(without it AdaLoRA silently trains like a LoRA of rank init_r), and `extra_loss` adds its
orthogonal regularisation (PEFT adds it only to a loss the model computes from labels; budgetlora
computes the loss itself). Its parameters are masked, never removed, so the budget is checked
on the peak (init_r) count, which is what the built model has.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import UserError
from .registry import MethodSpec, Placement, method_spec, register_method

if TYPE_CHECKING:
    from ..config import AdapterConfig

PLACEHOLDER_STEPS = 1000  # AdaLoRA's total_step when a model is built only to be counted or reloaded
QLORA_SKIP = ("classifier", "score", "pooler")  # the head: trained (or saved) in full precision, never quantised


# ---------------------------------------------------------------- applying a model's method


def peft_config(a: AdapterConfig, placement: Placement):
    """The PEFT config of method `a.method` on `placement` (built by the method's registry entry)."""
    return method_spec(a.method).build(a, placement)


def peft_model(model, a: AdapterConfig, placement: Placement):
    """get_peft_model with the PEFT config of `a.method`, tagged with the method (see `spec_of`)
    and fixed by the method's `after_build`."""
    from peft import get_peft_model

    spec = method_spec(a.method)
    wrapped = get_peft_model(model, spec.build(a, placement))
    wrapped.budgetlora_method = spec.name
    if spec.after_build is not None:
        spec.after_build(wrapped)
    return wrapped


def spec_of(model) -> MethodSpec | None:
    """The registry entry of a model made by `peft_model`; None for a model made elsewhere
    (it then gets PEFT's own behaviour: no training hooks, plain save_pretrained)."""
    name = getattr(model, "budgetlora_method", None)
    return None if name is None else method_spec(name)


def _hook(model, name: str) -> Callable | None:
    spec = spec_of(model)
    return None if spec is None else getattr(spec, name)


def save_pretrained(model, folder: Path) -> None:
    """PEFT's save_pretrained, or the method's own `save` where reloading needs more (PiSSA/OLoRA:
    converted to a plain LoRA; AdaLoRA: the ranks its masks leave now)."""
    save = _hook(model, "save")
    if save is None:
        model.save_pretrained(str(folder))
    else:
        save(model, folder)


def extra_loss(model):
    """The method's term added to the training loss (AdaLoRA's orthogonal regularisation); None otherwise."""
    hook = _hook(model, "extra_loss")
    return None if hook is None else hook(model)


def after_step(model, step: int) -> None:
    """After optimizer.step(), before zero_grad: the method's work for 0-based `step` (AdaLoRA's rank allocation)."""
    hook = _hook(model, "after_step")
    if hook is not None:
        hook(model, step)


def trainer_state(model) -> dict | None:
    """What a resumed run needs besides the weights (AdaLoRA's importance scores and ranks); None if nothing."""
    hook = _hook(model, "trainer_state")
    return None if hook is None else hook(model)


def load_trainer_state(model, state: dict | None) -> None:
    """Put back what `trainer_state` returned (a checkpoint's "method" entry)."""
    hook = _hook(model, "load_trainer_state")
    if state and hook is not None:
        hook(model, state)


def layernorm_bias_copies(model) -> list:
    """The LayerNorm copies whose bias BitFit trains (adapter.layernorm_bias): PEFT's modules_to_save
    copies of a LayerNorm under a method that trains LayerNorm biases; [] for every other model."""
    from peft.utils.other import ModulesToSaveWrapper

    spec = spec_of(model)
    if spec is None or not spec.layernorm_bias:
        return []
    return [norm for m in model.modules() if isinstance(m, ModulesToSaveWrapper)
            and isinstance(m.original_module, torch.nn.LayerNorm) for norm in m.modules_to_save.values()]


# ---------------------------------------------------------------- PEFT config builders


def _patterns(a: AdapterConfig) -> dict:
    return dict(rank_pattern=dict(a.rank_pattern or {}), alpha_pattern=dict(a.alpha_pattern or {}))


def lora_builder(init: str | bool = True, **flags) -> Callable:
    """A LoraConfig builder: `flags` such as use_rslora=True or use_dora=True; `init`: PEFT's
    init_lora_weights. An SVD/QR initialisation ("pissa", "olora") needs the weights, so a meta
    model (only counted) takes the default one: the shapes are the same."""
    def build(a: AdapterConfig, placement: Placement):
        import peft

        return peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias=a.bias,
                               init_lora_weights=True if placement.meta else init, **flags, **_patterns(a),
                               **placement.common())
    return build


def _lycoris_builder(config_class: str) -> Callable:
    """A LoHaConfig / LoKrConfig builder (adapter.dropout is their rank dropout)."""
    def build(a: AdapterConfig, placement: Placement):
        import peft

        return getattr(peft, config_class)(r=a.r, alpha=a.alpha, rank_dropout=a.dropout, **_patterns(a),
                                           **placement.common())
    return build


def _adalora_config(a: AdapterConfig, placement: Placement):
    import peft

    total = placement.total_steps or PLACEHOLDER_STEPS
    tinit, tfinal = adalora_schedule(a, total)
    return peft.AdaLoraConfig(
        init_r=a.r, target_r=a.target_r or max(1, a.r // 2), lora_alpha=a.alpha, lora_dropout=a.dropout, bias=a.bias,
        tinit=tinit, tfinal=tfinal, deltaT=a.delta_t, orth_reg_weight=a.orth_reg_weight, total_step=total,
        **placement.common(),
    )


def _vera_config(a: AdapterConfig, placement: Placement):
    import peft

    bias = {"lora_only": "vera_only"}.get(a.bias, a.bias)
    return peft.VeraConfig(r=a.r, vera_dropout=a.dropout, bias=bias, save_projection=True, **placement.common())


def _ia3_config(a: AdapterConfig, placement: Placement):
    import peft

    feedforward = set(placement.feedforward)
    return peft.IA3Config(feedforward_modules=[t for t in placement.targets if t in feedforward], **placement.common())


def _bitfit_config(a: AdapterConfig, placement: Placement):
    import peft

    common = placement.common()
    if a.layernorm_bias:  # see the module docstring: copies with the weight frozen by `_freeze_layernorm_weights`
        common["modules_to_save"] += [n for n in placement.layernorms if n not in common["modules_to_save"]]
    return peft.BeftConfig(**common)


def _layernorm_config(a: AdapterConfig, placement: Placement):
    import peft

    return peft.LNTuningConfig(**placement.common())


def _freeze_layernorm_weights(model) -> None:
    """BitFit's LayerNorm copies (adapter.layernorm_bias) keep only their bias trainable."""
    for norm in layernorm_bias_copies(model):
        if norm.weight is not None:
            norm.weight.requires_grad_(False)


# ---------------------------------------------------------------- QLoRA


def qlora_quantization():
    """transformers' BitsAndBytesConfig for a 4-bit NF4 base; UserError naming what is missing."""
    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if missing:
        raise UserError(f"adapter.method=qlora needs {' and '.join(missing)}, not found here; "
                        f"use adapter.method=lora (the same adapter on an unquantised base)")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(QLORA_SKIP))


# ---------------------------------------------------------------- PiSSA / OLoRA: save as plain LoRA


def keep_initial_adapter(model) -> None:
    """Remember the adapter as initialised (PiSSA/OLoRA), for the conversion at save time."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    model.budgetlora_initial_adapter = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def save_converted(model, folder: Path) -> None:
    """Save a PiSSA/OLoRA model as the equivalent plain LoRA on the original base (a model
    without its initial adapter, built on the meta device, is saved as it is)."""
    initial = getattr(model, "budgetlora_initial_adapter", None)
    if initial is None:
        model.save_pretrained(str(folder))
        return
    import copy

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        init_dir = Path(tmp) / "initial"
        config = copy.deepcopy(model.peft_config["default"])
        config.init_lora_weights = True  # PEFT's rule: the initial adapter is loaded as a plain LoRA
        config.save_pretrained(str(init_dir))
        save_file(initial, str(init_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
        model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(init_dir))
    # PEFT's conversion keeps only the LoRA matrices: put back the rest (head, trainable biases)
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    tensors = load_file(str(path))
    for key, value in get_peft_model_state_dict(model).items():
        if "lora_A" not in key and "lora_B" not in key:
            tensors[key] = value.detach().to("cpu").contiguous().clone()
    save_file(tensors, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------- AdaLoRA


def _steps(value: float, total: int) -> int:
    return int(round(value * total)) if value < 1 else int(value)


def adalora_schedule(a: AdapterConfig, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) in steps; UserError when they leave no steps for rank allocation."""
    tinit, tfinal = _steps(a.tinit, total_steps), _steps(a.tfinal, total_steps)
    if tinit >= total_steps - tfinal:
        raise UserError(
            f"adalora: adapter.tinit={a.tinit} ({tinit} steps) and adapter.tfinal={a.tfinal} ({tfinal} steps) leave no "
            f"steps for rank allocation in {total_steps} training steps; lower them or train longer"
        )
    return tinit, tfinal


def _freeze_ranknum(model) -> None:
    """PEFT 0.21 leaves AdaLoRA's `ranknum` (the constant r it divides the update by, never saved)
    trainable; trained, it would change the scaling and break reloads."""
    for name, p in model.named_parameters():
        if ".ranknum." in name:
            p.requires_grad_(False)


def _save_adalora(model, folder: Path) -> None:
    """Saved with the ranks its masks leave *now* (read off lora_E), not the ranks of its last
    allocation, which differ when the saved weights are an earlier (best) checkpoint."""
    config = model.peft_config["default"]
    allocated = config.rank_pattern
    if allocated is not None:  # before the first allocation nothing is pruned: saved at full rank
        config.rank_pattern = {n: (p != 0).view(-1).tolist() for n, p in model.base_model.model.named_parameters()
                               if ".lora_E." in n}
    try:
        model.save_pretrained(str(folder))
    finally:
        config.rank_pattern = allocated


def _orthogonal_loss(model):
    """AdaLoRA's orthogonal regularisation of P (lora_A) and Q (lora_B), as PEFT computes it."""
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype), p="fro"))
    if not terms:
        return None
    return model.peft_config["default"].orth_reg_weight * torch.stack(terms).mean()


def _allocate_ranks(model, step: int) -> None:
    model.base_model.update_and_allocate(step)


def _allocator_state(model) -> dict:
    allocator = model.base_model.rankallocator
    return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": model.peft_config["default"].rank_pattern}


def _load_allocator_state(model, state: dict) -> None:
    allocator = model.base_model.rankallocator
    device = next(model.parameters()).device
    for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        setattr(allocator, key, {n: t.to(device) for n, t in state[key].items()})
    model.peft_config["default"].rank_pattern = state["rank_pattern"]


# ---------------------------------------------------------------- the built-in methods (see the table above)

LORA_KEYS = dict(patterns=True, bias=True)  # what every LoraConfig method reads besides the rank

register_method(MethodSpec("lora", build=lora_builder(), **LORA_KEYS))
register_method(MethodSpec("rslora", build=lora_builder(use_rslora=True), **LORA_KEYS))
register_method(MethodSpec("dora", build=lora_builder(use_dora=True), **LORA_KEYS))
register_method(MethodSpec("pissa", build=lora_builder(init="pissa"), rewrites_base=True, save=save_converted,
                           **LORA_KEYS))
register_method(MethodSpec("olora", build=lora_builder(init="olora"), rewrites_base=True, save=save_converted,
                           **LORA_KEYS))
# requantising the 4-bit base would round, so it is never merged; planned as lora, which counts the same
register_method(MethodSpec("qlora", build=lora_builder(), quantization=qlora_quantization, merges=False,
                           planned=False, **LORA_KEYS))
register_method(MethodSpec("loha", build=_lycoris_builder("LoHaConfig"), patterns=True))
register_method(MethodSpec("lokr", build=_lycoris_builder("LoKrConfig"), patterns=True,
                           affine=False))  # PEFT's Kronecker factorisation changes with r
register_method(MethodSpec("adalora", build=_adalora_config, bias=True, at_most_r=("target_r",),
                           after_build=_freeze_ranknum, save=_save_adalora, extra_loss=_orthogonal_loss,
                           after_step=_allocate_ranks, trainer_state=_allocator_state,
                           load_trainer_state=_load_allocator_state))
register_method(MethodSpec("vera", build=_vera_config, bias=True))
register_method(MethodSpec("ia3", build=_ia3_config, rank=False))
register_method(MethodSpec("bitfit", build=_bitfit_config, rank=False, layernorm_bias=True,
                           after_build=_freeze_layernorm_weights))
register_method(MethodSpec("layernorm", build=_layernorm_config, rank=False, adapts="layernorm"))
