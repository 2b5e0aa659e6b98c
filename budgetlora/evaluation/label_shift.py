"""Label shift: estimate the class mix of unlabelled target rows and correct a model's predictions for it.

A classifier's probabilities carry the class mix it was trained on (the source prior). When the
target rows have another mix (AG News: Reuters 38% Business, AP/AFP 4%: docs/shift.md), the
maximum-likelihood estimate of the target mix is the EM of Saerens, Latinne & Decaestecker
(Neural Computation 2002): reweight every row's probabilities by target/source prior, average
them into a new target prior, repeat. The corrected prediction is then
logits + log(target prior / source prior). Written here because neither scikit-learn nor the
other libraries we use have it, and it is a dozen lines of numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import files
from .metrics import softmax


def estimate_target_prior(logits: np.ndarray, source_prior: np.ndarray, *, max_iter: int = 1000,
                          tol: float = 1e-8) -> np.ndarray:
    """EM estimate of the class mix of the rows whose `logits` (rows, classes) are given, for a
    model trained on `source_prior` (classes,). No labels are read."""
    source = _as_prior(source_prior)
    probs = softmax(np.asarray(logits, dtype=np.float64))
    target = source.copy()
    for _ in range(max_iter):
        weighted = probs * (target / source)
        weighted /= weighted.sum(axis=1, keepdims=True)
        updated = weighted.mean(axis=0)
        if np.abs(updated - target).max() < tol:
            return updated
        target = updated
    return target


def adjust_logits(logits: np.ndarray, source_prior: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
    """Logits corrected from the source to the target class mix (their softmax is the Bayes
    posterior under the target mix); a class absent from the target gets a large negative logit."""
    ratio = _as_prior(target_prior, allow_zero=True) / _as_prior(source_prior)
    with np.errstate(divide="ignore"):
        shift = np.maximum(np.log(ratio), -1e4)
    return (np.asarray(logits, dtype=np.float64) + shift).astype(np.float32)


def label_counts_prior(counts: dict[str, int], label_names: list[str]) -> np.ndarray:
    """The prior of `label_names` (in their order) from per-name counts, e.g. a run's train_label_counts."""
    return _as_prior(np.array([counts.get(name, 0) for name in label_names], dtype=np.float64))


def run_training_prior(run_dir: str | Path, label_names: list[str]) -> np.ndarray | None:
    """The class mix a run trained on (its metrics.json `train_label_counts`, written by training);
    None for a folder without it (an export folder, or a run trained before 2026-12-06)."""
    metrics = Path(run_dir) / "metrics.json"
    counts = files.read_json(metrics, "train the run again").get("train_label_counts") if metrics.is_file() else None
    return label_counts_prior(counts, label_names) if counts else None


def prior_by_name(prior: np.ndarray, label_names: list[str]) -> dict[str, float]:
    """A prior as {class name: share}, rounded to 4 places, as reports and JSON show it."""
    return {name: round(float(share), 4) for name, share in zip(label_names, prior)}


def _as_prior(prior, allow_zero: bool = False) -> np.ndarray:
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or prior.sum() <= 0 or (prior < 0).any() or (not allow_zero and (prior == 0).any()):
        raise ValueError(f"a class prior needs non-negative shares with a positive sum{'' if allow_zero else ', none zero'}: {prior}")
    return prior / prior.sum()
