"""Linear probe: frozen encoder features + logistic regression. Zero adapter parameters.

Two uses:

* the baseline (`train.baseline: probe`, `budgetlora probe`, `linear_probe`): the frozen encoder's
  last hidden states pooled as the model was trained to pool them (`detect_pooling`: mean pooling
  for a sentence-transformers folder whose modules.json / 1_Pooling/config.json says so, else the
  first token, [CLS] / <s>, which a transformers classification head reads), and a scikit-learn
  LogisticRegression on the run's training rows, its C chosen by 3-fold cross-validation on those
  rows only (never the validation or test rows). Every run and quickstart shows it next to the
  adapter's result: what fine-tuning bought.
* LP-FT (`head.init: probe`, Kumar et al., ICLR 2022, `init_head`): before step 0, the head's
  output layer is fitted the same way on the features it actually receives from the model at init
  (the input of its last Linear: BERT's pooler output, RoBERTa's dense+tanh of <s>, the pooled
  tokens of the linear/mean heads; the adapter is the identity at init), then adapter and head are
  fine-tuned as usual. No parameter is added; the budget counts what it counted before. With
  both on and a pooling head that pools as the baseline does, the two share one fit
  (`head_init_from_baseline`): one pass over the training rows instead of two.

Features are cached on disk (BUDGETLORA_CACHE/features/KEY.npy), keyed by the model (folder and
weight files' sizes and times, or hub id), the pooling or head, and the token ids (so the texts and
max_length). The fit is deterministic: lbfgs, unshuffled stratified folds, one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError, warn

POOLINGS = ("mean", "first")
# C on standardised features, chosen by 3-fold CV on the training rows: walked from the strongest
# regularisation up, stopping at the first C that scores below the best so far (CV accuracy is
# unimodal in C in practice; a large C costs the most lbfgs iterations and is rarely chosen)
C_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
CV_FOLDS = 3
PROBE_FILE, PROBE_WEIGHTS = "probe.json", "probe_weights.npz"  # `budgetlora probe --out DIR`
BASELINE_WEIGHTS = "baseline_probe.npz"  # a run's baseline (train.baseline=probe), beside metrics.json


# ---------------------------------------------------------------- pooling


def _model_file(model_name: str, filename: str) -> Path | None:
    """A file of a local model folder or of a hub model already in the local cache; None if absent."""
    folder = Path(model_name)
    if folder.is_dir():
        return folder / filename if (folder / filename).is_file() else None
    try:
        from transformers.utils import cached_file

        found = cached_file(model_name, filename, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
    except Exception:  # noqa: BLE001 -- no such repo, offline: fall back to the first token
        return None
    return Path(found) if found else None


def detect_pooling(model_name: str) -> tuple[str, str]:
    """(pooling, why): `mean` or `first`, as the model was trained to pool. A sentence-transformers
    folder says so in modules.json (its Pooling module's config.json: mean tokens or CLS token);
    without one, the first token, which the model's own classification head reads."""
    modules = _model_file(model_name, "modules.json")
    if modules is not None:
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = []
        pooling = next((e for e in entries if str(e.get("type", "")).endswith("models.Pooling")), None)
        if pooling is not None:
            conf = _model_file(model_name, f"{pooling.get('path') or '1_Pooling'}/config.json")
            try:
                settings = json.loads(conf.read_text(encoding="utf-8")) if conf else {}
            except (OSError, ValueError):
                settings = {}
            if settings.get("pooling_mode_cls_token"):
                return "first", "first token ([CLS]): the sentence-transformers Pooling config (pooling_mode_cls_token)"
            if settings.get("pooling_mode_mean_tokens", not settings):
                return "mean", "mean of the tokens: the sentence-transformers Pooling config (pooling_mode_mean_tokens)"
            return "mean", "mean of the tokens (the model's sentence-transformers pooling is neither mean nor CLS)"
    return "first", "first token ([CLS] / <s>): no sentence-transformers pooling config; what a classification head reads"


# ---------------------------------------------------------------- cached features


def feature_cache_dir() -> Path:
    from ..data.tokens import cache_dir

    return cache_dir().parent / "features"


def model_identity(model_name: str) -> str:
    """The model a cache entry belongs to: a local folder's path and its weight files' sizes and
    modification times (a retrained folder is another model), or the hub id."""
    folder = Path(model_name)
    if not folder.is_dir():
        return model_name
    parts = [str(folder.resolve())]
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _key(parts: list[str], token_ids: list[np.ndarray]) -> str:
    h = hashlib.sha256("\x00".join(parts).encode())
    for ids in token_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"\xff" * 8)
    return h.hexdigest()[:24]


def _cached(key: str, compute) -> tuple[np.ndarray, bool]:
    """(features, from_cache): read KEY.npy, else compute and write it (a cache: an unreadable
    entry is recomputed, an unwritable one costs a warning)."""
    path = feature_cache_dir() / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    features = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, features, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        warn(f"feature cache not written to {path.parent} ({e}); kept in memory")
    return features, False


@torch.inference_mode()
@torch.inference_mode()
def _pooled(encoder: nn.Module, token_ids: list[np.ndarray], pad_id: int, pooling: str, batch_size: int) -> np.ndarray:
    from ..data import eval_batches
    from ..hardware import inference_batch_tokens

    device = next(encoder.parameters()).device
    out = np.zeros((len(token_ids), encoder.config.hidden_size), dtype=np.float32)
    for batch in eval_batches(token_ids, batch_size, pad_id, max_tokens=inference_batch_tokens(device.type)):
        inputs = batch.model_inputs(device)
        hidden = encoder(**inputs).last_hidden_state.float()  # pooled in fp32 whatever the weights are
        if pooling == "first":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out[batch.index] = pooled.cpu().numpy()
    return out


class FrozenEncoder:
    """The frozen encoder of `model_name` (loaded on first use) and its pooled, cached features.

    `precision` (auto / fp32 / bf16, as train.precision): auto runs the encoder in bf16 where the
    device computes it natively (hardware.choose), 3-4x faster on such a CPU; features are fp32."""

    def __init__(self, model_name: str, pad_id: int, pooling: str | None = None, batch_size: int = 128,
                 precision: str = "auto"):
        from ..hardware import choose, inference_device

        self.model_name, self.pad_id, self.batch_size = model_name, pad_id, batch_size
        self.precision = choose(precision, inference_device()).value
        detected = detect_pooling(model_name)
        self.pooling, self.pooling_source = (pooling, "given") if pooling else detected
        if self.pooling not in POOLINGS:
            raise UserError(f"pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        self._encoder = None
        self.cache_hits = 0

    def _load(self) -> nn.Module:
        if self._encoder is None:
            from transformers import AutoModel

            from ..adapters.model import _model_error, quiet_transformers
            from ..hardware import inference_device, torch_dtype

            quiet_transformers()
            try:
                encoder = AutoModel.from_pretrained(self.model_name, dtype=torch.float32)
            except Exception as e:  # noqa: BLE001 -- OSError, ValueError, HTTP errors: all mean "cannot load"
                raise _model_error(self.model_name, e) from None
            self._encoder = encoder.to(inference_device(), torch_dtype(self.precision)).eval()
        return self._encoder

    def features(self, token_ids: list[np.ndarray]) -> np.ndarray:
        key = _key(["probe-features-v1", model_identity(self.model_name), self.pooling, self.precision], token_ids)
        features, hit = _cached(key, lambda: _pooled(self._load(), token_ids, self.pad_id, self.pooling,
                                                     self.batch_size))
        self.cache_hits += hit
        return features


def frozen_features(cfg, tokenizer, texts: list[str], pooling: str | None = None):
    """(features, from_cache) of `texts` through the baseline's frozen encoder, as the run's
    baseline computes them (same pooling, batch size, precision: the same feature-cache entry)."""
    from ..data import tokenize
    from ..evaluation.metrics import pad_id_of

    encoder = FrozenEncoder(cfg.model.name, pad_id_of(tokenizer), pooling, cfg.train.eval_batch_size,
                            cfg.train.precision)
    features = encoder.features(tokenize(texts, tokenizer, cfg.model.max_length))
    return features, encoder.cache_hits > 0


# ---------------------------------------------------------------- the logistic regression


@dataclass
class ProbeFit:
    """A fitted linear probe in the raw feature space: logits = features @ coef.T + intercept."""

    coef: np.ndarray  # (classes, features) float32
    intercept: np.ndarray  # (classes,) float32
    C: float
    cv_accuracy: float | None  # mean held-out-fold accuracy of the chosen C (None: too few rows for CV)
    train_accuracy: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return (features @ self.coef.T + self.intercept).astype(np.float32)

    @property
    def parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *, grid=C_GRID) -> ProbeFit:
    """Logistic regression on standardised features, C from `grid` (ascending) by stratified 3-fold
    CV on these rows (accuracy; ties: the smaller C; the walk stops at the first C scoring below the
    best), refitted on all of them; returned in the raw feature space. A class with no row gets a
    logit far below the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    present = np.unique(y)
    if len(present) < 2:
        raise UserError(f"the linear probe needs training rows of at least two classes, got {len(present)}")
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-8] = 1.0
    Z = (X - mean) / scale

    def model(C):
        return LogisticRegression(C=C, max_iter=2000, tol=1e-4)

    folds = min(CV_FOLDS, int(np.bincount(y)[present].min()))
    best_c, best_score = (1.0, None)
    if folds >= 2 and len(grid) > 1:
        cv = StratifiedKFold(n_splits=folds, shuffle=False)
        for C in sorted(grid):
            score = float(cross_val_score(model(C), Z, y, cv=cv, scoring="accuracy").mean())
            if best_score is None or score > best_score + 1e-12:
                best_c, best_score = C, score
            elif score < best_score - 1e-12:
                break
    elif len(grid) == 1:
        best_c = grid[0]
    lr = model(best_c).fit(Z, y)
    w, b = lr.coef_, lr.intercept_
    if len(present) == 2 and w.shape[0] == 1:  # sklearn's binary form: one logit difference
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    coef = np.zeros((num_classes, X.shape[1]))
    intercept = np.full(num_classes, float(b.min()) - 20.0)  # classes without a training row
    coef[present] = w / scale
    intercept[present] = b - (w / scale) @ mean
    fit = ProbeFit(coef.astype(np.float32), intercept.astype(np.float32), float(best_c), best_score, 0.0)
    fit.train_accuracy = float((fit.logits(X.astype(np.float32)).argmax(1) == y).mean())
    return fit


def save_fit(path: Path, fit: ProbeFit, **extra) -> None:
    """The fit as .npz (coef, intercept, C and `extra`), written whole (files.atomic_path)."""
    from .. import files

    with files.atomic_path(path) as target, open(target, "wb") as f:
        np.savez(f, coef=fit.coef, intercept=fit.intercept, C=fit.C, **{k: np.asarray(v) for k, v in extra.items()})


def load_fit(path: str | Path) -> tuple[ProbeFit, dict]:
    """(fit, extras) of a saved probe (probe_weights.npz, baseline_probe.npz)."""
    with np.load(path, allow_pickle=False) as z:
        extras = {k: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files if k not in ("coef", "intercept", "C")}
        return ProbeFit(z["coef"], z["intercept"], float(z["C"]), None, float("nan")), extras


# ---------------------------------------------------------------- the baseline


@dataclass
class FittedBaseline:
    """The baseline's probe fitted on the training rows, before it is measured anywhere."""

    fit: ProbeFit
    encoder: FrozenEncoder
    rows: int
    feature_seconds: float
    seconds: float


def fit_baseline(model_name: str, pad_id: int, num_classes: int, train: tuple, *, batch_size: int = 128,
                 pooling: str | None = None, precision: str = "auto") -> FittedBaseline:
    """The linear probe fitted on `train` = (token ids, labels): frozen features, then fit_probe."""
    started = time.perf_counter()
    encoder = FrozenEncoder(model_name, pad_id, pooling, batch_size, precision)
    x_train = encoder.features(train[0])
    feature_seconds = time.perf_counter() - started
    fit = fit_probe(x_train, train[1], num_classes)
    return FittedBaseline(fit, encoder, len(train[0]), feature_seconds, time.perf_counter() - started)


def baseline(model_name: str, pad_id: int, label_names: list[str], train: tuple, val: tuple, *,
             test: tuple | None = None, seed: int = 0, batch_size: int = 128,
             pooling: str | None = None, precision: str = "auto",
             fitted: FittedBaseline | None = None) -> tuple[dict, ProbeFit]:
    """(metrics, fit) of the linear probe: fitted on `train` = (token ids, labels), or `fitted`
    already (LP-FT shares it), measured on `val` and, when given, `test` (full_metrics each).
    Zero adapter parameters."""
    from ..evaluation.metrics import full_metrics

    started = time.perf_counter()
    if fitted is None:
        fitted = fit_baseline(model_name, pad_id, len(label_names), train, batch_size=batch_size, pooling=pooling,
                              precision=precision)
    encoder, fit = fitted.encoder, fitted.fit
    x_val = encoder.features(val[0])
    x_test = encoder.features(test[0]) if test is not None else None
    result = {
        "method": "linear_probe", "pooling": encoder.pooling, "pooling_source": encoder.pooling_source,
        "precision": encoder.precision,
        "C": fit.C, "cv_accuracy": fit.cv_accuracy, "train_accuracy": fit.train_accuracy,
        "train_rows": fitted.rows, "probe_parameters": fit.parameters, "adapter_parameters": 0,
        "val": full_metrics(fit.logits(x_val), val[1], label_names, seed=seed),
    }
    if x_test is not None:
        result["test"] = full_metrics(fit.logits(x_test), test[1], label_names, seed=seed)
    result.update(feature_seconds=fitted.feature_seconds, features_cached=encoder.cache_hits > 0,
                  seconds=fitted.seconds + time.perf_counter() - started)
    return result, fit


def linear_probe(cfg, out: str | Path | None = None, *, trust_pickle: bool = False, overwrite: bool = False,
                 log=print) -> dict:
    """The linear probe as a method of its own (`budgetlora probe`): the rows a `train` of `cfg`
    would use (same file, cleaning, split by train.seed, length filter, max_length; augmentation
    rows left out), frozen features of cfg.model.name, logistic regression. Returns the metrics
    (val, test when data.test is set); with `out`, writes OUT/probe.json and OUT/probe_weights.npz
    (coef, intercept, pooling: `load_fit`)."""
    from .. import files
    from ..adapters.model import check_max_length, load_tokenizer
    from ..data import check_training_classes, encode_labels, infer_label_names, read_table, tokenize, train_val_indices
    from ..data.clean import length_filter
    from ..evaluation.metrics import pad_id_of

    if out is not None:
        out = Path(out)
        if (out / PROBE_FILE).exists() and not overwrite:
            raise UserError(f"{out / PROBE_FILE} already exists; choose another --out or pass --overwrite")
    check_max_length(cfg.model)
    started = time.time()
    table = read_table(cfg.data.train, cfg.data, split="train", trust_pickle=trust_pickle)
    label_names = infer_label_names(table, cfg.data.label_names)
    labels = encode_labels(table, label_names)
    train_idx, val_idx = train_val_indices(labels, cfg.data, cfg.train.seed)
    check_training_classes(labels[train_idx], label_names, cfg.data.train, log=log)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    texts = table.texts
    if cfg.data.length_filter:
        full = np.array([len(t) for t in tokenize([texts[i] for i in train_idx], tokenizer, 1_000_000)])
        train_idx = train_idx[length_filter(full, cfg.data.length_filter)]
    train_ids = tokenize([texts[i] for i in train_idx], tokenizer, cfg.model.max_length)
    val_ids = tokenize([texts[i] for i in val_idx], tokenizer, cfg.model.max_length)
    test = None
    if cfg.data.test:
        test_table = read_table(cfg.data.test, cfg.data, split="test", trust_pickle=trust_pickle)
        test = (tokenize(test_table.texts, tokenizer, cfg.model.max_length), encode_labels(test_table, label_names))
    torch.manual_seed(cfg.train.seed)
    result, fit = baseline(cfg.model.name, pad_id_of(tokenizer), label_names, (train_ids, labels[train_idx]),
                           (val_ids, labels[val_idx]), test=test, seed=cfg.train.seed,
                           batch_size=cfg.train.eval_batch_size, precision=cfg.train.precision)
    result.update(model=cfg.model.name, recipe=cfg.recipe, max_length=cfg.model.max_length,
                  label_names=label_names, wall_seconds=time.time() - started)
    log(baseline_line(result))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_fit(out / PROBE_WEIGHTS, fit, pooling=result["pooling"])
        files.write_json(out / PROBE_FILE, result)
        log(f"wrote {out / PROBE_FILE} and {out / PROBE_WEIGHTS}")
    return result


def baseline_line(b: dict, adapter: dict | None = None, split: str = "val") -> str:
    """One line: the probe's accuracy (and what fine-tuning bought over it, given the adapter's metrics)."""
    m = b[split]
    low, high = m["accuracy_ci95"]
    line = (f"linear probe (frozen {b['pooling']}-pooled features, C={b['C']:g}, 0 adapter parameters): "
            f"{split} accuracy {m['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) in {b['seconds']:.1f} s")
    if adapter is not None and split in adapter:
        line += f"; fine-tuning bought {100 * (adapter[split]['accuracy'] - m['accuracy']):+.2f} points"
    return line


# ---------------------------------------------------------------- LP-FT: the head's output layer


def output_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The trainable Linear(s) that produce the logits: out_features == number of classes, inside
    the head modules (the trained copy PEFT's modules_to_save holds), no adapter branch."""
    from ..adapters.model import head_modules

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    num_labels = base.config.num_labels
    found = []
    for prefix in head_modules(base):
        for name, module in base.get_submodule(prefix).named_modules():
            if (isinstance(module, nn.Linear) and module.out_features == num_labels and module.weight.requires_grad
                    and "lora_" not in name):
                found.append(((f"{prefix}.{name}" if name else prefix).replace(".modules_to_save.default", ""), module))
    return found


@torch.inference_mode()
def head_features(model: nn.Module, layer: nn.Linear, token_ids: list[np.ndarray], pad_id: int,
                  batch_size: int = 128) -> np.ndarray:
    """(rows, in_features): what `layer` receives for each row, the model in eval mode and fp32."""
    from ..data import eval_batches
    from ..hardware import inference_batch_tokens

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(token_ids), layer.in_features), dtype=np.float32)
    seen = {}

    def grab(module, args):
        seen["x"] = args[0]

    handle = layer.register_forward_pre_hook(grab)
    try:
        for batch in eval_batches(token_ids, batch_size, pad_id, max_tokens=inference_batch_tokens(device.type)):
            model(**batch.model_inputs(device))
            x = seen.pop("x")
            if x.dim() != 2:
                raise RuntimeError(f"the head's output layer receives {tuple(x.shape)}, expected [batch, features]")
            out[batch.index] = x.float().cpu().numpy()
    finally:
        handle.remove()
        if was_training:
            model.train()
    return out


def _weights_digest(model: nn.Module, skip: set[int]) -> str:
    """A digest of every parameter and buffer the features depend on (all but the output layer)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in skip:
            continue
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.dtype != torch.bool else t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def init_head(model: nn.Module, token_ids: list[np.ndarray], labels: np.ndarray, pad_id: int, *,
              model_name: str = "", batch_size: int = 128) -> dict:
    """LP-FT: fit the head's output layer by logistic regression on the features it receives from
    the model as built (frozen encoder, adapter at its identity init, the head's hidden layers as
    initialised), and write the fit into that layer in place. Returns what was done (layer, C,
    cross-validated and training accuracy, rows, seconds, whether the features came from the cache)."""
    started = time.perf_counter()
    layers = output_layers(model)
    if len(layers) != 1:
        raise UserError(f"head.init=probe: expected one trainable output layer in the head, found "
                        f"{[n for n, _ in layers] or 'none'}; use head.init=random")
    name, layer = layers[0]
    skip = {id(p) for p in layer.parameters()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # the features depend on the weights, the modules and how the head pools (not a weight: linear vs mean)
    key = _key(["head-features-v1", model_identity(model_name), name, str(getattr(base, "budgetlora_head", "")),
                repr(model), _weights_digest(model, skip)], token_ids)
    features, hit = _cached(key, lambda: head_features(model, layer, token_ids, pad_id, batch_size))
    fit = fit_probe(features, labels, layer.out_features)
    _write_fit(layer, fit)
    return {"method": "probe", "layer": name, "C": fit.C, "cv_accuracy": fit.cv_accuracy,
            "train_accuracy": fit.train_accuracy, "rows": len(token_ids), "features_cached": bool(hit),
            "seconds": time.perf_counter() - started}


# a pooling head (head.type) and the baseline pooling its output layer's input equals
HEAD_POOLING = {"mean": "mean", "linear": "first"}


def head_init_from_baseline(model: nn.Module, fitted: FittedBaseline) -> dict:
    """LP-FT from the baseline's fit: for a pooling head that pools as the baseline does, the
    output layer's input at init IS the baseline's feature (the frozen encoder's pooled last
    hidden states; every adapter starts at the identity), up to the rounding of the precision the
    features ran in. So one pass over the training rows serves both (train.baseline=probe with
    head.init=probe), instead of two. The caller checks the pooling (HEAD_POOLING)."""
    layers = output_layers(model)
    if len(layers) != 1:
        raise UserError(f"head.init=probe: expected one trainable output layer in the head, found "
                        f"{[n for n, _ in layers] or 'none'}; use head.init=random")
    name, layer = layers[0]
    fit = fitted.fit
    _write_fit(layer, fit)
    return {"method": "probe", "layer": name, "C": fit.C, "cv_accuracy": fit.cv_accuracy,
            "train_accuracy": fit.train_accuracy, "rows": fitted.rows, "features_cached": fitted.encoder.cache_hits > 0,
            "features": f"the baseline's ({fitted.encoder.pooling}-pooled frozen encoder, {fitted.encoder.precision})",
            "seconds": fitted.seconds}


def _write_fit(layer: nn.Linear, fit: ProbeFit) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(fit.coef).to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(fit.intercept).to(layer.bias))
        else:
            warn("head.init=probe: the output layer has no bias; the probe's intercept is dropped")
