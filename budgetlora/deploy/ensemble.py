"""An ensemble: several finished runs or exports (seeds, recipes, models) as one predictor whose
class probabilities are the mean of theirs.

Averaging the probabilities of independently trained models is a classic way up a leaderboard;
docs/shift.md measures it on a shifted test set (three seeds against one run, and against one
run given the same compute). `load_ensemble(paths)` gives the same face as `load_predictor`: `encode` then
`logits`, so `budgetlora predict RUN RUN ...`, `evaluate` and the label-shift correction take an
ensemble as they take one run. Its logits are the log of the mean probabilities, so a softmax of
them gives that mean back. Each member tokenises the texts itself (members may differ in
tokenizer and max_length), so `encode` hands the texts through.

Neither transformers nor PEFT nor scikit-learn combines loaded predictors this way (sklearn's
VotingClassifier wants sklearn estimators it fits itself): written here in a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .predictor import Predictor


@dataclass
class Ensemble:
    """Members' mean class probabilities; the members' label names, in the same order."""

    members: list[Predictor]

    def __post_init__(self):
        first = self.members[0]
        for member in self.members[1:]:
            if list(member.label_names) != list(first.label_names):
                raise UserError(f"{member.source} predicts {member.label_names}, {first.source} {first.label_names}: "
                                "an ensemble needs the same classes in the same order; ensemble runs of one dataset")
        self.label_names = list(first.label_names)
        self.backend = "ensemble of " + ", ".join(sorted({m.backend for m in self.members}))
        self.precision = ", ".join(sorted({m.precision for m in self.members}))
        self.source = " + ".join(m.source for m in self.members)

    def encode(self, texts: list[str], truncate: bool = True) -> list[str]:
        return list(texts)  # each member encodes with its own tokenizer and max_length

    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """log of the members' mean probabilities, (rows, classes) float32."""
        from ..evaluation.metrics import softmax

        mean = sum(softmax(m.logits(m.encode(texts), batch_size)) for m in self.members) / len(self.members)
        return np.log(np.maximum(mean, np.finfo(np.float32).tiny)).astype(np.float32)

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self.logits(texts, batch_size)


def load_ensemble(paths: list[str | Path], backend: str | None = None, *, precision: str = "fp32",
                  threads: int | None = None) -> Ensemble:
    """An Ensemble of run or export folders (each loaded by `load_predictor`)."""
    from .predictor import load_predictor

    if len({str(Path(p).resolve()) for p in paths}) != len(paths):
        raise UserError("the same folder is named twice; an ensemble's members must be different runs")
    return Ensemble([load_predictor(p, backend, threads=threads, precision=precision) for p in paths])
