"""Data: read text (and labels) from the hub or a local file, map labels, split, tokenise, batch.

Sources: a hub dataset id (`ag_news`, or `ag_news:test` for a split), loaded with `datasets`;
or a local CSV/TSV with a header, JSON lines, Parquet, the original headerless AG News CSV
(`class(1-4),title,description`), or a pickle (only when trusted: unpickling runs code).
Tokenisation goes through `datasets.Dataset.map` with a cache file named by a hash of the
texts and the tokenizer, so a second run reads the token ids back instead of re-tokenising.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .clean import Cleaner
from .config import DataConfig
from .errors import UserError, warn

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


def _read_frame(path: Path, fmt: str, trust_pickle: bool) -> tuple[pd.DataFrame, list[str] | None]:
    if fmt == "pickle" and not trust_pickle:
        raise UserError(
            f"{path} is a pickle, and unpickling runs code; pass --trust-pickle if you trust its source"
        )
    try:
        if fmt == "csv":
            return pd.read_csv(path, encoding="utf-8", keep_default_na=False), None
        if fmt == "tsv":
            return pd.read_csv(path, sep="\t", encoding="utf-8", keep_default_na=False), None
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8"), None
        if fmt == "parquet":
            return pd.read_parquet(path), None
        if fmt == "ag_news_csv":
            frame = pd.read_csv(
                path, header=None, names=["label", "title", "description"], encoding="utf-8",
                keep_default_na=False, dtype={"title": str, "description": str},
            )
            text = (frame["title"].str.strip() + " " + frame["description"].str.strip()).str.strip()
            return pd.DataFrame({"text": text, "label": frame["label"].astype(int) - 1}), list(AG_NEWS_LABELS)
        if fmt == "pickle":
            obj = pd.read_pickle(path)
            if hasattr(obj, "to_pandas"):  # a datasets.Dataset
                obj = obj.to_pandas()
            if isinstance(obj, dict):
                obj = pd.DataFrame(obj)
            if not isinstance(obj, pd.DataFrame):
                raise UserError(f"{path} unpickles to {type(obj).__name__}; expected a table (DataFrame, Dataset or dict of columns)")
            return obj, None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at position {e.start}); re-save it as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        bad_line = _first_bad_json_line(path) if fmt == "jsonl" and isinstance(e, ValueError) else None
        if bad_line is not None:
            raise UserError(f"cannot read {path} as JSON lines: line {bad_line[0]} is not valid JSON ({bad_line[1]}); "
                            "fix that line (one JSON object per line) or --set data.format=FORMAT") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path} as {fmt} ({first}); check the file or --set data.format=FORMAT") from None
    raise UserError(f"unknown data.format {fmt!r}")


def _require_file(path: Path) -> None:
    """A data source must be an existing file; a folder is named as one, with the files inside."""
    if path.is_dir():
        inside = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        hint = f" such as {_shown(inside, limit=3)}" if inside else ""
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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"cannot load dataset {name!r} (split {split!r}) from the Hugging Face hub ({first}); "
            "check the name and the network, or give a local file (CSV/TSV/JSONL/Parquet)"
        ) from None
    return ds.to_pandas(), None, ds.features


def is_local(source: str) -> bool:
    """A path that exists or looks like a data file; anything else ("ag_news", "user/name:split") is a hub id."""
    path = Path(source)
    suffixes = {s.lower() for s in path.suffixes}
    return path.exists() or bool(suffixes & (set(_EXTENSIONS) | {".gz"}))


def read_table(
    source: str,
    cfg: DataConfig,
    *,
    split: str = "train",
    need_labels: bool = True,
    trust_pickle: bool = False,
) -> TextTable:
    """Read one source into texts, raw labels and ids; raise UserError on anything wrong."""
    label_names = None
    if cfg.format == "hub" or (cfg.format == "auto" and not is_local(source)):
        frame, _, features = _read_hub(source, split)
        feature = features.get(cfg.label_column) if features is not None else None
        if feature is not None and hasattr(feature, "names"):
            label_names = list(feature.names)
    else:
        path = Path(source)
        _require_file(path)
        fmt = _format_of(path, cfg.format)
        frame, label_names = _read_frame(path, fmt, trust_pickle)

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
    texts = frame[cfg.text_column]
    bad = [i for i, t in enumerate(texts.tolist()) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise UserError(
            f"{len(bad)} row(s) of {source} have empty or non-text {cfg.text_column!r} (first: row {bad[0]}); "
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
            raise UserError(f"{len(missing)} row(s) of {source} have no label (first: row {missing[0]}); remove or fill them")
    # data.clean: the one place every text of a run (train, evaluate, predict, serve) is cleaned
    cleaned = Cleaner.from_config(cfg).apply(texts.tolist())
    return TextTable(texts=cleaned, labels=labels, ids=ids, label_names=label_names, source=source)


# ---------------------------------------------------------------- labels

_INTEGER_TEXT = re.compile(r"[+-]?\d+")


def _as_int(value) -> int | None:
    """The class number a raw label stands for (3, 3.0, "3"), or None for a name."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    return None


def _label_key(value) -> str:
    """The text a raw label is looked up by among the class names: 3, 3.0 and "3" are all "3"."""
    as_int = _as_int(value)
    return str(as_int) if as_int is not None else str(value)


def _shown(values, limit: int = 8) -> str:
    """A short comma-separated list for a one-line message."""
    values = list(values)
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more


def _classes_have(names: list) -> str:
    """ "class 0 has" or "classes 1, 3 have", to start a one-line message."""
    return f"class {names[0]} has" if len(names) == 1 else f"classes {_shown(names)} have"


def _names_from_integers(numbers: list[int], source: str) -> list[str]:
    """Class names "0".."K-1" for integer labels; refused when some class in 0..max has no rows."""
    if min(numbers) < 0:
        raise UserError(f"negative label {min(numbers)} in {source}; labels must be 0..K-1 or names")
    present = sorted(set(numbers))
    empty = sorted(set(range(present[-1] + 1)) - set(present))
    if empty and len(present) > 1:
        raise UserError(
            f"integer labels of {source} run {present[0]}..{present[-1]} but {_classes_have(empty)} no rows; "
            f"number the classes 0..{len(present) - 1}, "
            f"or --set data.label_names=[{','.join(map(str, present)) if len(present) <= 10 else '...'}] "
            "to use these values as class names"
        )
    return [str(i) for i in range(present[-1] + 1)]


def infer_label_names(table: TextTable, declared: list[str] | None) -> list[str]:
    """The class names of a training table: declared > source's own > inferred from values.

    Inferred: integers (also digit strings, as a CSV reader gives them) name classes 0..K-1 and
    must fill that range; names are sorted; a column mixing names and integers is refused,
    because only declared names say which name integer i stands for.
    """
    if declared:
        return list(declared)
    if table.label_names:
        return list(table.label_names)
    as_ints = [_as_int(v) for v in table.labels]
    if all(v is not None for v in as_ints):
        return _names_from_integers(as_ints, table.source)
    if any(v is not None for v in as_ints):
        names = sorted({str(v) for v, i in zip(table.labels, as_ints) if i is None})
        numbers = sorted({i for i in as_ints if i is not None})
        raise UserError(
            f"the label column of {table.source} mixes class names ({_shown(names, limit=4)}) and integers "
            f"({_shown(numbers, limit=4)}); --set data.label_names=[...] so integer i means the i-th name, "
            "or make the column all names or all integers"
        )
    return sorted({str(v) for v in table.labels})


def _numbers_are_positions(label_names: list[str]) -> bool:
    """Whether an integer label i may mean the i-th class: not when some class name is itself a
    number other than its position (names [1, 2, 3, 4]: the label 1 is the name "1")."""
    return all(_as_int(name) in (None, i) for i, name in enumerate(label_names))


def encode_labels(table: TextTable, label_names: list[str]) -> np.ndarray:
    """Map raw labels to 0..K-1 against `label_names`; unknown ones are an error.

    A label that is one of the names is that name; an integer i (3, 3.0, "3") that is not is the
    i-th name, unless the names are themselves numbers (see `_numbers_are_positions`).
    """
    index = {name: i for i, name in enumerate(label_names)}
    by_position = _numbers_are_positions(label_names)
    out = np.empty(len(table.labels), dtype=np.int64)
    for row, value in enumerate(table.labels):
        key, as_int = _label_key(value), _as_int(value)
        if key in index:
            out[row] = index[key]
        elif by_position and as_int is not None and 0 <= as_int < len(label_names):
            out[row] = as_int
        else:
            shown = as_int if as_int is not None else repr(value)
            numbers = f", or a class number 0..{len(label_names) - 1}" if by_position else ""
            raise UserError(
                f"unknown label {shown} in {table.source} (row {row}); expected one of "
                f"{_shown(label_names, limit=20)}{numbers}"
            )
    return out


def check_training_classes(labels: np.ndarray, label_names: list[str], source: str, log=print) -> None:
    """Refuse training rows of fewer than two classes; say (one line) which classes have no rows."""
    counts = np.bincount(labels, minlength=len(label_names))
    present = [name for name, n in zip(label_names, counts) if n]
    if len(present) < 2:
        raise UserError(
            f"the training rows of {source} hold a single class ({_shown(present)}); a classifier needs "
            "at least two: check the file and --set data.label_column=NAME"
        )
    empty = [name for name, n in zip(label_names, counts) if not n]
    if empty:
        log(f"warning: {_classes_have(empty)} no training rows in {source}; the model cannot learn to predict "
            f"{'it' if len(empty) == 1 else 'them'}")


# ---------------------------------------------------------------- splitting


def split_train_val(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split; val_size is a fraction (< 1) or a row count."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    size = int(val_size) if val_size >= 1 else val_size
    n_val = size if isinstance(size, int) else int(np.ceil(size * n))
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


# ---------------------------------------------------------------- tokenising (cached)


def cache_dir() -> Path:
    root = os.environ.get("BUDGETLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "budgetlora"
    )
    return Path(root) / "tokens"


def _fingerprint(texts: list[str], tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}|".encode())
    h.update(repr(tokenizer("budgetlora fingerprint: Ünïcode 123")["input_ids"]).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def tokenize(texts: list[str], tokenizer, max_length: int, use_cache: bool = True) -> list[np.ndarray]:
    """Token ids per text (truncated, unpadded); cached on disk by content + tokenizer hash.

    It is a cache: an entry that cannot be read back (truncated, corrupt) is deleted and rebuilt,
    and one that cannot be written (disk full, read-only) costs a warning, never the run.
    """
    fingerprint = _fingerprint(texts, tokenizer, max_length)
    if use_cache:
        path = cache_dir() / f"{fingerprint}.arrow"
        existed = path.is_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _map_tokenizer(texts, tokenizer, max_length, fingerprint, path)
        except Exception as e:  # noqa: BLE001 -- arrow, OS and datasets errors all mean "no usable cache"
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
            if existed:
                warn(f"token cache {path} is unreadable ({reason}); deleted, tokenising again")
                path.unlink(missing_ok=True)
                return tokenize(texts, tokenizer, max_length, use_cache)
            warn(f"token cache not written to {path.parent} ({reason}); tokenising in memory")
            path.unlink(missing_ok=True)
    return _map_tokenizer(texts, tokenizer, max_length, fingerprint, None)


def _map_tokenizer(texts: list[str], tokenizer, max_length: int, fingerprint: str, cache_file: Path | None):
    """`datasets.Dataset.map` of the tokenizer, read from / written to `cache_file` when given."""
    import datasets

    def encode(batch):
        return {"input_ids": tokenizer(batch["text"], truncation=True, max_length=max_length)["input_ids"]}

    ds = datasets.Dataset.from_dict({"text": texts})
    # our own fingerprint: without it `datasets` dill-pickles the tokenizer to hash `encode`,
    # which costs seconds per call (measured: 5.7 s of a 28 s tiny run)
    kwargs = dict(batched=True, batch_size=2000, remove_columns=["text"], new_fingerprint=fingerprint)
    if cache_file is not None:
        kwargs.update(cache_file_name=str(cache_file))
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = ds.map(encode, load_from_cache_file=True, **kwargs)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    ids = [np.asarray(row, dtype=np.int64) for row in ds.with_format("numpy")["input_ids"]]
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} rows cached for {len(texts)} texts")
    return ids


# ---------------------------------------------------------------- batching


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


def eval_batches(token_ids: list[np.ndarray], batch_size: int, pad_id: int, labels: np.ndarray | None = None):
    """Batches sorted by length (little padding); each Batch.index says which rows it holds."""
    order = np.argsort([len(t) for t in token_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        yield collate(token_ids, order[start : start + batch_size], pad_id, labels)
