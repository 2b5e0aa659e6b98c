"""Model: load an encoder with a classification head, put a PEFT adapter on it, save and reload.

Target modules are named by role and resolved here per architecture, by looking at the
model's own Linear layers: `attention` (q,k,v), `attention_all` (q,k,v,o), `ffn`,
`all_linear`, or explicit module names. PEFT gets the exact list of full module names, so
what is adapted is never a surprise (PEFT's suffix matching would let `output.dense` hit the
attention output too). The "standard" head is every module that sits between the encoder
and the logits (RoBERTa/MPNet `classifier`, BERT `pooler` + `classifier`, ...), trained fully.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import Config
from .errors import UserError

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
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UserError(
        f"cannot load model {name!r} ({first}); give a hub id that is reachable or a local folder with config.json (model.name)"
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # OSError, ValueError, HTTP errors: all mean "cannot load"
        raise _model_error(name, e) from None


def load_backbone(name: str, label_names: list[str], *, meta: bool = False) -> nn.Module:
    """An AutoModelForSequenceClassification for len(label_names) classes.

    meta=True builds it from config.json alone on the meta device (no weights read or
    downloaded): shapes, names and parameter counts are exact, values do not exist.
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
        return AutoModelForSequenceClassification.from_pretrained(
            name, config=config, dtype=torch.float32, ignore_mismatched_sizes=True
        )
    except Exception as e:
        raise _model_error(name, e) from None


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


def _layer_module_types(linears: dict[str, str]) -> list[str]:
    return sorted({module_type(n) for n in linears}, key=_natural)


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def head_modules(model: nn.Module) -> list[str]:
    """Modules between the encoder and the logits: the model's own head plus a used pooler."""
    base_name = model.base_model_prefix
    names = [n for n, child in model.named_children() if n != base_name and any(True for _ in child.parameters())]
    base = getattr(model, base_name, None)
    if base is not None and getattr(base, "pooler", None) is not None:
        names.insert(0, f"{base_name}.pooler")
    return names


# ---------------------------------------------------------------- building


def peft_config(cfg: Config, model: nn.Module):
    from peft import LoraConfig, TaskType

    a = cfg.adapter
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=resolve_targets(model, a.targets),
        bias=a.bias,
        modules_to_save=head_modules(model),
    )


def build_model(cfg: Config, label_names: list[str], *, meta: bool = False):
    """The budgeted PEFT model: frozen encoder + adapter + trainable head."""
    from peft import get_peft_model

    torch.manual_seed(cfg.train.seed)  # the head's initial weights
    backbone = load_backbone(cfg.model.name, label_names, meta=meta)
    return get_peft_model(backbone, peft_config(cfg, backbone))


# ---------------------------------------------------------------- saving and loading a run


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, folder: Path, tokenizer=None) -> None:
    """PEFT format (adapter_config.json + adapter_model.safetensors, head included)."""
    model.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def load_run(run_dir: str | Path, *, model_name: str | None = None, merge: bool = True):
    """(model, tokenizer, config, label_names) of a finished run, in eval mode.

    merge=True folds the adapter into the base weights (PEFT's merge_and_unload): a plain
    transformers model with no adapter branches, which predicts faster and gives the same
    logits up to float rounding.
    """
    from peft import PeftModel

    from .config import load_config

    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a finished budgetlora run (no adapter/ or config.yaml); give the --out folder of `budgetlora train`")
    cfg = load_config(run_dir / "config.yaml")
    if model_name:
        cfg.model.name = model_name
    label_names = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    backbone = load_backbone(cfg.model.name, label_names)
    model = PeftModel.from_pretrained(backbone, str(adapter))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    tokenizer = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").is_file() else (cfg.model.tokenizer or cfg.model.name))
    return model, tokenizer, cfg, label_names
