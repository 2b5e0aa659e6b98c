"""Sources: read text (and labels) from the hub or a local file into a TextTable.

A hub dataset id (`ag_news`, or `ag_news:test` for a split), loaded with `datasets`; or a local
CSV/TSV with a header, JSON lines, Parquet, the original headerless AG News CSV
(`class(1-4),title,description`), or a pickle (only when trusted: unpickling runs code).

`read_table` reads a source whole; `read_table_chunks` reads it in consecutive chunks (what
`predict` streams). Both check and clean rows through `table_from_frame`, the one place that
knows the text/label/id columns.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import UserError, first_line, listed
from .clean import Cleaner

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".pkl": "pickle",
    ".pickle": "pickle",
}


@dataclass
class TextTable:
    """Rows read from one source, before labels become integers."""

    texts: list[str]
    labels: list | None  # raw values: ints or names
    ids: list | None
    label_names: list[str] | None  # names the source itself declares (hub ClassLabel, AG News)
    source: str

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------- reading


def _format_of(path: Path, declared: str) -> str:
    if declared not in ("auto", "hub"):
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zip", ".xz"):
        suffixes = suffixes[:-1]
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserError(
            f"unknown file format for {path}; name it .csv/.tsv/.jsonl/.parquet or --set "
            "data.format=csv|tsv|jsonl|parquet|ag_news_csv|pickle"
        )
    if fmt == "csv" and _looks_like_ag_news_csv(path):
        return "ag_news_csv"
    return fmt


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8")


def _looks_like_ag_news_csv(path: Path) -> bool:
    """The original AG News CSV has no header: "3","title","description"."""
    try:
        with _open_text(path) as f:
            rows = [row for _, row in zip(range(5), csv.reader(f))]
    except (UnicodeDecodeError, OSError, csv.Error):
        return False
    return bool(rows) and all(len(r) == 3 and r[0].strip() in ("1", "2", "3", "4") for r in rows)


def _csv_options(fmt: str) -> dict:
    """pandas.read_csv arguments of the CSV-like formats: one place, for whole and chunked reads."""
    if fmt == "ag_news_csv":
        return dict(header=None, names=["label", "title", "description"], encoding="utf-8",
                    keep_default_na=False, dtype={"title": str, "description": str})
    return dict(sep="\t" if fmt == "tsv" else ",", encoding="utf-8", keep_default_na=False)


def _ag_news_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`class(1-4),title,description` rows as text ("title description") and label 0..3."""
    text = (frame["title"].str.strip() + " " + frame["description"].str.strip()).str.strip()
    return pd.DataFrame({"text": text, "label": frame["label"].astype(int) - 1})


def _refuse_untrusted_pickle(path: Path, fmt: str, trust_pickle: bool) -> None:
    if fmt == "pickle" and not trust_pickle:
        raise UserError(
            f"{path} is a pickle, and unpickling runs code; pass --trust-pickle if you trust its source"
        )


@contextlib.contextmanager
def _reading_errors(path: Path, fmt: str):
    """Turn what a reader raises on a bad file (encoding, syntax, truncation) into one UserError."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at position {e.start}); re-save it as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        bad_line = _first_bad_json_line(path) if fmt == "jsonl" and isinstance(e, ValueError) else None
        if bad_line is not None:
            raise UserError(f"cannot read {path} as JSON lines: line {bad_line[0]} is not valid JSON ({bad_line[1]}); "
                            "fix that line (one JSON object per line) or --set data.format=FORMAT") from None
        raise UserError(f"cannot read {path} as {fmt} ({first_line(e, limit=None)}); check the file or --set data.format=FORMAT") from None


def _read_pickle(path: Path) -> pd.DataFrame:
    obj = pd.read_pickle(path)
    if hasattr(obj, "to_pandas"):  # a datasets.Dataset
        obj = obj.to_pandas()
    if isinstance(obj, dict):
        obj = pd.DataFrame(obj)
    if not isinstance(obj, pd.DataFrame):
        raise UserError(f"{path} unpickles to {type(obj).__name__}; expected a table (DataFrame, Dataset or dict of columns)")
    return obj


def _read_frame(path: Path, fmt: str, trust_pickle: bool) -> tuple[pd.DataFrame, list[str] | None]:
    _refuse_untrusted_pickle(path, fmt, trust_pickle)
    with _reading_errors(path, fmt):
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, **_csv_options(fmt)), None
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8"), None
        if fmt == "parquet":
            return pd.read_parquet(path), None
        if fmt == "ag_news_csv":
            return _ag_news_frame(pd.read_csv(path, **_csv_options(fmt))), list(AG_NEWS_LABELS)
        if fmt == "pickle":
            return _read_pickle(path), None
    raise UserError(f"unknown data.format {fmt!r}")


def _slices(frame: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    """A frame in consecutive pieces of `rows` rows (at least one piece, so an empty frame is still checked)."""
    for start in range(0, max(len(frame), 1), rows):
        yield frame.iloc[start:start + rows]


def _parquet_batches(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if parquet.metadata.num_rows == 0:
        yield parquet.schema_arrow.empty_table().to_pandas()
    for batch in parquet.iter_batches(batch_size=rows):
        yield batch.to_pandas()


def _frame_chunks(path: Path, fmt: str, rows: int, trust_pickle: bool) -> Iterator[tuple[pd.DataFrame, list[str] | None]]:
    """(frame, declared label names) pieces of a local file, each read only when asked for.

    CSV/TSV/AG News CSV: pandas chunks; JSON lines: pandas' line reader; Parquet: pyarrow record
    batches (one row group at a time). A pickle cannot be read in pieces: it is loaded whole."""
    if fmt == "pickle":
        frame, names = _read_frame(path, fmt, trust_pickle)
        yield from ((piece, names) for piece in _slices(frame, rows))
        return
    with _reading_errors(path, fmt):
        if fmt in ("csv", "tsv", "ag_news_csv"):
            names = list(AG_NEWS_LABELS) if fmt == "ag_news_csv" else None
            with pd.read_csv(path, chunksize=rows, **_csv_options(fmt)) as reader:
                for piece in reader:
                    yield (_ag_news_frame(piece) if names else piece), names
        elif fmt == "jsonl":
            with pd.read_json(path, lines=True, encoding="utf-8", chunksize=rows) as reader:
                empty = True
                for piece in reader:
                    empty = False
                    yield piece, None
                if empty:  # an empty file: the whole-file reader names the problem
                    yield _read_frame(path, fmt, trust_pickle)
        elif fmt == "parquet":
            yield from ((piece, None) for piece in _parquet_batches(path, rows))
        else:
            raise UserError(f"unknown data.format {fmt!r}")


def _require_file(path: Path) -> None:
    """A data source must be an existing file; a folder is named as one, with the files inside."""
    if path.is_dir():
        inside = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        hint = f" such as {listed(inside, limit=3)}" if inside else ""
        raise UserError(f"data file {path} is a directory; give the path of a data file inside it{hint}")
    if not path.is_file():
        raise UserError(f"data file {path} does not exist; check the path (data.train / --data)")


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, JSON error) of the first line of a JSON-lines file that does not parse."""
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                return number, e.msg
    return None


def _split_hub_id(source: str, default_split: str) -> tuple[str, str]:
    if ":" in source:
        name, split = source.rsplit(":", 1)
        return name, split
    return source, default_split


def _read_hub(source: str, split: str) -> tuple[pd.DataFrame, list[str] | None, "object"]:
    import datasets

    name, split = _split_hub_id(source, split)
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, missing dataset, missing split: all user-facing
        raise UserError(
            f"cannot load dataset {name!r} (split {split!r}) from the Hugging Face hub ({first_line(e)}); "
            "check the name and the network, or give a local file (CSV/TSV/JSONL/Parquet)"
        ) from None
    return ds.to_pandas(), None, ds.features


def is_local(source: str) -> bool:
    """A path that exists or looks like a data file; anything else ("ag_news", "user/name:split") is a hub id."""
    path = Path(source)
    suffixes = {s.lower() for s in path.suffixes}
    return path.exists() or bool(suffixes & (set(_EXTENSIONS) | {".gz"}))


def _is_hub(source: str, cfg: DataConfig) -> bool:
    return cfg.format == "hub" or (cfg.format == "auto" and not is_local(source))


def _hub_frame(source: str, cfg: DataConfig, split: str) -> tuple[pd.DataFrame, list[str] | None]:
    """A hub split as a frame, with the class names its label feature declares (ClassLabel)."""
    frame, _, features = _read_hub(source, split)
    feature = features.get(cfg.label_column) if features is not None else None
    return frame, (list(feature.names) if feature is not None and hasattr(feature, "names") else None)


def read_table(
    source: str,
    cfg: DataConfig,
    *,
    split: str = "train",
    need_labels: bool = True,
    trust_pickle: bool = False,
) -> TextTable:
    """Read one source into texts, raw labels and ids; raise UserError on anything wrong."""
    if _is_hub(source, cfg):
        frame, label_names = _hub_frame(source, cfg, split)
    else:
        path = Path(source)
        _require_file(path)
        frame, label_names = _read_frame(path, _format_of(path, cfg.format), trust_pickle)
    return table_from_frame(frame, cfg, source, need_labels=need_labels, label_names=label_names)


@dataclass
class TableChunk:
    """Consecutive rows of a source: the `index`-th chunk, whose first row is row `start`."""

    index: int
    start: int
    table: TextTable


def read_table_chunks(
    source: str,
    cfg: DataConfig,
    *,
    chunk_rows: int,
    split: str = "test",
    need_labels: bool = False,
    trust_pickle: bool = False,
    keep=None,
) -> Iterator[TableChunk]:
    """Read a source as consecutive TableChunks of at most `chunk_rows` rows, one at a time, so
    memory does not grow with the file: CSV/TSV in pandas chunks, JSON lines line by line,
    Parquet by row groups (pyarrow batches). A pickle or a hub dataset cannot be streamed: it is
    loaded whole and sliced.

    Every chunk is checked, cleaned and given ids as `read_table` does (row numbers in messages
    count from the start of the source); an empty source gives one empty chunk. `keep(index)`:
    chunks it refuses are parsed (to keep the row count) but neither checked nor cleaned, for a
    process that predicts only its shard. Column types are inferred per chunk, as pandas does."""
    if chunk_rows < 1:
        raise UserError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if _is_hub(source, cfg):
        frame, names = _hub_frame(source, cfg, split)
        pieces = ((piece, names) for piece in _slices(frame, chunk_rows))
    else:
        path = Path(source)
        _require_file(path)
        pieces = _frame_chunks(path, _format_of(path, cfg.format), chunk_rows, trust_pickle)
    cleaner = Cleaner.from_config(cfg)
    start = 0
    for index, (frame, names) in enumerate(pieces):
        if keep is None or keep(index):
            table = table_from_frame(frame, cfg, source, need_labels=need_labels, label_names=names,
                                     first_row=start, cleaner=cleaner)
            yield TableChunk(index, start, table)
        start += len(frame)


def table_from_frame(
    frame: pd.DataFrame,
    cfg: DataConfig,
    source: str,
    *,
    need_labels: bool,
    label_names: list[str] | None = None,
    first_row: int = 0,
    cleaner: Cleaner | None = None,
) -> TextTable:
    """Check a frame's columns and rows against `cfg` and make it a TextTable of cleaned texts;
    `first_row`: the row number of its first row in the source (for messages)."""
    columns = [str(c) for c in frame.columns]
    if cfg.text_column not in frame.columns:
        raise UserError(
            f"text column {cfg.text_column!r} not in {source} (columns: {', '.join(columns)}); "
            "--set data.text_column=NAME"
        )
    labels = None
    if cfg.label_column in frame.columns:
        labels = frame[cfg.label_column].tolist()
    elif need_labels:
        raise UserError(
            f"label column {cfg.label_column!r} not in {source} (columns: {', '.join(columns)}); "
            "--set data.label_column=NAME"
        )
    texts = frame[cfg.text_column].tolist()
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise UserError(
            f"{len(bad)} row(s) of {source} have empty or non-text {cfg.text_column!r} (first: row {first_row + bad[0]}); "
            "remove or fill them"
        )
    ids = None
    id_column = cfg.id_column or next((c for c in ("id", "ID", "Id") if c in frame.columns), None)
    if id_column is not None:
        if id_column not in frame.columns:
            raise UserError(f"id column {id_column!r} not in {source} (columns: {', '.join(columns)}); --set data.id_column=NAME")
        ids = frame[id_column].tolist()
    if labels is not None and need_labels:
        missing = [i for i, v in enumerate(labels) if v is None or (isinstance(v, float) and np.isnan(v)) or v == ""]
        if missing:
            raise UserError(f"{len(missing)} row(s) of {source} have no label (first: row {first_row + missing[0]}); "
                            "remove or fill them")
    # data.clean: the one place every text of a run (train, evaluate, predict, serve) is cleaned
    cleaned = (cleaner or Cleaner.from_config(cfg)).apply(texts)
    return TextTable(texts=cleaned, labels=labels, ids=ids, label_names=label_names, source=source)
