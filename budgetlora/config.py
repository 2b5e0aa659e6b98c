"""Typed run configuration: dataclasses, YAML recipes and `--set key=value` overrides.

A recipe is a YAML file with up to eight sections (model, data, adapter, head, train, selftrain,
budget, distill); whatever it leaves out takes the dataclass default below. Every key and value is checked here,
before any model or data is touched (an adapter method's own rules by its entry in
budgetlora/adapters/registry.py), and a wrong one raises a UserError that names the key and what
is allowed.

The dataclass defaults ARE the `default` recipe (there is no default.yaml): roberta-base + LoRA
r=6, alpha 12, dropout 0 on every Linear of the encoder (q,k,v,o and the feed-forward layers)
with a mean-pooling linear head, lr 1e-3, weight decay 0.01, 6% warmup, early stopping after 2
evaluations: 998,404 trainable parameters on roberta-base, the largest rank under 1,000,000
(`budgetlora plan --fill`). Chosen by benchmarks/best_default.py (docs/best_default.md). The
README's configuration table is checked against these defaults by tests/test_config.py.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from .hardware import PRECISIONS
from .adapters.registry import METHODS, method_spec
from .errors import UserError, first_line

TARGET_ROLES = ("attention", "attention_all", "ffn", "all_linear")


def _choice(*allowed: str) -> dict:
    return {"choices": allowed}


@dataclass
class ModelConfig:
    name: str = "roberta-base"  # hub id or local folder
    max_length: int = field(default=256, metadata={"min": 8})
    tokenizer: str | None = None  # defaults to `name`
    # attention kernel for training: auto = on a CPU eager (with train.fast_dropout, measured
    # faster than SDPA there in bf16, equal in fp32), but SDPA in fp32 for rows of 256+ tokens
    # without attention dropout (faster, no L x L weights kept); see hardware.attention. The
    # library's default (SDPA) on a GPU
    attention: str = field(default="auto", metadata=_choice("auto", "sdpa", "eager"))
    # dropout inside the pretrained encoder (embeddings, attention, hidden; not the head's, not
    # the adapter's): null = the model's own config (0.1 for BERT/RoBERTa/MPNet); 0 = none, which
    # saves drawing a mask per layer and step
    encoder_dropout: float | None = field(default=None, metadata={"min": 0, "max": 1})


@dataclass
class DataConfig:
    train: str = "ag_news"  # hub dataset id (optionally "id:split") or a local file
    test: str | None = None  # labelled file or "id:split", evaluated once at the end
    format: str = field(
        default="auto",
        metadata=_choice("auto", "csv", "tsv", "jsonl", "parquet", "ag_news_csv", "pickle", "hub"),
    )
    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = None
    label_names: list[str] | None = None
    val_size: float = field(default=0.1, metadata={"min_exclusive": 0})  # fraction < 1 or count
    max_train_samples: int | None = field(default=None, metadata={"min": 1})
    # cleaning of every text this run reads (train, evaluate, predict): steps and presets of
    # budgetlora/data/clean.py, e.g. [standard] or [standard, stopwords, punctuation]; none by default
    clean: list[str] | None = None
    length_filter: list[float] | None = None  # keep training rows within these token-length percentiles, e.g. [1, 99]
    extra_train: list[str] | None = None  # labelled files appended to the training rows only (augmentation)
    synonym_rate: float = field(default=0.0, metadata={"min": 0, "max": 1})  # WordNet synonyms, at train time
    synonym_copies: int = field(default=1, metadata={"min": 1})  # augmented copies per training row
    synonym_protect: list[str] | None = None  # words never replaced
    # self-training (budgetlora/training/selftrain.py): an unlabelled file (text column only) whose
    # confidently predicted rows join the training rows, with their predicted labels, for selftrain.rounds rounds
    unlabelled: str | None = None


@dataclass
class AdapterConfig:
    # a registered method (budgetlora/adapters/registry.py): the choices are read when a config is checked
    method: str = field(default="lora", metadata={"choices": METHODS})
    r: int = field(default=6, metadata={"min": 1})
    alpha: float = field(default=12.0, metadata={"min_exclusive": 0})
    dropout: float = field(default=0.0, metadata={"min": 0, "max": 0.99})
    # a role (attention, attention_all, ffn, all_linear) or a list of module names
    targets: Union[str, list[str]] = "all_linear"
    bias: str = field(default="none", metadata=_choice("none", "lora_only", "all"))
    layernorm_bias: bool = False  # bitfit: also train the LayerNorm biases (BitFit's every bias term)
    # ---- layer selection, per-module ranks, method knobs (budgetlora/adapters/methods.py)
    layers: list[int] | None = None  # adapt only these encoder layers (0-based, -1 = last); None: all
    top_layers: int | None = field(default=None, metadata={"min": 1})  # adapt only the last k layers
    rank_pattern: dict[str, int] | None = None  # module-name suffix or regex -> rank (PEFT's rank_pattern)
    alpha_pattern: dict[str, float] | None = None  # module-name suffix or regex -> alpha (PEFT's alpha_pattern)
    target_r: int | None = field(default=None, metadata={"min": 1})  # adalora: average rank kept (default r // 2)
    tinit: float = field(default=0.1, metadata={"min": 0})  # adalora: warm-up steps before pruning (< 1: fraction)
    tfinal: float = field(default=0.2, metadata={"min": 0})  # adalora: final steps at fixed ranks (< 1: fraction)
    delta_t: int = field(default=1, metadata={"min": 1})  # adalora: steps between two rank allocations
    orth_reg_weight: float = field(default=0.5, metadata={"min": 0})  # adalora: orthogonal regularisation


HEAD_TYPES = ("standard", "standard_lora", "linear", "mean")


@dataclass
class HeadConfig:
    # standard: the model's own head, trained fully; standard_lora: its hidden Linear(s) frozen +
    # LoRA (adapter.r), output layer trained fully; linear: one Linear on the first token;
    # mean: one Linear on the mask-weighted mean of the tokens (see budgetlora/adapters/model.py)
    type: str = field(default="mean", metadata=_choice(*HEAD_TYPES))
    # random: the output layer as transformers initialises it (seeded); probe: LP-FT, the output
    # layer fitted by logistic regression on the features it receives at init, before step 0
    # (budgetlora/training/probe.py); no parameter added, a resumed run keeps its checkpoint's head
    init: str = field(default="random", metadata=_choice("random", "probe"))


@dataclass
class TrainConfig:
    epochs: float = field(default=3.0, metadata={"min_exclusive": 0})
    max_steps: int | None = field(default=None, metadata={"min": 1})  # overrides epochs
    batch_size: int = field(default=16, metadata={"min": 1})
    eval_batch_size: int = field(default=128, metadata={"min": 1})
    group_by_length: bool = True  # batches of similar-length rows: little padding
    # rows: batch_size rows per batch; tokens: as many batches, each about the same number of tokens
    # (batch_size rows on average; wide batches of short rows, narrow ones of long rows)
    batching: str = field(default="rows", metadata=_choice("rows", "tokens"))
    lr: float = field(default=1e-3, metadata={"min_exclusive": 0})
    weight_decay: float = field(default=0.01, metadata={"min": 0})
    scheduler: str = field(default="linear", metadata=_choice("linear", "cosine", "constant"))
    warmup: float = field(default=0.06, metadata={"min": 0})  # fraction of steps if < 1, else steps
    max_grad_norm: float | None = field(default=1.0, metadata={"min_exclusive": 0})
    # the training loss's targets: 1 - s on the true class, s spread over all classes (validation
    # loss stays plain cross-entropy); 0: none
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "max": 0.99})
    eval_every: int | None = field(default=None, metadata={"min": 1})  # steps; None = each epoch
    early_stopping_patience: int | None = field(default=2, metadata={"min": 1})  # None: off
    metric: str = field(default="val_loss", metadata=_choice("val_loss", "accuracy", "macro_f1"))
    seed: int = 42
    precision: str = field(default="auto", metadata=_choice(*PRECISIONS))
    # on a CPU, dropout masks from numpy's PCG64 instead of torch's serial generator: the same
    # dropout, 4x cheaper to draw (budgetlora/training/fast_dropout.py); GPUs keep torch's
    fast_dropout: bool = True
    # on a CPU, each plain LoRA Linear's base and adapter in one autograd Function that writes its
    # output once (budgetlora/training/fused_lora.py): the same gradients, fewer passes over memory
    fused_lora: bool = True
    progress: bool = True
    # reporting: a tracker for the metrics (Accelerate), a light per-step log, the run report
    tracker: str = field(default="tensorboard", metadata=_choice("tensorboard", "mlflow", "wandb", "none"))
    log_every: int = field(default=10, metadata={"min": 1})  # steps between train_log.csv rows
    report: bool = True  # write report.md / report.html when training ends
    # a zero-training baseline beside the adapter's result in metrics.json and the report: probe =
    # frozen features + logistic regression on the training rows (budgetlora/training/probe.py)
    baseline: str = field(default="none", metadata=_choice("none", "probe"))


SELFTRAIN_BALANCE = ("prior", "equal", "none")


@dataclass
class SelfTrainConfig:
    # read only when data.unlabelled is set (budgetlora/training/selftrain.py)
    rounds: int = field(default=1, metadata={"min": 1})  # rounds of pseudo-labelling after the first training
    threshold: float = field(default=0.9, metadata={"min": 0, "max": 1})  # keep rows whose confidence is above it
    # prior: no class gets more than its training share of the rows kept; equal: every class as many
    # as the rarest class has confident rows; none: every confident row
    balance: str = field(default="prior", metadata=_choice(*SELFTRAIN_BALANCE))
    max_rows: int | None = field(default=None, metadata={"min": 1})  # most pseudo-labelled rows per round (most confident first)
    # correct the teacher's pool predictions to the pool's class mix estimated without labels
    # (label shift, budgetlora/evaluation/label_shift.py) before thresholding; balance prior then caps by that mix
    adjust_prior: bool = False


@dataclass
class BudgetConfig:
    max_trainable: int = field(default=1_000_000, metadata={"min": 1})


@dataclass
class DistillConfig:
    # knowledge distillation (budgetlora/training/distill.py): a finished budgetlora run, or any
    # sequence-classification model folder or hub id, whose soft labels the student learns
    teacher: str | None = None
    temperature: float = field(default=2.0, metadata={"min_exclusive": 0})
    weight: float = field(default=0.5, metadata={"min": 0, "max": 1})  # of the KD term; 1 - weight: cross-entropy


DEFAULT_RECIPE = "default"  # the name of these dataclass defaults as a recipe (no file)


@dataclass
class Config:
    recipe: str = DEFAULT_RECIPE
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- building and checking


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn a YAML value into the annotated type, or raise UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is dict:  # --set adapter.rank_pattern={query: 8}
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping such as {{query: 8}}, got {value!r}")
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, key) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # --set adapter.targets=query,value
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not user input


def _check_field(value: Any, f: dataclasses.Field, key: str) -> None:
    meta = f.metadata
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{key}: {value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise UserError(f"{key}: {value!r} is too small; it must be >= {meta['min']}")
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        raise UserError(f"{key}: {value!r} must be > {meta['min_exclusive']}")
    if "max" in meta and value > meta["max"]:
        raise UserError(f"{key}: {value!r} is too large; it must be <= {meta['max']}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"{prefix or 'config'}: expected a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise UserError(
            f"unknown config key {where}{unknown[0]}; allowed keys{' in ' + prefix if prefix else ''}: "
            f"{', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in values:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, values[name] or {}, key)
        else:
            value = _coerce(values[name], tp, key)
            _check_field(value, f, key)
            kwargs[name] = value
    return cls(**kwargs)


def _check_whole(cfg: Config) -> Config:
    """Cross-field rules that no single field can check."""
    targets = cfg.adapter.targets
    if isinstance(targets, str):
        if targets not in TARGET_ROLES:
            # module names are fine too: "query" or "query,value"
            cfg.adapter.targets = [t.strip() for t in targets.split(",") if t.strip()]
    elif not targets:
        raise UserError(f"adapter.targets: empty; give a role ({', '.join(TARGET_ROLES)}) or module names")
    _check_adapter(cfg.adapter)
    val = cfg.data.val_size
    if val >= 1 and not float(val).is_integer():
        raise UserError(f"data.val_size: {val} is neither a fraction below 1 nor a whole count of rows")
    if cfg.train.warmup >= 1 and not float(cfg.train.warmup).is_integer():
        raise UserError(f"train.warmup: {cfg.train.warmup} is neither a fraction below 1 nor a step count")
    from .data.clean import resolve_steps

    resolve_steps(cfg.data.clean)  # unknown step names are refused here
    bounds = cfg.data.length_filter
    if bounds is not None and (len(bounds) != 2 or not 0 <= bounds[0] < bounds[1] <= 100):
        raise UserError(f"data.length_filter: {bounds} must be two percentiles 0 <= low < high <= 100, e.g. [1, 99]")
    if cfg.data.unlabelled and cfg.distill.teacher:
        raise UserError("data.unlabelled and distill.teacher both set: self-training has no teacher logits for "
                        "pseudo-labelled rows; drop one of them")
    return cfg


def _check_adapter(a: AdapterConfig) -> None:
    """Adapter rules across fields: layer selection, pattern values, and what the method itself reads
    and allows (its registry entry's `check`)."""
    if a.layers is not None and a.top_layers is not None:
        raise UserError("adapter.layers and adapter.top_layers both set; give one of them")
    if a.layers is not None and not a.layers:
        raise UserError("adapter.layers: empty; give layer indices such as [10, 11], or leave it unset for all layers")
    method_spec(a.method).check(a)
    for name in ("rank_pattern", "alpha_pattern"):
        pattern = getattr(a, name)
        if pattern and any(v <= 0 for v in pattern.values()):
            raise UserError(f"adapter.{name}: every value must be > 0, got {pattern}")
    for name in ("tinit", "tfinal"):
        value = getattr(a, name)
        if value >= 1 and not float(value).is_integer():
            raise UserError(f"adapter.{name}: {value} is neither a fraction below 1 nor a step count")


# ---------------------------------------------------------------- recipes and overrides


def recipe_names() -> list[str]:
    """The bundled recipes: `default` (the dataclass defaults) and budgetlora/recipes/*.yaml."""
    folder = resources.files("budgetlora") / "recipes"
    bundled = {p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")}
    return sorted(bundled | {DEFAULT_RECIPE})


def _recipe_text(recipe: str | Path) -> tuple[str, str]:
    """(name, YAML text) of a recipe file or of a bundled recipe other than `default`."""
    path = Path(recipe)
    if str(recipe).endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"recipe file {recipe} does not exist; give a YAML path or one of: {', '.join(recipe_names())}")
        return path.stem, path.read_text(encoding="utf-8")
    res = resources.files("budgetlora") / "recipes" / f"{recipe}.yaml"
    if not res.is_file():
        raise UserError(f"unknown recipe {recipe!r}; choose one of: {', '.join(recipe_names())}, or give a YAML file")
    return str(recipe), res.read_text(encoding="utf-8")


def _read_recipe(recipe: str | Path | None) -> tuple[str, dict]:
    """(name, raw values) of a recipe; `default` (or None) sets nothing: it is the dataclass defaults."""
    if recipe is None or (str(recipe) == DEFAULT_RECIPE and not Path(recipe).is_file()):
        return DEFAULT_RECIPE, {"recipe": DEFAULT_RECIPE}
    name, text = _recipe_text(recipe)
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe {recipe} is not valid YAML ({first_line(e, limit=None)}); fix the file") from None
    if not isinstance(values, dict):
        raise UserError(f"recipe {recipe} must be a YAML mapping of sections (model, data, adapter, ...)")
    values.setdefault("recipe", name)
    return name, values


def apply_override(values: dict, assignment: str) -> None:
    """Apply one `section.key=value` string to a nested dict of raw values."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected key=value, e.g. --set train.lr=3e-4")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    sections = {f.name for f in dataclasses.fields(Config)}
    if parts[0] not in sections:
        raise UserError(f"--set {key}: unknown section {parts[0]!r}; sections: {', '.join(sorted(sections))}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def with_overrides(cfg: Config, overrides: list[str] | tuple = ()) -> Config:
    """`cfg` with `section.key=value` overrides applied and the whole validated again."""
    values = cfg.to_dict()
    for assignment in overrides:
        apply_override(values, assignment)
    return from_dict(values)


def with_data_overrides(cfg: Config, overrides: list[str] | tuple = ()) -> Config:
    """A trained run's config with `data.KEY=VALUE` overrides applied (evaluate, predict); any
    other key is refused, since the trained model's settings cannot change after training."""
    if not overrides:
        return cfg
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        if "=" in assignment and not key.startswith("data."):
            raise UserError(f"--set {key}: only data.* settings can change after training (the trained model's "
                            "settings are fixed); drop it, or train a new run with it")
    return with_overrides(cfg, overrides)


def from_dict(values: dict) -> Config:
    return _check_whole(_build(Config, values, ""))


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a recipe (bundled name or YAML path), apply `key=value` overrides, validate."""
    _, values = _read_recipe(recipe)
    for assignment in overrides:
        apply_override(values, assignment)
    return from_dict(values)
