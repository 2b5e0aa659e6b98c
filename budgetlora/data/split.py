"""Split: the seeded, stratified training/validation rows of a run."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

def validation_rows(val_size: float, n: int) -> int:
    """How many of `n` rows data.val_size (a fraction below 1, or a row count) puts in validation."""
    return int(val_size) if val_size >= 1 else int(np.ceil(val_size * n))


def split_train_val(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split; val_size is a fraction (< 1) or a row count."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    size = int(val_size) if val_size >= 1 else val_size
    n_val = validation_rows(val_size, n)
    n_classes = len(np.unique(labels))
    if n_val < 1 or n - n_val < 1:
        raise UserError(f"data.val_size={val_size} leaves no validation or no training rows out of {n}; change it")
    indices = np.arange(n)
    stratify = labels
    counts = np.bincount(labels)
    if n_val < n_classes or (counts[counts > 0] < 2).any():
        stratify = None  # too few rows per class to stratify
    train_idx, val_idx = train_test_split(indices, test_size=size, random_state=seed, stratify=stratify)
    return np.sort(train_idx), np.sort(val_idx)


def train_val_indices(labels: np.ndarray, data_cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact training and validation rows a run uses: the stratified split, then the seeded
    `data.max_train_samples` cap on the training side. Public so that benchmarks and notebooks
    reproduce a run's split instead of re-deriving it."""
    train_idx, val_idx = split_train_val(labels, data_cfg.val_size, seed)
    cap = data_cfg.max_train_samples
    if cap and cap < len(train_idx):
        train_idx = np.sort(np.random.default_rng(seed).permutation(train_idx)[:cap])
    return train_idx, val_idx
