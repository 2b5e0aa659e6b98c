"""Distill: a teacher's logits for the training rows (computed once, cached) and the distillation loss.

The teacher is a finished budgetlora run (its adapter, head, tokenizer and cleaning are used),
or any sequence-classification model: a local folder (a fully fine-tuned model) or a hub id.
Its classes must be the student's (in any order: columns are matched by name) or, for a model
with generic names (LABEL_0, ...), as many. The logits are cached on disk under
`<BUDGETLORA_CACHE>/teacher/`, keyed by the teacher (its weights' identity) and the texts, so a
second run with the same teacher and data does not run the teacher again.

Loss per row (Hinton et al., 2015): weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - weight) * cross-entropy(student, label).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import files
from ..data import cache_dir, tokenize
from ..errors import UserError, first_line, warn


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "adapter" / "adapter_config.json").is_file()


def teacher_identity(teacher: str) -> str:
    """What changes when the teacher does: a run's adapter bytes; a folder's file sizes and times; a hub id."""
    path = Path(teacher)
    h = hashlib.sha256()
    if _is_run(path):
        for name in ("config.yaml", "labels.json", "adapter/adapter_model.safetensors", "adapter/adapter_model.bin"):
            if (path / name).is_file():
                h.update(name.encode() + (path / name).read_bytes())
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                stat = f.stat()
                h.update(f"{f.relative_to(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    else:
        h.update(teacher.encode())
    return h.hexdigest()


def load_teacher(teacher: str, max_length: int):
    """(model, tokenizer, cleaner, max_length, class names) of a run or a classifier folder / hub id."""
    from ..data.clean import Cleaner
    from ..adapters.model import load_run

    path = Path(teacher)
    if _is_run(path):
        model, tokenizer, cfg, names = load_run(path)
        return model, tokenizer, Cleaner.from_config(cfg.data), cfg.model.max_length, names
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(teacher)
        tokenizer = AutoTokenizer.from_pretrained(teacher)
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load teacher {teacher!r} ({first_line(e)}); give a budgetlora run directory, "
            "a sequence-classification model folder or a hub id (distill.teacher)"
        ) from None
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, tokenizer, Cleaner(), max_length, names


def teacher_columns(teacher_names: list[str], label_names: list[str], teacher: str) -> list[int]:
    """Teacher column for each student class."""
    if sorted(teacher_names) == sorted(label_names):
        return [teacher_names.index(name) for name in label_names]
    generic = all(re.fullmatch(r"(LABEL_)?\d+", str(n)) for n in teacher_names)
    if generic and len(teacher_names) == len(label_names):
        return list(range(len(label_names)))
    raise UserError(
        f"teacher {teacher} has classes {', '.join(map(str, teacher_names))}; the student has "
        f"{', '.join(label_names)}; use a teacher trained on the same classes"
    )


def teacher_logits(teacher: str, texts: list[str], label_names: list[str], *, max_length: int = 256,
                   batch_size: int = 128, log=print) -> np.ndarray:
    """(rows, classes) teacher logits in the student's class order; cached on disk."""
    from ..evaluation.metrics import compute_logits, pad_id_of

    key = hashlib.sha256()
    key.update(f"{teacher_identity(teacher)}|{json.dumps(label_names)}|{max_length}|".encode())
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    path = cache_dir().parent / "teacher" / f"{key.hexdigest()[:24]}.npy"
    cached = _read_cached_logits(path, len(texts), log)
    if cached is not None:
        return cached
    model, tokenizer, cleaner, teacher_length, teacher_names = load_teacher(teacher, max_length)
    columns = teacher_columns(teacher_names, label_names, teacher)
    log(f"computing teacher logits ({teacher}) for {len(texts)} training rows")
    ids = tokenize(cleaner.apply(texts), tokenizer, teacher_length)
    logits = compute_logits(model, ids, batch_size, pad_id_of(tokenizer))[:, columns]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, logits)
    except (UserError, OSError) as e:  # a cache: the run goes on without it
        warn(f"teacher logits not cached ({e})")
    return logits


def _read_cached_logits(path: Path, rows: int, log) -> np.ndarray | None:
    """The cached teacher logits, or None; a truncated or corrupt cache file is deleted (it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        logits = np.load(path)
        if logits.ndim != 2 or len(logits) != rows:
            raise ValueError(f"shape {logits.shape}, expected {rows} rows")
    except Exception as e:  # noqa: BLE001 -- any unreadable cache entry is rebuilt
        warn(f"teacher-logit cache {path} is corrupt ({type(e).__name__}: {e}); deleted, recomputing")
        files.remove(path)
        return None
    log(f"teacher logits for {rows} rows read from the cache ({path.name})")
    return logits


def distill_loss(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, temperature: float,
                 weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed over rows: weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * cross-entropy
    (its targets smoothed by `label_smoothing`)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  reduction="none", log_target=True).sum(dim=-1)
    ce = F.cross_entropy(student, labels, reduction="none", label_smoothing=label_smoothing)
    return (weight * t * t * kl + (1 - weight) * ce).sum()
