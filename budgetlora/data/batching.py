"""Batching: dynamic padding, the seeded (resumable) order of training rows, evaluation batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    index: np.ndarray  # row numbers in the tokenised list

    def model_inputs(self, device) -> dict:
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}


def collate(token_ids: list[np.ndarray], index: np.ndarray, pad_id: int, labels: np.ndarray | None) -> Batch:
    """Pad one batch to its own longest row (dynamic padding)."""
    rows = [token_ids[i] for i in index]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    y = torch.from_numpy(labels[index]) if labels is not None else None
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask), y, index)


def _sort_mega_batches(order: np.ndarray, lengths: np.ndarray, mega: int) -> None:
    """Sort each run of `mega` rows of `order` by length, longest first, in place."""
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        order[start : start + mega] = chunk[np.argsort(-lengths[chunk], kind="stable")]


def train_order(n: int, seed: int, epoch: int, lengths: np.ndarray | None = None, batch_size: int = 1,
                group: int = 50) -> np.ndarray:
    """The row order of one epoch: a pure function of its arguments, so resume can replay it.

    With `lengths`, rows are grouped by length (as the Trainer's group_by_length does): the
    shuffled rows are cut into mega-batches of `group` batches, each sorted by length, and the
    batches are shuffled again. Batches then hold rows of similar length, so dynamic padding
    pads little, while every epoch still sees a fresh random order.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if lengths is None or batch_size <= 1:
        return order
    _sort_mega_batches(order, lengths, batch_size * group)
    full = n // batch_size
    blocks = order[: full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([blocks.reshape(-1), order[full * batch_size :]])


def epoch_batches(n: int, seed: int, epoch: int, lengths: np.ndarray | None, batch_size: int,
                  by_tokens: bool = False, group: int = 50) -> list[np.ndarray]:
    """The batches (row indices) of one epoch, ceil(n / batch_size) of them, a pure function of
    the arguments (resume replays it).

    by_tokens=False: `train_order` cut into batch_size rows. by_tokens=True: the same number of
    batches, each holding about the same number of tokens instead of the same number of rows.
    Written here because neither transformers nor datasets has a length-bucketed sampler that keeps
    the step count fixed: within each mega-batch (rows shuffled, then sorted by length) the cut
    points split the cumulative token count evenly, so short rows travel in wide batches and long
    rows in narrow ones (batch_size rows on average, at most about the mean batch's tokens plus
    one row), then the batches are shuffled.
    """
    if not by_tokens or lengths is None or batch_size <= 1:
        order = train_order(n, seed, epoch, lengths, batch_size, group)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    mega = batch_size * group
    _sort_mega_batches(order, lengths, mega)
    batches = []
    for start in range(0, n, mega):
        chunk = order[start : start + mega]
        k = -(-len(chunk) // batch_size)
        cumulative = np.cumsum(lengths[chunk])
        cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, k) / k, side="left") + 1
        for j in range(len(cuts)):  # every batch keeps at least one row
            low = cuts[j - 1] + 1 if j else 1
            cuts[j] = min(max(cuts[j], low), len(chunk) - (k - 1 - j))
        batches += np.split(chunk, cuts)
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(token_ids: list[np.ndarray], batch_size: int, pad_id: int, labels: np.ndarray | None = None,
                 max_tokens: int | None = None):
    """Batches sorted by length (little padding); each Batch.index says which rows it holds.
    max_tokens caps rows x padded length of a batch (at least one row per batch)."""
    lengths = np.array([len(t) for t in token_ids])
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        end = min(start + batch_size, len(order))
        if max_tokens is not None:  # sorted ascending: the last row's length is the padded length
            fits = np.flatnonzero(lengths[order[start:end]] * np.arange(1, end - start + 1) <= max_tokens)
            end = start + max(1, int(fits[-1]) + 1 if len(fits) else 1)
        yield collate(token_ids, order[start:end], pad_id, labels)
        start = end
