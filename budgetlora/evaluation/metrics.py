"""Evaluate: logits for tokenised rows, and the metrics a reader can trust.

Metrics come from scikit-learn (accuracy, macro-F1, per-class precision/recall/F1, confusion
matrix); the 95% interval for accuracy is a seeded percentile bootstrap over rows (numpy).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

from ..data import eval_batches
from ..hardware import inference_batch_tokens


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.inference_mode()
def compute_logits(model, token_ids: list[np.ndarray], batch_size: int, pad_id: int, autocast=None,
                   progress: bool = False) -> np.ndarray:
    """(rows, classes) float32 logits in the original row order; batches sorted by length, of at
    most `batch_size` rows and, on a CPU, `hardware.inference_batch_tokens` tokens.

    progress=True shows a bar (rows/s, ETA) when stderr is a terminal, and nothing in logs.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = None
    bar = tqdm(total=len(token_ids), desc="predict", unit="row", leave=False, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    for batch in eval_batches(token_ids, batch_size, pad_id, max_tokens=inference_batch_tokens(device.type)):
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(**batch.model_inputs(device)).logits
        logits = logits.float().cpu().numpy()
        if out is None:
            out = np.empty((len(token_ids), logits.shape[1]), dtype=np.float32)
        out[batch.index] = logits
        bar.update(len(batch.index))
    bar.close()
    if was_training:
        model.train()
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def bootstrap_accuracy_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of a 0/1 vector."""
    rng = np.random.default_rng(seed)
    n = len(correct)
    samples = rng.integers(0, n, size=(n_boot, n))
    means = correct[samples].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def quick_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """What training looks at every evaluation: loss, accuracy, macro-F1."""
    from sklearn.metrics import f1_score

    pred = logits.argmax(axis=1)
    return {
        "loss": cross_entropy(logits, labels),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=np.arange(logits.shape[1]), zero_division=0)),
    }


def full_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str], seed: int = 0) -> dict:
    """Everything a report needs, JSON-ready."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = np.arange(len(label_names))
    pred = logits.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    low, high = bootstrap_accuracy_ci((pred == labels).astype(np.float64), seed=seed)
    result = quick_metrics(logits, labels)
    result.update(
        n=int(len(labels)),
        accuracy_ci95=[low, high],
        per_class={
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        confusion_matrix=confusion_matrix(labels, pred, labels=classes).tolist(),
        label_names=list(label_names),
    )
    return result


def table_logits(model, tokenizer, cfg, table) -> np.ndarray:
    """Logits for every row of a TextTable, with the run's tokenisation settings."""
    from ..data import tokenize

    ids = tokenize(table.texts, tokenizer, cfg.model.max_length)
    return compute_logits(model, ids, cfg.train.eval_batch_size, pad_id_of(tokenizer),
                          progress=cfg.train.progress)


def predictor_logits(predictor, texts: list[str], chunk_rows: int | None = None, progress: bool = True) -> np.ndarray:
    """(rows, classes) logits of a deploy.Predictor for `texts`, tokenised and predicted
    `chunk_rows` at a time, with a bar over rows when stderr is a terminal."""
    from .predict import CHUNK_ROWS, row_bar

    chunk_rows = chunk_rows or CHUNK_ROWS
    bar = row_bar(len(texts), "evaluate", enabled=progress)
    parts = [np.empty((0, len(predictor.label_names)), dtype=np.float32)]
    for start in range(0, len(texts), chunk_rows):
        piece = texts[start:start + chunk_rows]
        parts.append(predictor.logits(predictor.encode(piece)))
        bar.update(len(piece))
    bar.close()
    return np.concatenate(parts)


def evaluate_run(run_dir: str | Path | list, data: str, *, trust_pickle: bool = False, data_overrides: list[str] = (),
                 backend: str | None = None, precision: str = "fp32", chunk_rows: int | None = None,
                 adjust_prior: bool = False) -> dict:
    """Load a finished run or an export folder (`deploy.predictor.load_predictor`, `backend`
    torch / onnx / onnx-int8, None: the folder's best) and compute full metrics on a labelled
    file (or hub split). The file is read whole (metrics need every label); logits are computed
    `chunk_rows` rows at a time.

    `data_overrides`: `data.KEY=VALUE` strings (as `--set`), e.g. another text column.
    `adjust_prior`: score the predictions `budgetlora predict --adjust-prior` would write (the
    file's class mix estimated without its labels, evaluation/label_shift.py); the result's
    `label_shift` holds that mix, the run's training mix and the accuracy without the correction.
    A list of folders: their ensemble (mean class probabilities, deploy/ensemble.py), named in the
    result's `ensemble`."""
    from ..data import encode_labels, read_table
    from ..deploy.predictor import load_predictor
    from .predict import reading_config, run_folders

    predictor = load_predictor(run_dir, backend, precision=precision)
    cfg = reading_config(run_dir, data_overrides)
    table = read_table(data, cfg.data, split="test", trust_pickle=trust_pickle)
    labels = encode_labels(table, predictor.label_names)
    logits = predictor_logits(predictor, table.texts, chunk_rows, progress=cfg.train.progress)
    shift = None
    if adjust_prior:
        from .label_shift import adjust_logits, estimate_target_prior, prior_by_name
        from .predict import source_prior

        source = source_prior(run_dir, predictor.label_names)
        target = estimate_target_prior(logits, source)
        shift = {"training_prior": prior_by_name(source, predictor.label_names),
                 "estimated_prior": prior_by_name(target, predictor.label_names),
                 "accuracy_without_correction": float((logits.argmax(axis=1) == labels).mean())}
        logits = adjust_logits(logits, source, target)
    result = full_metrics(logits, labels, predictor.label_names, seed=cfg.train.seed)
    result["data"] = str(data)
    if len(run_folders(run_dir)) > 1:
        result["ensemble"] = [str(folder) for folder in run_folders(run_dir)]
    if shift:
        result["label_shift"] = shift
    return result

