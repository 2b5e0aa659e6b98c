"""An ensemble: several finished runs or exports (seeds, recipes, models) as one predictor whose
class probabilities are the mean of theirs.

Averaging the probabilities of independently trained models is a classic way up a leaderboard;
docs/shift.md measures it on a shifted test set (three seeds against one run, and against one
run given the same compute). `load_ensemble(paths)` gives the same face as `load_predictor`: `encode` then
`logits`, so `budgetlora predict RUN RUN ...`, `evaluate`, the label-shift correction and
`budgetlora serve RUN RUN ...` take an ensemble as they take one run. Its logits are the log of the
mean probabilities, so a softmax of them gives that mean back. Members that read text the same way
(one tokenizer, one max_length: seeds or recipes of one model) share one encoding, and `encode`
gives token ids as a single predictor does, which is what the server needs to bound its batches in
tokens and refuse an over-long text; members that differ each tokenise the texts themselves, so
`encode` hands the texts through, and such an ensemble can predict and evaluate but not be served.

Neither transformers nor PEFT nor scikit-learn combines loaded predictors this way (sklearn's
VotingClassifier wants sklearn estimators it fits itself): written here in a few lines.
"""

from __future__ import annotations

import json
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
        self.one_encoding = all(reads_text_alike(first, member) for member in self.members[1:])
        self.max_length = first.max_length if self.one_encoding else max(m.max_length for m in self.members)
        self.tokenizer = first.tokenizer

    @property
    def pad_id(self) -> int:
        return self.members[0].pad_id

    def encode(self, texts: list[str], truncate: bool = True) -> list:
        """Token ids (members that read text alike; truncate=False raises TextTooLong as a Predictor
        does), or else the texts themselves, which each member encodes in `logits`."""
        if self.one_encoding:
            return self.members[0].encode(texts, truncate)
        return list(texts)

    def logits(self, rows: list, batch_size: int | None = None) -> np.ndarray:
        """log of the members' mean probabilities, (rows, classes) float32; `rows` from `encode`."""
        from ..evaluation.metrics import softmax

        def member_rows(member):
            return rows if self.one_encoding else member.encode(rows)

        mean = sum(softmax(m.logits(member_rows(m), batch_size)) for m in self.members) / len(self.members)
        return np.log(np.maximum(mean, np.finfo(np.float32).tiny)).astype(np.float32)

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self.logits(self.encode(texts), batch_size)

    def describe(self) -> dict:
        """What GET /info shows: the ensemble's labels and limits, and each member's own description."""
        members = [m.describe() for m in self.members]
        models = {d.get("model") for d in members}
        return {"model": models.pop() if len(models) == 1 else "ensemble", "labels": list(self.label_names),
                "max_length": self.max_length, "backend": self.backend, "precision": self.precision,
                "source": f"ensemble of {len(members)}", "ensemble": members}

    def require_one_encoding(self) -> None:
        """Refuse, in one line, to serve members that read text differently (see the module's docstring)."""
        if not self.one_encoding:
            first = self.members[0]
            other = next(m for m in self.members[1:] if not reads_text_alike(first, m))
            names = member_names([first.source, other.source])
            difference = (f"max_length {first.max_length} vs {other.max_length}" if first.max_length != other.max_length
                          else "another tokenizer")
            raise UserError(f"{names[0]} and {names[1]} read text differently ({difference}); a served ensemble needs "
                            "members of one model and max_length (e.g. seeds of one recipe). Serve them apart, or use "
                            "`budgetlora predict` / `evaluate`, which take any ensemble")


def member_names(paths: list) -> list[str]:
    """The members' folder names, or their whole paths where two folder names are alike (three
    quickstarts' runs are all `.../run`)."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def reads_text_alike(a: Predictor, b: Predictor) -> bool:
    """Whether two predictors turn every text into the same token ids: one max_length and one
    tokenizer, compared as the whole serialised tokenizer (vocabulary, normaliser, special tokens)
    where the tokenizer has one; a tokenizer without it is alike only to itself."""
    if a.max_length != b.max_length:
        return False
    if a.tokenizer is b.tokenizer:
        return True
    definitions = [tokenizer_definition(t) for t in (a.tokenizer, b.tokenizer)]
    return None not in definitions and definitions[0] == definitions[1]


def tokenizer_definition(tokenizer) -> dict | None:
    """A fast tokenizer's serialised definition without its truncation and padding, which are
    settings of the last call (transformers sets them on the backend per call), not of the
    tokenizer; None for a tokenizer that has no serialised form."""
    to_str = getattr(getattr(tokenizer, "backend_tokenizer", None), "to_str", None)
    if to_str is None:
        return None
    definition = json.loads(to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return definition


def load_ensemble(paths: list[str | Path], backend: str | None = None, *, precision: str = "fp32",
                  threads: int | None = None) -> Ensemble:
    """An Ensemble of run or export folders (each loaded by `load_predictor`)."""
    from .predictor import load_predictor

    if len({str(Path(p).resolve()) for p in paths}) != len(paths):
        raise UserError("the same folder is named twice; an ensemble's members must be different runs")
    return Ensemble([load_predictor(p, backend, threads=threads, precision=precision) for p in paths])
