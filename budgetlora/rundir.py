"""Run directory: what a training run's folder holds, who may write it, and how it is created,
replaced (--overwrite), checkpointed and resumed.

    config.yaml      resolved config            labels.json    class names
    budget.json      trainable-parameter breakdown
    metrics.jsonl    one line per evaluation    metrics.json   final metrics (val, test): the run is finished
    train_log.csv    loss, accuracy, lr every train.log_every steps
    val_predictions.csv  validation rows with true and predicted class and confidence
    report.md, report.html, plots/   the run report (train.report)
    tensorboard/     TensorBoard events (train.tracker)
    adapter/         best adapter + head, PEFT format (+ tokenizer)
    checkpoint/      state.pt for --resume (latest evaluation), state.prev.pt (the one before),
                     progress.json (step, best step: readable without torch)

One process owns a run directory while it trains (`files.FolderLock`, the lock file
`.NAME.lock` beside it). A new run is written in place; --overwrite of an existing run builds the
new one beside it (`.NAME.overwrite`) and swaps it in only once it has finished, so a crash
keeps the old run and `--resume` continues the new one. A checkpoint replaces the previous one
only once it is complete on disk, and the previous one is kept, so a kill at any moment leaves
one to resume from. Every file is written through `files` (complete under its final name or
not at all).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from . import files
from .errors import UserError, warn

CONFIG, LABELS, BUDGET = "config.yaml", "labels.json", "budget.json"
METRICS, HISTORY, TRAIN_LOG = "metrics.json", "metrics.jsonl", "train_log.csv"
VAL_PREDICTIONS, ADAPTER = "val_predictions.csv", "adapter"
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint/state.pt", "checkpoint/state.prev.pt"
PROGRESS = "checkpoint/progress.json"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Where a training run ends up (`out`) and where it is written while it trains (`work`:
    `out` itself, or the staging folder of --overwrite); `resume`: continue what `work` holds."""

    out: Path
    work: Path
    resume: bool

    @property
    def staged(self) -> bool:
        return self.work != self.out


def staging_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.overwrite")


def is_started(folder: Path) -> bool:
    """A run whose config and class names were written (they are written first, config last)."""
    return (folder / CONFIG).is_file() and (folder / LABELS).is_file()


def is_finished(folder: Path) -> bool:
    return (folder / METRICS).is_file()


def claim(out: Path | str, *, overwrite: bool, resume: bool) -> tuple[RunPlan, files.FolderLock]:
    """Own `out` (an OS lock, released by the caller or by the process dying) and decide where
    this run writes; a UserError, with nothing written, when the request cannot be honoured."""
    out = Path(out)
    lock = files.FolderLock(out).acquire()
    try:
        for folder in (out, staging_dir(out)):  # what a kill in the middle of a write left
            files.recover_tree(folder)
        return _plan(out, overwrite=overwrite, resume=resume), lock
    except BaseException:
        lock.release()
        raise


def precheck(out: Path | str, *, overwrite: bool, resume: bool) -> None:
    """The refusal `claim` would give, without taking the lock or writing anything: for a caller
    about to spend time before training (a time budget's measuring)."""
    _plan(Path(out), overwrite=overwrite, resume=resume)


def _plan(out: Path, *, overwrite: bool, resume: bool) -> RunPlan:
    staging = staging_dir(out)
    if resume:
        if is_started(staging):  # an --overwrite run that was killed: the old run is still in `out`
            return RunPlan(out, staging, True)
        if is_started(out):
            return RunPlan(out, out, True)
        raise UserError(f"nothing to resume in {out} (no run was started there); start it without --resume")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if overwrite:
            return RunPlan(out, staging, False)
        if is_started(out) and not is_finished(out):
            raise UserError(f"{out} holds an unfinished run ({progress_text(out)}); continue it with --resume, "
                            "or pass --overwrite to start again")
        raise UserError(f"run directory {out} already exists; choose another --out, pass --overwrite, or --resume it")
    return RunPlan(out, out, False)


def create(plan: RunPlan, config_yaml: str, label_names: list[str], budget: dict) -> None:
    """The folder of a new run, with what identifies it; config.yaml last (it marks a started run)."""
    if plan.staged:
        files.remove(plan.work)  # an earlier, abandoned --overwrite attempt: replaced by this one
    try:
        (plan.work / "checkpoint").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.write_error(e, plan.work) from None
    files.write_json(plan.work / LABELS, label_names)
    files.write_json(plan.work / BUDGET, budget)
    files.write_text(plan.work / CONFIG, config_yaml)


def finish(plan: RunPlan) -> None:
    """Put a finished --overwrite run in place of the old one (a no-op for a run written in place)."""
    if plan.staged:
        files.swap_in(plan.work, plan.out)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(work: Path, state: dict, progress: dict) -> None:
    """state.pt, complete on disk before it replaces the previous one (kept as state.prev.pt):
    a kill at any moment leaves at least one whole checkpoint."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = work / CHECKPOINT
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        if path.exists():  # atomic_path fsyncs tmp before it takes the name
            os.replace(path, work / PREVIOUS_CHECKPOINT)
    files.write_json(work / PROGRESS, progress)


def load_checkpoint(work: Path) -> dict | None:
    """The newest whole checkpoint of `work` (state.pt, else state.prev.pt), or None if the run
    never reached one (it then restarts from step 0 with its saved config)."""
    fix = (f"delete {work / 'checkpoint'} to restart the run from step 0 with --resume, "
           "or start it again with --overwrite")
    failures = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = work / name
        if not path.is_file():
            continue
        try:
            state = files.load_torch(path, fix)
            if not isinstance(state, dict) or "step" not in state:
                raise files.corrupt(path, ValueError("not a budgetlora checkpoint"), fix)
        except UserError as e:
            failures.append(e)
            continue
        if failures:
            warn(f"{failures[0]}; resuming from {path.name} (step {state['step']}) instead")
        return state
    if failures:
        raise failures[0]
    return None


def progress_text(folder: Path) -> str:
    """"stopped at step 40 of 90" (from checkpoint/progress.json), or what is known without it."""
    try:
        progress = files.read_json(folder / PROGRESS, "")
        return f"stopped at step {progress['step']} of {progress['total_steps']}"
    except (UserError, KeyError, TypeError):
        return "stopped before its first checkpoint"


def unfinished_note(run_dir: Path) -> str | None:
    """For evaluate/predict: one line saying the run has no final metrics and where its adapter is from."""
    if is_finished(run_dir):
        return None
    owner = files.owner_pid(run_dir)
    state = f"still training (process {owner})" if owner else f"unfinished ({progress_text(run_dir)})"
    try:
        best = files.read_json(run_dir / PROGRESS, "")["best_step"]
        source = f"its best adapter so far, from step {best}"
    except (UserError, KeyError, TypeError):
        source = "its last saved adapter"
    fix = "" if owner else f"; `budgetlora train --resume --out {run_dir}` finishes it"
    return f"{run_dir} is {state}: using {source}{fix}"


# ---------------------------------------------------------------- reading a run


def read_config(run_dir: Path):
    """The resolved config of a run; a truncated config.yaml (a section missing) is refused,
    never silently filled with defaults."""
    import yaml

    from .config import Config, from_dict

    path = run_dir / CONFIG
    fix = "restore it or rerun the training with --overwrite"
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise files.corrupt(path, e, fix) from None
    # selftrain came after runs were saved without it; it is written before budget and distill, so a
    # truncated file cannot have lost it alone
    sections = [f.name for f in dataclasses.fields(Config) if f.name not in ("recipe", "selftrain")]
    missing = [s for s in sections if not isinstance(values, dict) or s not in values]
    if missing:
        raise files.corrupt(path, ValueError(f"no {', '.join(missing)} section"), fix)
    return from_dict(values)


def read_labels(run_dir: Path) -> list[str]:
    names = files.read_json(run_dir / LABELS, "restore it or rerun the training with --overwrite")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise files.corrupt(run_dir / LABELS, ValueError("not a list of class names"),
                            "restore it or rerun the training with --overwrite")
    return names


# ---------------------------------------------------------------- the logs that grow


TRAIN_LOG_COLUMNS = ("step", "epoch", "loss", "accuracy", "lr", "samples_per_s")


def append_history(work: Path, record: dict) -> None:
    """One evaluation, one line of metrics.jsonl."""
    import json

    files.append_line(work / HISTORY, json.dumps(record))


def append_train_log(work: Path, row: dict) -> None:
    """One row of train_log.csv (TRAIN_LOG_COLUMNS), the header first."""
    path = work / TRAIN_LOG
    if not path.is_file():
        files.write_text(path, ",".join(TRAIN_LOG_COLUMNS) + "\n")
    files.append_line(path, ",".join(repr(row[c]) if isinstance(row[c], float) else str(row[c])
                                     for c in TRAIN_LOG_COLUMNS))


def truncate_logs(work: Path, step: int) -> None:
    """Drop what metrics.jsonl and train_log.csv logged after `step` (the checkpoint a run resumes
    from), and a partial last line a kill left."""
    import json

    history = work / HISTORY
    if history.is_file():
        kept = [record for record in files.read_jsonl(history) if record.get("step", step + 1) <= step]
        files.write_text(history, "".join(json.dumps(record) + "\n" for record in kept))
    train_log = work / TRAIN_LOG
    if train_log.is_file():
        header, *rows = train_log.read_text(encoding="utf-8").splitlines() or [",".join(TRAIN_LOG_COLUMNS)]
        kept = [line for line in rows if _complete_log_row(line) and int(line.split(",", 1)[0]) <= step]
        files.write_text(train_log, "".join(line + "\n" for line in [header, *kept]))


def _complete_log_row(line: str) -> bool:
    fields = line.split(",")
    if len(fields) != len(TRAIN_LOG_COLUMNS) or not fields[0].isdigit():
        return False
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def write_val_predictions(work: Path, texts: list[str], labels, probs, label_names: list[str]) -> None:
    """val_predictions.csv: one row per validation text, with its true and predicted class and the
    confidence (what the report's misclassified sample is drawn from)."""
    import pandas as pd

    pred = probs.argmax(axis=1)
    frame = pd.DataFrame({"text": texts, "true": [label_names[i] for i in labels],
                          "pred": [label_names[i] for i in pred], "confidence": probs.max(axis=1)})
    files.write_csv(work / VAL_PREDICTIONS, frame)
