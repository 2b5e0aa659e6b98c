"""Labels: class names of a training table, raw labels mapped to 0..K-1, classes checked."""

from __future__ import annotations

import re

import numpy as np

from ..errors import UserError, listed
from .sources import TextTable

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


def _classes_have(names: list) -> str:
    """ "class 0 has" or "classes 1, 3 have", to start a one-line message."""
    return f"class {names[0]} has" if len(names) == 1 else f"classes {listed(names)} have"


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
            f"the label column of {table.source} mixes class names ({listed(names, limit=4)}) and integers "
            f"({listed(numbers, limit=4)}); --set data.label_names=[...] so integer i means the i-th name, "
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
                f"{listed(label_names, limit=20)}{numbers}"
            )
    return out


def check_training_classes(labels: np.ndarray, label_names: list[str], source: str, log=print) -> None:
    """Refuse training rows of fewer than two classes; say (one line) which classes have no rows."""
    counts = np.bincount(labels, minlength=len(label_names))
    present = [name for name, n in zip(label_names, counts) if n]
    if len(present) < 2:
        raise UserError(
            f"the training rows of {source} hold a single class ({listed(present)}); a classifier needs "
            "at least two: check the file and --set data.label_column=NAME"
        )
    empty = [name for name, n in zip(label_names, counts) if not n]
    if empty:
        log(f"warning: {_classes_have(empty)} no training rows in {source}; the model cannot learn to predict "
            f"{'it' if len(empty) == 1 else 'them'}")
