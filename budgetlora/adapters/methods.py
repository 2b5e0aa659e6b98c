"""Adapter methods: the PEFT config of each `adapter.method`, and the training hooks a method needs.

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
copy: a plain `PeftModel.from_pretrained` rebuilds it with the same logits), and `finish` freezes
the copy's weight, leaving only the bias trainable (PEFT's trainable count agrees). The weight is
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

import torch

from ..config import RANK_FREE_METHODS, AdapterConfig
from ..errors import UserError

LORA_FAMILY = ("lora", "rslora", "dora", "pissa", "olora", "qlora")
CONVERTED_INIT = ("pissa", "olora")  # initialisation that rewrites the base weights
RANK_FREE = RANK_FREE_METHODS
PLACEHOLDER_STEPS = 1000  # AdaLoRA's total_step when a model is built only to be counted or reloaded


def is_rank_free(method: str) -> bool:
    return method in RANK_FREE


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


def peft_config(a: AdapterConfig, targets: list[str], *, feedforward=(), modules_to_save=(), seq_cls: bool = True,
                meta: bool = False, total_steps: int | None = None, layernorms=()):
    """The PEFT config of method `a.method` on the modules `targets` (full names).

    layernorms: full names of the LayerNorms whose bias bitfit trains (adapter.layernorm_bias).

    meta=True: the model is only counted; PiSSA/OLoRA then use the default LoRA initialisation
    (same shapes, and an SVD of weights that do not exist is impossible).
    """
    import peft

    common = dict(
        task_type=peft.TaskType.SEQ_CLS if seq_cls else None,
        target_modules=list(targets),
        modules_to_save=list(modules_to_save),
    )
    m = a.method
    if m in LORA_FAMILY:
        init = a.method if m in CONVERTED_INIT and not meta else True
        return peft.LoraConfig(
            r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias=a.bias, use_rslora=m == "rslora",
            use_dora=m == "dora", init_lora_weights=init, rank_pattern=dict(a.rank_pattern or {}),
            alpha_pattern=dict(a.alpha_pattern or {}), **common,
        )
    if m == "adalora":
        target_r = a.target_r or max(1, a.r // 2)
        if target_r > a.r:
            raise UserError(f"adapter.target_r={target_r} is above adapter.r={a.r} (AdaLoRA's initial rank); lower target_r")
        total = total_steps or PLACEHOLDER_STEPS
        tinit, tfinal = adalora_schedule(a, total)
        return peft.AdaLoraConfig(
            init_r=a.r, target_r=target_r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias=a.bias, tinit=tinit,
            tfinal=tfinal, deltaT=a.delta_t, orth_reg_weight=a.orth_reg_weight, total_step=total, **common,
        )
    if m in ("loha", "lokr"):
        cls = peft.LoHaConfig if m == "loha" else peft.LoKrConfig
        return cls(r=a.r, alpha=a.alpha, rank_dropout=a.dropout, rank_pattern=dict(a.rank_pattern or {}),
                   alpha_pattern=dict(a.alpha_pattern or {}), **common)
    if m == "vera":
        bias = {"lora_only": "vera_only"}.get(a.bias, a.bias)
        return peft.VeraConfig(r=a.r, vera_dropout=a.dropout, bias=bias, save_projection=True, **common)
    if m == "ia3":
        return peft.IA3Config(feedforward_modules=[t for t in targets if t in set(feedforward)], **common)
    if m == "bitfit":
        if a.layernorm_bias:  # see the module docstring: copies with the weight frozen by `finish`
            common["modules_to_save"] += [n for n in layernorms if n not in common["modules_to_save"]]
        return peft.BeftConfig(**common)
    if m == "layernorm":
        return peft.LNTuningConfig(**common)
    raise ValueError(f"unknown adapter method {m!r}")  # config validation makes this a bug, not user input


def finish(model) -> None:
    """Fixes after get_peft_model: PEFT 0.21 leaves AdaLoRA's `ranknum` (the constant r it divides
    the update by, never saved) trainable; trained, it would change the scaling and break reloads.
    BitFit's LayerNorm copies (adapter.layernorm_bias) keep only their bias trainable."""
    for name, p in model.named_parameters():
        if ".ranknum." in name:
            p.requires_grad_(False)
    for norm in layernorm_bias_copies(model):
        if norm.weight is not None:
            norm.weight.requires_grad_(False)


def layernorm_bias_copies(model) -> list:
    """The LayerNorm copies whose bias BitFit trains (adapter.layernorm_bias): PEFT's
    modules_to_save copies of a LayerNorm under a BEFT config; [] for every other model."""
    from peft import PeftType
    from peft.utils.other import ModulesToSaveWrapper

    config = getattr(model, "peft_config", {}).get("default")
    if config is None or config.peft_type != PeftType.BEFT:
        return []
    return [norm for m in model.modules() if isinstance(m, ModulesToSaveWrapper)
            and isinstance(m.original_module, torch.nn.LayerNorm) for norm in m.modules_to_save.values()]


# ---------------------------------------------------------------- QLoRA


def qlora_quantization(skip_modules: list[str]):
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
    # the head is trained (or saved) in full precision: never quantised
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(skip_modules))


# ---------------------------------------------------------------- PiSSA / OLoRA: save as plain LoRA


def keep_initial_adapter(model) -> None:
    """Remember the adapter as initialised (PiSSA/OLoRA), for the conversion at save time."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    model.budgetlora_initial_adapter = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def save_pretrained(model, folder: Path) -> None:
    """PEFT's save_pretrained, plus what two methods need to reload to the same logits:

    PiSSA/OLoRA are converted to a plain LoRA on the original base (see `save_converted`);
    AdaLoRA saves the ranks its masks leave *now* (read off lora_E), not the ranks of its last
    allocation, which differ when the saved weights are an earlier (best) checkpoint.
    """
    if save_converted(model, folder):
        return
    if not _adalora(model):
        model.save_pretrained(str(folder))
        return
    config = model.peft_config["default"]
    allocated = config.rank_pattern
    if allocated is not None:  # before the first allocation nothing is pruned: saved at full rank
        config.rank_pattern = {n: (p != 0).view(-1).tolist() for n, p in model.base_model.model.named_parameters()
                               if ".lora_E." in n}
    try:
        model.save_pretrained(str(folder))
    finally:
        config.rank_pattern = allocated


def save_converted(model, folder: Path) -> bool:
    """Save a PiSSA/OLoRA model as the equivalent plain LoRA on the original base; False if not one."""
    initial = getattr(model, "budgetlora_initial_adapter", None)
    if initial is None:
        return False
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
    return True


# ---------------------------------------------------------------- AdaLoRA: training hooks


def _adalora(model):
    from peft import PeftType

    config = getattr(model, "peft_config", {}).get("default")
    return config is not None and config.peft_type == PeftType.ADALORA


def extra_loss(model):
    """AdaLoRA's orthogonal regularisation of P (lora_A) and Q (lora_B), as PEFT computes it; None otherwise."""
    if not _adalora(model):
        return None
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype), p="fro"))
    if not terms:
        return None
    return model.peft_config["default"].orth_reg_weight * torch.stack(terms).mean()


def after_step(model, step: int) -> None:
    """After optimizer.step(), before zero_grad: AdaLoRA's rank allocation for 0-based `step`."""
    if _adalora(model):
        model.base_model.update_and_allocate(step)


def trainer_state(model) -> dict | None:
    """What a resumed run needs besides the weights (AdaLoRA's importance scores and ranks)."""
    if not _adalora(model):
        return None
    allocator = model.base_model.rankallocator
    return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": model.peft_config["default"].rank_pattern}


def load_trainer_state(model, state: dict | None) -> None:
    if not state or not _adalora(model):
        return
    allocator = model.base_model.rankallocator
    device = next(model.parameters()).device
    for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        setattr(allocator, key, {n: t.to(device) for n, t in state[key].items()})
    model.peft_config["default"].rank_pattern = state["rank_pattern"]
