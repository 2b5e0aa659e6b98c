"""Model: load an encoder with a classification head, put a PEFT adapter on it, save and reload.

Target modules are named by role and resolved here per architecture, by looking at the
model's own Linear layers: `attention` (q,k,v), `attention_all` (q,k,v,o), `ffn`,
`all_linear`, or explicit module names. PEFT gets the exact list of full module names, so
what is adapted is never a surprise (PEFT's suffix matching would let `output.dense` hit the
attention output too).

Heads (`head.type`, see `prepare_head`):

* `standard`: every module between the encoder and the logits (RoBERTa/MPNet `classifier` =
  dense + tanh + out_proj, BERT `pooler` + `classifier`, ...), trained fully (PEFT
  `modules_to_save`).
* `standard_lora`: the same modules, but only the output layer(s) (out_features == number of
  classes) are trained fully; every other Linear of the head (RoBERTa `classifier.dense`, BERT
  `pooler.dense`) is frozen and gets a LoRA of the adapter's rank. RoBERTa's `classifier.dense` is
  not in the pretrained checkpoint (random, seeded by train.seed), so `save_adapter` also writes
  the frozen base weight of every head layer it adapts into adapter_model.safetensors
  (`...classifier.dense.base_layer.weight`, the same pass-through PEFT itself uses for embedding
  base weights): a plain `PeftModel.from_pretrained` loads it and reproduces the logits.
  The PeftModel is a plain `PeftModel` (task_type None), because PEFT's sequence-classification
  wrapper would make the whole `classifier` trainable.
* `linear`: one Linear(hidden, classes) on the first token's final hidden state.
* `mean`: one Linear(hidden, classes) on the attention-mask-weighted mean of the final hidden
  states.

`linear` and `mean` replace the model's own head module by a `PoolingHead` (and a BERT-style
pooler by a parameterless pass-through). A model built by plain
`AutoModelForSequenceClassification.from_pretrained` has the original dense+tanh head, which no
PEFT config can turn into a single Linear, so these two heads CANNOT be reloaded by plain PEFT:
call `prepare_head(base, "linear" | "mean")` on the base model before
`PeftModel.from_pretrained` (budgetlora's `load_run` does). Without it PEFT fails loudly
(KeyError on `classifier.dense.weight` / `classifier.weight`) rather than giving wrong logits.
"""

from __future__ import annotations

import re
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import files

from . import methods
from .registry import ADAPTS, MethodSpec, Placement, method_spec

from .. import rundir
from ..config import HEAD_TYPES, Config
from ..errors import UserError, first_line, warn
from ..hardware import inference_device

LAYER_RE = re.compile(r"^(?P<prefix>.*?\.(?:layer|layers|h|blocks|block)\.)(?P<index>\d+)\.(?P<rest>.+)$")

ROLE_NAMES = {
    "q": {"query", "q", "q_lin", "query_proj", "q_proj"},
    "k": {"key", "k", "k_lin", "key_proj", "k_proj"},
    "v": {"value", "v", "v_lin", "value_proj", "v_proj"},
    "o": {"o", "out_lin", "o_proj", "out_proj"},
}
ROLES = {
    "attention": ("q", "k", "v"),
    "attention_all": ("q", "k", "v", "o"),
    "ffn": ("ffn",),
    "all_linear": ("q", "k", "v", "o", "ffn"),
}


def quiet_transformers() -> None:
    """Keep library chatter (expected "newly initialized" head weights etc.) off the console."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


# ---------------------------------------------------------------- loading


def _model_error(name: str, err: Exception) -> UserError:
    return UserError(
        f"cannot load model {name!r} ({first_line(err)}); give a hub id that is reachable or a local folder with config.json (model.name)"
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # OSError, ValueError, HTTP errors: all mean "cannot load"
        raise _model_error(name, e) from None


def load_backbone(name: str, label_names: list[str], *, meta: bool = False, quantization=None,
                  attention: str | None = None) -> nn.Module:
    """An AutoModelForSequenceClassification for len(label_names) classes.

    meta=True builds it from config.json alone on the meta device (no weights read or
    downloaded): shapes, names and parameter counts are exact, values do not exist.
    `quantization`: a transformers quantization config (QLoRA's 4-bit base).
    `attention`: transformers' attn_implementation ("eager", "sdpa"); None: the library's default.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    quiet_transformers()
    id2label = dict(enumerate(label_names))
    try:
        config = AutoConfig.from_pretrained(
            name, num_labels=len(label_names), id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )
    except Exception as e:
        raise _model_error(name, e) from None
    try:
        if meta:
            with torch.device("meta"):
                return AutoModelForSequenceClassification.from_config(config)
        # ignore_mismatched_sizes: a checkpoint that already has a head for another number of
        # classes gets a fresh head of the right shape, as for a bare encoder
        extra = {"quantization_config": quantization} if quantization is not None else {}
        if attention is not None:
            extra["attn_implementation"] = attention
        return AutoModelForSequenceClassification.from_pretrained(
            name, config=config, dtype=torch.float32, ignore_mismatched_sizes=True, **extra
        )
    except Exception as e:
        raise _model_error(name, e) from None


def max_input_length(name: str) -> int | None:
    """The most tokens one input of model `name` can hold, from its config alone (no weights):
    the rows of its learned position table, less padding_idx + 1 where positions are counted
    after the padding index (RoBERTa, MPNet, XLM-R: 514 rows, 512 tokens). None when the model
    has no learned position table (relative or rotary positions) or its config cannot be read
    here (loading it later says why)."""
    from transformers import AutoConfig, AutoModel

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(name)
        with torch.device("meta"):
            encoder = AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 -- load_backbone reports an unloadable model in one line
        return None
    table = next((m for n, m in encoder.named_modules()
                  if n.endswith("position_embeddings") and isinstance(m, nn.Embedding)), None)
    if table is None:
        return None
    return table.num_embeddings - (table.padding_idx + 1 if table.padding_idx is not None else 0)


def attention_dropout(model_cfg) -> float | None:
    """The drop probability of the attention weights a run trains with: `model.encoder_dropout`,
    else the model config's (`attention_probs_dropout_prob`: BERT family; `attention_dropout`:
    most others); None where the config cannot be read here or names neither."""
    if model_cfg.encoder_dropout is not None:
        return float(model_cfg.encoder_dropout)
    from transformers import AutoConfig

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(model_cfg.name)
    except Exception:  # noqa: BLE001 -- load_backbone reports an unloadable model in one line
        return None
    values = [getattr(config, key, None) for key in ("attention_probs_dropout_prob", "attention_dropout")]
    return next((float(v) for v in values if isinstance(v, (int, float))), None)


def check_max_length(model_cfg) -> None:
    """Refuse a model.max_length longer than the model's position table (a crash mid-training)."""
    limit = max_input_length(model_cfg.name)
    if limit is not None and model_cfg.max_length > limit:
        raise UserError(f"model.max_length={model_cfg.max_length} exceeds what {model_cfg.name} can take "
                        f"({limit} positions); set model.max_length<={limit}")


# ---------------------------------------------------------------- targets and head


def _role_of(rest: str) -> str:
    parts = rest.split(".")
    last = parts[-1]
    for role, names in ROLE_NAMES.items():
        if last in names and (role != "o" or any("att" in p for p in parts)):
            return role
    if rest.endswith("attention.output.dense") or rest.endswith("attention.dense"):
        return "o"
    return "ffn"


def encoder_linears(model: nn.Module) -> dict[str, str]:
    """Full name -> role (q, k, v, o, ffn) of every Linear inside the encoder's numbered layers."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        m = LAYER_RE.match(name)
        if m:
            out[name] = _role_of(m.group("rest"))
    return out


def module_type(full_name: str) -> str:
    """"roberta.encoder.layer.3.attention.self.query" -> "attention.self.query"."""
    m = LAYER_RE.match(full_name)
    return m.group("rest") if m else full_name


def resolve_targets(model: nn.Module, targets) -> list[str]:
    """The sorted full names of the modules an adapter goes on; UserError if nothing matches."""
    linears = encoder_linears(model)
    if isinstance(targets, str):
        wanted = ROLES[targets]
        chosen = [n for n, role in linears.items() if role in wanted]
        if not chosen:
            raise UserError(
                f"adapter.targets={targets} matches no module of this {model.config.model_type} model; "
                f"give module names instead, such as {', '.join(_layer_module_types(linears))}"
            )
        return sorted(chosen, key=_natural)
    all_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = set()
    for target in targets:
        hits = [n for n in all_linear if n == target or n.endswith("." + target)]
        if not hits:
            examples = _layer_module_types(linears)
            raise UserError(
                f"adapter target {target!r} matches no Linear module of this {model.config.model_type} model; "
                f"choose from roles {', '.join(ROLES)} or names like {', '.join(examples)}"
            )
        chosen.update(hits)
    return sorted(chosen, key=_natural)


def select_layers(model: nn.Module, names: list[str], layers=None, top_layers=None) -> list[str]:
    """Keep the names inside the chosen encoder layers (adapter.layers / adapter.top_layers)."""
    if layers is None and top_layers is None:
        return names
    n = model.config.num_hidden_layers
    if top_layers is not None:
        if top_layers > n:
            raise UserError(f"adapter.top_layers={top_layers} but this model has {n} layers; give at most {n}")
        chosen = set(range(n - top_layers, n))
    else:
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise UserError(f"adapter.layers: {bad} out of range for a model with {n} layers (0..{n - 1}, or -1 for the last)")
        chosen = {i % n for i in layers}
    kept = []
    for name in names:
        m = LAYER_RE.match(name)
        if m and int(m.group("index")) in chosen:
            kept.append(name)
    if not kept:
        raise UserError(f"adapter.layers/top_layers select no adapted module among {len(names)}; check the layer indices")
    return kept


def encoder_layernorms(model: nn.Module, layers=None, top_layers=None) -> list[str]:
    """LayerNorms of the encoder (adapter.method=layernorm): those in the chosen layers, plus the
    embeddings' LayerNorm when all layers are chosen. The head's own are never included."""
    heads = head_modules(model)
    norms = [n for n, m in model.named_modules()
             if isinstance(m, nn.LayerNorm) and not any(n == h or n.startswith(h + ".") for h in heads)]
    in_layers = [n for n in norms if LAYER_RE.match(n)]
    if layers is None and top_layers is None:
        return sorted(norms, key=_natural)
    return sorted(select_layers(model, in_layers, layers, top_layers), key=_natural)


def method_fits_head(spec: MethodSpec, head: "HeadSpec") -> bool:
    """False when the head wants the adapter on its Linears (head.type=standard_lora) and the
    method adapts no Linear (adapter.method=layernorm)."""
    return spec.adapts == "linear" or not head.lora_targets


def adapter_targets(model: nn.Module, a, head: "HeadSpec") -> tuple[list[str], set[str]]:
    """(full names of the modules the adapter goes on, those among them that are FFN Linears)."""
    spec = method_spec(a.method)
    if not method_fits_head(spec, head):
        raise UserError(f"head.type={head.type} puts the adapter on the head's Linear, and adapter.method={a.method} "
                        f"adapts {ADAPTS[spec.adapts]}s only; use head.type=standard, linear or mean")
    if spec.adapts == "layernorm":
        return encoder_layernorms(model, a.layers, a.top_layers), set()
    encoder = select_layers(model, resolve_targets(model, a.targets), a.layers, a.top_layers)
    roles = encoder_linears(model)
    return encoder + list(head.lora_targets), {n for n in encoder if roles.get(n) == "ffn"}


def _layer_module_types(linears: dict[str, str]) -> list[str]:
    return sorted({module_type(n) for n in linears}, key=_natural)


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def head_modules(model: nn.Module) -> list[str]:
    """Modules between the encoder and the logits: the model's own head plus a used pooler."""
    base_name = model.base_model_prefix
    names = [n for n, child in model.named_children() if n != base_name and any(True for _ in child.parameters())]
    base = getattr(model, base_name, None)
    pooler = getattr(base, "pooler", None) if base is not None else None
    if pooler is not None and any(True for _ in pooler.parameters()):
        names.insert(0, f"{base_name}.pooler")
    return names


# ---------------------------------------------------------------- heads

class PoolingHead(nn.Module):
    """The `linear` / `mean` head: pool the final hidden states [B, T, H], dropout, one Linear.

    `pooling="first"` takes the first token (<s> / [CLS]); `pooling="mean"` averages the tokens
    where the attention mask is 1. The mask reaches the head through a forward pre-hook on the
    encoder (see `prepare_head`), since the model only hands the head the hidden states.
    """

    def __init__(self, pooling: str, hidden: int, num_labels: int, dropout: float = 0.0, device=None):
        super().__init__()
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling {pooling!r}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels, device=device)
        self.attention_mask = None  # set per forward by the encoder hook (mean pooling)

    def forward(self, features, *args, **kwargs):
        if features.dim() != 3:
            raise RuntimeError(f"PoolingHead expects hidden states [batch, tokens, hidden], got {tuple(features.shape)}")
        if self.pooling == "first":
            pooled = features[:, 0]
        else:
            mask = self.attention_mask
            if mask is None:
                pooled = features.mean(dim=1)
            else:
                m = mask[:, : features.shape[1]].to(features.dtype).unsqueeze(-1)
                pooled = (features * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.out_proj(self.dropout(pooled))


class PassThroughPooler(nn.Module):
    """Stands in for a BERT-style pooler under the `linear`/`mean` heads: hands on the hidden states."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _mask_hook(model: nn.Module):
    ref = weakref.ref(model)

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        top = ref()
        if top is not None:
            for m in top.modules():  # every copy, including PEFT's modules_to_save one
                if isinstance(m, PoolingHead):
                    m.attention_mask = mask

    return hook


@dataclass
class HeadSpec:
    """How a head is trained: which head modules are trained fully, which get LoRA."""

    type: str
    modules_to_save: list[str] = field(default_factory=list)  # trained fully
    lora_targets: list[str] = field(default_factory=list)  # frozen head Linears adapted with LoRA
    seq_cls: bool = True  # PEFT task_type SEQ_CLS (which always adds `classifier` to modules_to_save)


def _linears_under(model: nn.Module, prefix: str) -> list[tuple[str, nn.Linear]]:
    module = model.get_submodule(prefix)
    return [(f"{prefix}.{n}" if n else prefix, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def prepare_head(model: nn.Module, head_type: str = "standard") -> HeadSpec:
    """Put head `head_type` on a transformers sequence-classification model (in place).

    `standard` and `standard_lora` leave the modules as they are (they only decide what is
    trained); `linear` and `mean` replace the head module by a `PoolingHead`. Supported for
    `linear`/`mean`: models whose head module pools the hidden states itself (RoBERTa, XLM-R,
    MPNet, ELECTRA: `classifier` = *ClassificationHead) and BERT-style models (pooler + Linear
    `classifier`: BERT, MiniLM); others raise a UserError.
    """
    if head_type not in HEAD_TYPES:
        raise UserError(f"head.type: {head_type!r} is not allowed; choose one of {', '.join(HEAD_TYPES)}")
    num_labels = model.config.num_labels
    heads = head_modules(model)
    model.budgetlora_head = head_type
    if head_type == "standard":
        return HeadSpec("standard", modules_to_save=heads)
    if head_type == "standard_lora":
        out_layers, lora = [], []
        for prefix in heads:
            for name, lin in _linears_under(model, prefix):
                (out_layers if lin.out_features == num_labels else lora).append(name)
        if not out_layers or not lora:
            raise UserError(
                f"head.type=standard_lora: the {model.config.model_type} head ({', '.join(heads)}) has no "
                f"hidden Linear besides the output layer; use head.type=standard or linear"
            )
        # params outside any Linear of the head (none in the supported models) stay frozen
        return HeadSpec("standard_lora", modules_to_save=out_layers, lora_targets=lora, seq_cls=False)

    config = model.config
    hidden = config.hidden_size
    base_name = model.base_model_prefix
    base = getattr(model, base_name)
    device = next(model.parameters()).device
    classifier = getattr(model, "classifier", None)
    drop = getattr(config, "classifier_dropout", None)
    drop = drop if drop is not None else getattr(config, "hidden_dropout_prob", 0.1)
    pooling = "first" if head_type == "linear" else "mean"
    if heads == ["classifier"] and not isinstance(classifier, nn.Linear) and type(classifier).__name__.endswith("ClassificationHead"):
        head = PoolingHead(pooling, hidden, num_labels, drop, device=device)
    elif heads == [f"{base_name}.pooler", "classifier"] and isinstance(classifier, nn.Linear):
        base.pooler = PassThroughPooler()  # the model applies its own dropout before `classifier`
        head = PoolingHead(pooling, hidden, num_labels, 0.0, device=device)
    else:
        raise UserError(
            f"head.type={head_type} is not supported for {config.model_type} models (head: {', '.join(heads)}); "
            f"use head.type=standard or standard_lora"
        )
    std = getattr(config, "initializer_range", 0.02)
    with torch.no_grad():  # as transformers initialises a fresh classifier
        head.out_proj.weight.normal_(mean=0.0, std=std)
        head.out_proj.bias.zero_()
    model.classifier = head
    if pooling == "mean":
        base.register_forward_pre_hook(_mask_hook(model), with_kwargs=True)
    return HeadSpec(head_type, modules_to_save=["classifier"])


# ---------------------------------------------------------------- building


def placement(cfg: Config, model: nn.Module, head: HeadSpec | None = None, *, meta: bool = False,
              total_steps: int | None = None) -> Placement:
    """Where cfg.adapter goes on `model`: its targets, FFN Linears, head modules saved, LayerNorm
    biases; `head` is what `prepare_head` returned (default: the standard head)."""
    if head is None:
        head = HeadSpec("standard", modules_to_save=head_modules(model))
    targets, ffn = adapter_targets(model, cfg.adapter, head)
    return Placement(targets=tuple(targets), feedforward=tuple(sorted(ffn)),
                     modules_to_save=tuple(head.modules_to_save), layernorms=tuple(bias_layernorms(model, cfg.adapter)),
                     seq_cls=head.seq_cls, meta=meta, total_steps=total_steps)


def peft_config(cfg: Config, model: nn.Module, head: HeadSpec | None = None, *, meta: bool = False,
                total_steps: int | None = None):
    """The PEFT config of cfg.adapter.method for `model` (built by its registry entry); `head` is what
    `prepare_head` returned (default: the standard head)."""
    return methods.peft_config(cfg.adapter, placement(cfg, model, head, meta=meta, total_steps=total_steps))


def bias_layernorms(model: nn.Module, a) -> list[str]:
    """The LayerNorms whose bias the method trains under adapter.layernorm_bias (those that have one)."""
    if not (a.layernorm_bias and method_spec(a.method).layernorm_bias):
        return []
    return [n for n in encoder_layernorms(model, a.layers, a.top_layers) if model.get_submodule(n).bias is not None]


def build_model(cfg: Config, label_names: list[str], *, meta: bool = False, total_steps: int | None = None,
                attention: str | None = None):
    """The budgeted PEFT model: frozen encoder + adapter + trainable head (cfg.head.type).

    total_steps: the training length (AdaLoRA schedules its rank allocation over it).
    attention: the attention kernel (`hardware.attention`); None: the library's default.
    """
    spec = method_spec(cfg.adapter.method)
    torch.manual_seed(cfg.train.seed)  # the head's initial weights
    quantization = spec.quantization() if spec.quantization is not None and not meta else None
    backbone = load_backbone(cfg.model.name, label_names, meta=meta, quantization=quantization, attention=attention)
    head = prepare_head(backbone, cfg.head.type)
    if cfg.model.encoder_dropout is not None:
        set_encoder_dropout(backbone, cfg.model.encoder_dropout)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    keeps_originals = spec.rewrites_base and not meta
    # PiSSA/OLoRA rewrite the base weights: keep the head's original ones for save_adapter
    original = {n: backbone.get_submodule(n).weight.detach().clone() for n in head.lora_targets} \
        if keeps_originals else {}
    model = methods.peft_model(backbone, cfg.adapter,
                               placement(cfg, backbone, head, meta=meta, total_steps=total_steps))
    if original:
        model.budgetlora_head_base = original
    if keeps_originals:
        methods.keep_initial_adapter(model)
    return model


def set_encoder_dropout(backbone: nn.Module, p: float) -> int:
    """Set the drop probability of every dropout inside the encoder: the base model less its
    pooler (the head's dropout stays; called before the adapters exist, so theirs are not
    touched). transformers' attention reads its module's `p` too. Returns how many were set."""
    encoder = getattr(backbone, backbone.base_model_prefix)
    changed = 0
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Dropout) and name.split(".")[0] != "pooler":
            module.p = p
            changed += 1
    return changed


def store_frozen_encoder_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen floating-point weights of the encoder in `dtype` once, so autocast does not
    cast them again every step. Adapter and head weights (trainable, a head's saved base weights,
    and any module with a trainable part, since the adapter saves it whole) stay fp32. PEFT's cast
    of each adapter's input to its fp32 weights is turned off: autocast already runs the adapter
    in `dtype`. Returns how many weights were stored."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep = tuple(f"{n}." for n in head_modules(base))
    stored = 0
    for module_name, module in base.named_modules():
        own = list(module.named_parameters(recurse=False))
        if any(p.requires_grad for _, p in own) or f"{module_name}.".startswith(keep):
            continue  # a module with a trainable part is saved whole (e.g. BitFit's LayerNorm): kept exact
        for _, param in own:
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                stored += 1
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    return stored


# ---------------------------------------------------------------- saving and loading a run


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def head_lora_base_weights(model) -> dict[str, torch.Tensor]:
    """Frozen base weights of the head layers that carry a LoRA (head.type=standard_lora), keyed as
    PEFT keys a targeted layer's base weight (`base_model.model.classifier.dense.base_layer.weight`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefixes = head_modules(base)
    original = getattr(model, "budgetlora_head_base", {})  # PiSSA/OLoRA: the weight before the init rewrote it
    out = {}
    for name, module in model.named_modules():
        if not (isinstance(module, BaseTunerLayer) and hasattr(module, "base_layer")):
            continue
        path = name.removeprefix("base_model.model.")
        if any(path == p or path.startswith(p + ".") for p in prefixes):
            for pname, p in module.base_layer.named_parameters():
                value = original[path] if pname == "weight" and path in original else p
                out[f"{name}.base_layer.{pname}"] = value.detach().to("cpu").contiguous().clone()
    return out


def save_adapter(model, folder: Path, tokenizer=None) -> None:
    """PEFT format (adapter_config.json + adapter_model.safetensors, head included).

    Under head.type=standard_lora the frozen (randomly initialised) base weights of the LoRA'd
    head layers are added to adapter_model.safetensors, so that plain PEFT reload reproduces them.
    The folder is built beside `folder` and swapped in complete (files.staged_dir).
    """
    with files.staged_dir(folder) as staging:
        methods.save_pretrained(model, staging)  # PEFT's, or the method's own (PiSSA/OLoRA: plain LoRA)
        extra = head_lora_base_weights(model)
        if extra:
            from safetensors.torch import load_file, save_file

            path = staging / "adapter_model.safetensors"
            tensors = load_file(str(path))
            tensors.update(extra)
            save_file(tensors, str(path), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))


def merge_and_unload(model) -> nn.Module:
    """PEFT's merge_and_unload, with the trained head copies (modules_to_save) put in place first:
    PEFT's generic unload (LoHa, LoKr, VeRA, IA3, BEFT) fails on a head module without a `weight`
    of its own (RoBERTa's classifier, the pooling heads); LoRA's own unload does the same swap."""
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])
    return model.merge_and_unload()


def load_adapter(backbone: nn.Module, adapter: Path):
    """PeftModel.from_pretrained; a truncated or corrupt adapter folder is one UserError."""
    from peft import PeftModel

    fix = ("rerun the training: `budgetlora train --resume` rewrites it from an intact checkpoint, "
           "else start again with --overwrite")
    config = files.read_json(adapter / "adapter_config.json", fix)  # a corrupt config: our message, not PEFT's
    try:
        with warnings.catch_warnings():
            if config.get("peft_type") == "ADALORA":
                # PEFT (PR #3588; 0.21.2 here) checks rank_pattern keys against module names, but AdaLoRA's
                # keys name its lora_E parameters ("...query.lora_E"): every pruned AdaLoRA adapter
                # loads right (same logits, tests/test_methods.py) with a warning that its ranks were ignored
                warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match",
                                        category=RuntimeWarning)
            return PeftModel.from_pretrained(backbone, str(adapter))
    except Exception as e:  # noqa: BLE001 -- safetensors header/size errors, missing or misshapen tensors
        raise files.corrupt(adapter / "adapter_model.safetensors", e, fix) from None


def load_run(run_dir: str | Path, *, model_name: str | None = None, merge: bool = True):
    """(model, tokenizer, config, label_names) of a finished run, in eval mode.

    merge=True folds the adapter into the base weights (PEFT's merge_and_unload): a plain
    transformers model with no adapter branches, which predicts faster and gives the same
    logits up to float rounding.
    """
    run_dir = Path(run_dir)
    adapter = files.readable_dir(run_dir / rundir.ADAPTER)  # the old copy while a save swaps it
    if not (adapter / "adapter_config.json").is_file() or not (run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir} is not a finished budgetlora run (no adapter/ or config.yaml); give the --out folder of `budgetlora train`")
    note = rundir.unfinished_note(run_dir)
    if note:
        warn(note)
    cfg = rundir.read_config(run_dir)
    if model_name:
        cfg.model.name = model_name
    label_names = rundir.read_labels(run_dir)
    spec = method_spec(cfg.adapter.method)
    quantization = spec.quantization() if spec.quantization is not None else None  # the base it was trained on
    merge = merge and spec.merges
    backbone = load_backbone(cfg.model.name, label_names, quantization=quantization)
    prepare_head(backbone, cfg.head.type)  # linear/mean: the pooling head plain PEFT cannot rebuild
    model = load_adapter(backbone, adapter)
    if merge:
        model = merge_and_unload(model)
    model.to(inference_device())  # this process's GPU when there is one
    model.eval()
    tokenizer = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").is_file() else (cfg.model.tokenizer or cfg.model.name))
    return model, tokenizer, cfg, label_names
