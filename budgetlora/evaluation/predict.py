"""Predict: class predictions for a file, written as a Kaggle-style `ID,Label` CSV.

The model is a training run or an export folder (`deploy.predictor.load_predictor`: torch, or
onnxruntime for an ONNX export, or `backend=`). The input is streamed: read in chunks of
`chunk_rows` rows (`data.read_table_chunks`), each tokenised, predicted and appended to a
temporary file beside the output, which is renamed to its final name only when complete; memory
does not grow with the file. A progress bar counts rows when stderr is a terminal. Under
`accelerate launch` every process predicts its share of the chunks (`shards`) and process 0
writes the one output, in input order.

IDs come from the file's id column (data.id_column, or a column named id/ID/Id) or, when there
is none, from row order starting at 0. Options add the label name and class probabilities.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from .metrics import softmax

CHUNK_ROWS = 4096  # rows read, tokenised and predicted at a time


def prediction_frame(table, logits: np.ndarray, label_names: list[str], start: int = 0) -> pd.DataFrame:
    """ID, Label, LabelName and one prob_<name> column per class, in the table's row order;
    without an id column the IDs are row numbers counted from `start`."""
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "ID": table.ids if table.ids is not None else np.arange(start, start + len(table)),
            "Label": pred,
            "LabelName": [label_names[i] for i in pred],
        }
    )
    for k, name in enumerate(label_names):
        frame[f"prob_{name}"] = probs[:, k]
    return frame


def output_columns(label_names: list[str], *, probabilities: bool, label_names_column: bool) -> list[str]:
    """The columns a prediction file holds: ID, Label[, LabelName][, prob_<name>...]."""
    columns = ["ID", "Label"]
    if label_names_column:
        columns.append("LabelName")
    if probabilities:
        columns += [f"prob_{name}" for name in label_names]
    return columns


def write_predictions(frame: pd.DataFrame, out: Path, *, probabilities: bool, label_names_column: bool) -> pd.DataFrame:
    """Write the chosen columns of a whole frame atomically (a half-written file never replaces a good one)."""
    label_names = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    columns = output_columns(label_names, probabilities=probabilities, label_names_column=label_names_column)
    files.write_csv(out, frame[columns])
    return frame[columns]


def run_folders(model_dir) -> list:
    """The folders a prediction loads: [the folder], or an ensemble's list of folders."""
    return list(model_dir) if isinstance(model_dir, (list, tuple)) else [model_dir]


def reading_config(model_dir: str | Path | list, data_overrides: list[str] = ()):
    """The Config whose `data` section says how to read files for this model (text/id/label
    columns, cleaning), with `data.KEY=VALUE` overrides. A run: its config.yaml. An export: its
    config.yaml if it holds one, else the manifest's `data` settings and `seed`, else defaults.
    An ensemble (a list of folders): its first member's."""
    from .. import rundir
    from ..config import from_dict, with_data_overrides
    from ..deploy.predictor import EXPORT_MANIFEST, is_export

    path = Path(run_folders(model_dir)[0])
    if not is_export(path) or (path / rundir.CONFIG).is_file():
        cfg = rundir.read_config(path)
    else:
        manifest = files.read_json(path / EXPORT_MANIFEST, "export the run again with --overwrite")
        train = {"seed": manifest["seed"]} if isinstance(manifest.get("seed"), int) else {}
        cfg = from_dict({"data": dict(manifest.get("data") or {}), "train": train})
    return with_data_overrides(cfg, data_overrides)


def row_bar(total: int | None = None, desc: str = "predict", enabled: bool = True):
    """A tqdm bar over rows, shown only when stderr is a terminal (nothing in logs)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def chunk_logits(predictor, chunk, batch_size: int | None = None) -> np.ndarray:
    texts = chunk.table.texts
    return predictor.logits(predictor.encode(texts) if texts else [], batch_size)  # a header-only file: no rows


def chunk_csv(predictor, chunk, columns: list[str], batch_size: int | None = None, logits: np.ndarray | None = None) -> bytes:
    """One chunk's prediction rows as CSV lines (no header), UTF-8 (`logits`: already computed)."""
    logits = chunk_logits(predictor, chunk, batch_size) if logits is None else logits
    frame = prediction_frame(chunk.table, logits, predictor.label_names, start=chunk.start)
    return frame[columns].to_csv(index=False, header=False).encode("utf-8")


def csv_header(columns: list[str]) -> bytes:
    return pd.DataFrame(columns=columns).to_csv(index=False).encode("utf-8")


@dataclass
class PredictionsWritten:
    """What `stream_predictions` did: `rows` predictions in `out`; `main_process`: False on the
    other processes of an `accelerate launch` (process 0 wrote the file)."""

    out: Path
    rows: int
    main_process: bool = True
    target_prior: dict[str, float] | None = None  # adjust_prior: the class mix estimated on the file


def stream_predictions(
    run_dir: str | Path | list,
    data: str,
    out: str | Path,
    *,
    probabilities: bool = False,
    label_names_column: bool = False,
    overwrite: bool = False,
    trust_pickle: bool = False,
    data_overrides: list[str] = (),
    backend: str | None = None,
    precision: str = "fp32",
    chunk_rows: int = CHUNK_ROWS,
    batch_size: int | None = None,
    adjust_prior: bool = False,
) -> PredictionsWritten:
    """Predict every row of `data` chunk by chunk and write `ID,Label[,LabelName][,prob_*]` to
    `out` atomically, in bounded memory; sharded over the processes of `accelerate launch`.

    `run_dir`: a run or export folder, or a list of them: an ensemble, their class probabilities
    averaged (deploy/ensemble.py); `backend`: torch / onnx / onnx-int8 (None: the folder's
    best); `precision`: fp32 / bf16 / auto (torch backend); `data_overrides`: `data.KEY=VALUE` strings (as `--set`), e.g. another text column.
    `adjust_prior`: estimate the file's class mix (no labels read) and correct the predictions from
    the run's training mix to it (evaluation/label_shift.py); one process, two reads of the file,
    the logits (rows x classes) held in memory between them."""
    from ..data import read_table_chunks
    from ..deploy.predictor import load_predictor
    from .shards import current_shard, join_shards, write_shard

    out = files.check_new_file(out, overwrite=overwrite)
    predictor = load_predictor(run_dir, backend, precision=precision)
    cfg = reading_config(run_dir, data_overrides)
    columns = output_columns(predictor.label_names, probabilities=probabilities, label_names_column=label_names_column)
    shard = current_shard()
    if adjust_prior:
        return _predict_adjusted(predictor, run_dir, data, out, cfg, columns, shard, chunk_rows=chunk_rows,
                                 trust_pickle=trust_pickle, batch_size=batch_size)
    chunks = read_table_chunks(data, cfg.data, chunk_rows=chunk_rows, trust_pickle=trust_pickle, keep=shard.owns)
    bar = row_bar(enabled=shard.is_main)
    try:
        pieces = _counted(((c.index, chunk_csv(predictor, c, columns, batch_size), len(c.table)) for c in chunks), bar)
        if shard.count == 1:
            rows = _write_whole(out, csv_header(columns), pieces)
        else:
            rows = join_shards(out, csv_header(columns), write_shard(out, shard, pieces))
    finally:
        bar.close()
    return PredictionsWritten(out, rows, shard.is_main)


def _predict_adjusted(predictor, run_dir, data, out, cfg, columns, shard, *, chunk_rows, trust_pickle, batch_size):
    """stream_predictions with the label-shift correction: logits of every chunk, the file's class
    mix by EM, then the file read again and written with corrected logits."""
    from ..data import read_table_chunks
    from ..errors import UserError
    from .label_shift import adjust_logits, estimate_target_prior, prior_by_name

    if shard.count > 1:
        raise UserError("--adjust-prior estimates the class mix of the whole file in one process; run it without accelerate launch")
    source = source_prior(run_dir, predictor.label_names)
    bar = row_bar(desc="predict (pass 1 of 2)")
    try:
        logits = []
        for chunk in read_table_chunks(data, cfg.data, chunk_rows=chunk_rows, trust_pickle=trust_pickle):
            logits.append(chunk_logits(predictor, chunk, batch_size))
            bar.update(len(chunk.table))
    finally:
        bar.close()
    every = np.concatenate(logits) if logits else np.empty((0, len(source)), dtype=np.float32)
    target = estimate_target_prior(every, source) if len(every) else source
    chunks = read_table_chunks(data, cfg.data, chunk_rows=chunk_rows, trust_pickle=trust_pickle)
    pieces = ((c.index, chunk_csv(predictor, c, columns, logits=adjust_logits(z, source, target)), len(c.table))
              for c, z in zip(chunks, logits))
    rows = _write_whole(out, csv_header(columns), pieces)
    return PredictionsWritten(out, rows, True, prior_by_name(target, predictor.label_names))


def source_prior(model_dir: str | Path | list, label_names: list[str]) -> np.ndarray:
    """The class mix a run trained on (label_shift.run_training_prior); of an ensemble (a list of
    folders), the mean of its members'; a UserError if a folder has none."""
    from ..errors import UserError
    from .label_shift import run_training_prior

    priors = []
    for folder in run_folders(model_dir):
        prior = run_training_prior(folder, label_names)
        if prior is None:
            raise UserError(f"{folder} does not record the class mix it trained on (metrics.json train_label_counts, "
                            "written by runs trained since 2026-12-06); use the run folder, or train it again")
        priors.append(prior)
    return np.mean(priors, axis=0)


def _counted(pieces, bar):
    """The (index, CSV bytes, rows) pieces, moving the bar by their rows."""
    for piece in pieces:
        bar.update(piece[2])
        yield piece


def _write_whole(out: Path, header: bytes, pieces) -> int:
    rows = 0
    with files.atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for _, data, count in pieces:
            f.write(data)
            rows += count
    return rows


def predict_file(run_dir: str | Path | list, data: str, out: str | Path, **options) -> pd.DataFrame:
    """`stream_predictions(run_dir, data, out, **options)` (every option of it: probabilities,
    adjust_prior, backend, ...), then the written file read back as a DataFrame for Python callers;
    this frame, unlike the prediction itself, grows with the file. Under `accelerate launch` only
    process 0 reads it back; the others return no rows."""
    written = stream_predictions(run_dir, data, out, **options)
    if not written.main_process:
        return pd.DataFrame()
    return pd.read_csv(written.out, keep_default_na=False)
