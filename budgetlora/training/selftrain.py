"""Self-training on an unlabelled target set (`data.unlabelled`, the `selftrain` section).

Round 0 is the run as it would be without it. After each round the best checkpoint of that round
(the teacher) predicts every row of the unlabelled pool; the rows it is confident about (top
probability strictly above `selftrain.threshold`), with the class it predicts, join the TRAINING
rows of the next round, never the validation rows: the validation split, and so checkpoint
selection, stays the labelled rows it was. Each round re-labels the whole pool, and its rows
replace the previous round's. `selftrain.rounds` rounds follow round 0.

Selection (`select`), most confident first (ties by row order), at most `selftrain.max_rows`:

* balance `prior` (default): no class gets more than its share of the labelled training rows
  times the rows kept, so a class the teacher over-predicts on the target cannot swamp the
  others (confirmation bias), while a class it rarely predicts keeps all its confident rows;
* balance `equal`: every class at most as many rows as the class with the fewest confident rows
  (a class with none confident: nothing is added that round);
* balance `none`: every confident row.

With `selftrain.adjust_prior`, the teacher's pool probabilities are first corrected for label
shift: the pool's class mix is estimated without labels (EM, budgetlora/evaluation/label_shift.py)
from the class mix of the rows the teacher trained on, and every row's probabilities are moved
from that mix to the estimated one; balance `prior` then caps each class by the estimated pool
mix. A class the target rarely has then stops drawing confident wrong rows (docs/shift.md).

Pool rows whose text is a labelled row of the run (training or validation) are left out, so a
pseudo label never contradicts, or leaks, a labelled row.

A round continues from the teacher's weights (the previous round's best checkpoint) with a fresh
optimiser state and learning-rate schedule over the enlarged rows (train.epochs or
train.max_steps of them); the step count runs on across rounds, so metrics.jsonl and the
checkpoints stay one sequence. Early stopping and the best checkpoint are per round: the final
model is the best checkpoint of the last round (checkpoint selection on the labelled validation
rows, which are in-distribution, would otherwise keep undoing the adaptation to the target).

Resumable: each round's pseudo labels are written to the run folder before the round trains
(selftrain/round-K.json, then selftrain/round-K.csv: pool row, text, label, confidence; each
written whole or not at all), and the checkpoint carries the round (TrainState.round and
round_start), so a run killed in round K resumes in round K with the same rows, and a kill
between rounds reuses the file instead of predicting again. metrics.json's `selftrain` lists the
rounds: rows added per class and their mean confidence.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from ..data import read_table, tokenize
from ..errors import UserError
from ..evaluation.label_shift import adjust_logits, estimate_target_prior
from ..evaluation.metrics import softmax
from .schedule import scheduler as lr_scheduler

FOLDER = "selftrain"


def select(probs: np.ndarray, threshold: float, balance: str, prior: np.ndarray,
           max_rows: int | None = None) -> np.ndarray:
    """Rows of `probs` (pool rows x classes) to pseudo-label, in row order (see the module docstring)."""
    n, classes = probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    order = np.lexsort((np.arange(n), -confidence))  # most confident first, ties by row
    confident = order[confidence[order] > threshold]
    total = len(confident) if max_rows is None else min(len(confident), max_rows)
    if balance == "none":
        chosen = confident[:total]
    else:
        counts = np.bincount(predicted[confident], minlength=classes)
        if balance == "equal":
            caps = np.full(classes, min(int(counts.min()), total // classes))
        else:  # prior
            caps = np.floor(np.asarray(prior, dtype=float) * total + 1e-9).astype(int)
        taken, chosen = np.zeros(classes, dtype=int), []
        for row in confident:
            c = predicted[row]
            if taken[c] < caps[c]:
                taken[c] += 1
                chosen.append(row)
        chosen = np.array(chosen, dtype=np.int64)
    return np.sort(chosen)


class SelfTraining:
    """The rounds of one run (`attach` returns None without data.unlabelled)."""

    @classmethod
    def attach(cls, recipe) -> "SelfTraining | None":
        """Read the pool (a bad file is refused before anything is written); on resume in round K,
        its pseudo-labelled rows join the training rows now, before the steps are counted."""
        if not recipe.cfg.data.unlabelled:
            return None
        self = cls(recipe)
        saved_round = int((recipe.saved or {}).get("round", 0))
        if saved_round:
            self._use(*self._read_round(saved_round)[:2])
        return self

    def __init__(self, recipe):
        self.recipe = recipe
        cfg, data = recipe.cfg, recipe.data
        self.st = cfg.selftrain
        path = cfg.data.unlabelled
        table = read_table(path, dataclasses.replace(cfg.data, id_column=None), split="test", need_labels=False,
                           trust_pickle=recipe.trust_pickle)
        labelled = set(data.val_texts) | set(recipe.teacher_texts)
        self.pool_rows = np.array([i for i, t in enumerate(table.texts) if t not in labelled], dtype=np.int64)
        self.all_texts = table.texts
        if len(self.pool_rows) < len(table):
            recipe.log(f"{path}: {len(table) - len(self.pool_rows)} unlabelled row(s) equal to labelled rows left out")
        if not len(self.pool_rows):
            raise UserError(f"data.unlabelled {path}: no rows to pseudo-label (every row is also a labelled row)")
        with recipe.accelerator.main_process_first():
            self.pool_ids = tokenize([table.texts[i] for i in self.pool_rows], data.tokenizer, cfg.model.max_length)
        # the labelled rows the run starts from (augmentation included); a round appends to these
        self.base = (list(data.train_ids), data.y_train.copy(), data.extra_rows)
        labelled_rows = len(data.y_train) - data.extra_rows
        self.prior = np.bincount(data.y_train[:labelled_rows], minlength=len(data.label_names)) / max(labelled_rows, 1)
        self.folder = recipe.out / FOLDER

    # ---------------------------------------------------------------- rounds

    def run_rounds(self) -> None:
        """Rounds state.round + 1 .. selftrain.rounds, each after the previous one's training."""
        recipe = self.recipe
        for k in range(recipe.state.round + 1, self.st.rounds + 1):
            self._next_round(k)
            recipe.train()

    def _next_round(self, k: int) -> None:
        recipe, state = self.recipe, self.recipe.state
        recipe.model.load_state_dict(state.best_state, strict=False)  # the teacher, and the start of round k
        rows, labels, _ = self._read_round(k) if (self.folder / f"round-{k}.csv").is_file() else self._predict(k)
        self._use(rows, labels)
        state.round, state.round_start = k, state.step
        state.best_value, state.best_step, state.bad_evals, state.stopped_early = None, None, 0, False
        recipe.set_steps(state.step)
        optimizer = getattr(recipe.optimizer, "optimizer", recipe.optimizer)  # under Accelerate's wrapper
        optimizer.state.clear()  # fresh AdamW moments and a fresh schedule over the round's steps
        recipe.scheduler = lr_scheduler(recipe.cfg, optimizer, recipe.total_steps - recipe.round_start)

    def _predict(self, k: int):
        """The teacher's pseudo labels for round k, selected and written (json, then csv)."""
        recipe, data = self.recipe, self.recipe.data
        logits, caps_prior, estimated = recipe.logits(self.pool_ids), self.prior, None
        if self.st.adjust_prior:
            classes = len(data.label_names)
            # the mix of the rows the teacher trained on, add-one smoothed: EM needs every class above zero
            teacher_prior = (np.bincount(data.y_train, minlength=classes) + 1) / (len(data.y_train) + classes)
            estimated = estimate_target_prior(logits, teacher_prior)
            logits, caps_prior = adjust_logits(logits, teacher_prior, estimated), estimated
        probs = softmax(logits)
        chosen = select(probs, self.st.threshold, self.st.balance, caps_prior, self.st.max_rows)
        labels, confidence = probs[chosen].argmax(axis=1), probs[chosen].max(axis=1)
        rows = self.pool_rows[chosen]
        y_val = data.y_val
        record = {"round": k, "teacher_step": recipe.state.best_step,
                  "teacher_val_accuracy": float((recipe.state.best_val_logits.argmax(axis=1) == y_val).mean())
                  if recipe.state.best_val_logits is not None and len(y_val) else None,
                  "pool_rows": int(len(self.pool_rows)), "confident_rows": int((probs.max(axis=1) > self.st.threshold).sum()),
                  "threshold": self.st.threshold, "balance": self.st.balance}
        if estimated is not None:
            record["estimated_pool_prior"] = {n: round(float(p), 4) for n, p in zip(data.label_names, estimated)}
        if recipe.main:
            self.folder.mkdir(exist_ok=True)
            files.write_json(self.folder / f"round-{k}.json", record)
            files.write_csv(self.folder / f"round-{k}.csv", pd.DataFrame({
                "row": rows, "text": [self.all_texts[i] for i in rows],
                "label": [data.label_names[c] for c in labels], "confidence": confidence}))
        self._log(k, record, labels, confidence)
        return rows, labels, confidence

    def _read_round(self, k: int):
        """Round k's pseudo labels as written (pool rows, class numbers, confidence)."""
        path = self.folder / f"round-{k}.csv"
        fix = "restart the run with --overwrite"
        try:
            frame = pd.read_csv(path, dtype={"text": str, "label": str}, keep_default_na=False)
            rows = frame["row"].to_numpy(dtype=np.int64)
            index = {name: i for i, name in enumerate(self.recipe.data.label_names)}
            labels = np.array([index[name] for name in frame["label"]], dtype=np.int64)
            confidence = frame["confidence"].to_numpy(dtype=float)
        except FileNotFoundError:
            raise UserError(f"{path} is missing: the run's round {k} cannot be resumed; {fix}") from None
        except (KeyError, ValueError, pd.errors.ParserError) as e:
            raise files.corrupt(path, e, fix) from None
        if len(rows) and (rows.max() >= len(self.all_texts) or rows.min() < 0
                          or any(self.all_texts[r] != t for r, t in zip(rows, frame["text"]))):
            raise UserError(f"{path} does not match data.unlabelled {self.recipe.cfg.data.unlabelled} (the file "
                            f"changed since round {k} began); {fix}")
        return rows, labels, confidence

    def _use(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """The training rows of a round: the labelled ones, then the pseudo-labelled ones."""
        data, (base_ids, base_y, _) = self.recipe.data, self.base
        position = {r: i for i, r in enumerate(self.pool_rows)}
        data.train_ids = base_ids + [self.pool_ids[position[r]] for r in rows]
        data.y_train = np.concatenate([base_y, labels]).astype(np.int64)
        if data.lengths is not None:
            data.lengths = np.array([len(t) for t in data.train_ids])

    def _log(self, k: int, record: dict, labels: np.ndarray, confidence: np.ndarray) -> None:
        names = self.recipe.data.label_names
        per_class = ", ".join(f"{name} {int((labels == c).sum())}"
                              + (f" ({confidence[labels == c].mean():.3f})" if (labels == c).any() else "")
                              for c, name in enumerate(names))
        self.recipe.log(f"self-training round {k}: {len(labels)} of {record['pool_rows']} unlabelled rows join "
                        f"training ({record['confident_rows']} with confidence > {record['threshold']:g}, balance "
                        f"{record['balance']}); per class (mean confidence): {per_class}")
        if "estimated_pool_prior" in record:
            mix = ", ".join(f"{name} {share:.1%}" for name, share in record["estimated_pool_prior"].items())
            self.recipe.log(f"self-training round {k}: class mix of the unlabelled rows estimated (label shift): {mix}")
        if not len(labels):
            self.recipe.log(f"self-training round {k}: no confident rows; it trains on the labelled rows only")

    # ---------------------------------------------------------------- metrics.json

    def summary(self) -> list[dict]:
        """One record per round: rows added per class and their mean confidence (from the files)."""
        names, out = self.recipe.data.label_names, []
        for k in range(1, self.recipe.state.round + 1):
            _, labels, confidence = self._read_round(k)
            try:
                record = json.loads((self.folder / f"round-{k}.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = {"round": k}
            record.update({
                "added": int(len(labels)),
                "added_per_class": {n: int((labels == c).sum()) for c, n in enumerate(names)},
                "mean_confidence": float(confidence.mean()) if len(labels) else None,
                "mean_confidence_per_class": {n: float(confidence[labels == c].mean()) if (labels == c).any() else None
                                              for c, n in enumerate(names)}})
            out.append(record)
        return out
