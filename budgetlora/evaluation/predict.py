"""Predict: class predictions for a file, written as a Kaggle-style `ID,Label` CSV.

IDs come from the file's id column (data.id_column, or a column named id/ID/Id) or, when there
is none, from row order starting at 0. Options add the label name and class probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from .metrics import softmax, table_logits


def prediction_frame(table, logits: np.ndarray, label_names: list[str]) -> pd.DataFrame:
    """ID, Label, LabelName and one prob_<name> column per class, in the table's row order."""
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "ID": table.ids if table.ids is not None else np.arange(len(table)),
            "Label": pred,
            "LabelName": [label_names[i] for i in pred],
        }
    )
    for k, name in enumerate(label_names):
        frame[f"prob_{name}"] = probs[:, k]
    return frame


def write_predictions(frame: pd.DataFrame, out: Path, *, probabilities: bool, label_names_column: bool) -> pd.DataFrame:
    """Write the chosen columns atomically (a half-written file never replaces a good one)."""
    columns = ["ID", "Label"]
    if label_names_column:
        columns.append("LabelName")
    if probabilities:
        columns += [c for c in frame.columns if c.startswith("prob_")]
    files.write_csv(out, frame[columns])
    return frame[columns]


def predict_file(
    run_dir: str | Path,
    data: str,
    out: str | Path,
    *,
    probabilities: bool = False,
    label_names_column: bool = False,
    overwrite: bool = False,
    trust_pickle: bool = False,
    data_overrides: list[str] = (),
) -> pd.DataFrame:
    """Predict every row of `data` and write `ID,Label[,LabelName][,prob_*]` to `out`.

    `data_overrides`: `data.KEY=VALUE` strings (as `--set`), e.g. another text column."""
    from ..config import with_data_overrides
    from ..data import read_table
    from ..adapters.model import load_run

    out = files.check_new_file(out, overwrite=overwrite)
    model, tokenizer, cfg, label_names = load_run(run_dir)
    cfg = with_data_overrides(cfg, data_overrides)
    table = read_table(data, cfg.data, split="test", need_labels=False, trust_pickle=trust_pickle)
    frame = prediction_frame(table, table_logits(model, tokenizer, cfg, table), label_names)
    return write_predictions(frame, out, probabilities=probabilities, label_names_column=label_names_column)
