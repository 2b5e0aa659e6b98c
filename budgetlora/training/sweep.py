"""Sweep: many configs x seeds, one run directory each, one results table sorted by a metric.

A sweep is a YAML file (or the same given as command-line flags):

    recipe: minilm-quickstart          # the base config every trial starts from
    set: [data.train=train.csv]        # overrides for every trial
    trials:                            # named trials (optional): each adds its own overrides
      - {name: a24, set: [adapter.r=6, adapter.alpha=24]}
      - {name: linear-head, set: [head.type=linear, adapter.r=16]}
    grid:                              # cartesian product (optional), crossed with the trials
      train.lr: [5.0e-4, 1.0e-3]
    seeds: [1, 2, 3]                   # every trial runs once per seed (train.seed)
    metric: val_accuracy               # what the summary is sorted by
    search: grid                       # grid | random (n_trials of the grid) | optuna
    n_trials: null
    storage: null                      # optuna RDB url: several machines share one study

Output folder:
    sweep.yaml     the spec (a rerun with another spec is refused; the same one continues)
    runs/NAME-sSEED/   one ordinary budgetlora run directory per trial and seed
    trials.csv     one row per run: overrides, status, trainable params, metrics, times
    summary.csv / summary.md   one row per trial: mean ± std over seeds, sorted by the metric

Rerunning the same sweep skips finished runs and resumes killed ones (`train --resume`), so a
sweep that dies loses at most one evaluation interval. A trial the budget refuses is recorded
as `refused` with the reason; a trial that crashes is recorded as `failed` and the sweep goes
on (the command then exits non-zero).

The grid/random search and the table are written here because they are a few lines over
`train`; Optuna (optional, `pip install optuna`) is used for model-based search.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .. import files

from .. import rundir
from ..config import load_config
from ..errors import UserError, first_line
from .loop import train

METRICS = {  # name -> (path into metrics.json, higher is better)
    "val_accuracy": (("val", "accuracy"), True),
    "val_macro_f1": (("val", "macro_f1"), True),
    "val_loss": (("val", "loss"), False),
    "test_accuracy": (("test", "accuracy"), True),
    "test_macro_f1": (("test", "macro_f1"), True),
    "train_seconds": (("train_seconds",), False),
}


@dataclass
class SweepSpec:
    recipe: str | None = None
    set: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [42])
    metric: str = "val_accuracy"
    search: str = "grid"
    n_trials: int | None = None
    storage: str | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise UserError(f"sweep metric {self.metric!r} is unknown; choose one of {', '.join(METRICS)}")
        if self.search not in ("grid", "random", "optuna"):
            raise UserError(f"sweep search {self.search!r} is unknown; choose grid, random or optuna")
        if self.search != "grid" and not self.n_trials:
            raise UserError(f"search: {self.search} needs n_trials (how many trials to run)")
        if not self.seeds:
            raise UserError("sweep seeds: empty; give at least one seed")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"sweep grid {key}: expected a non-empty list of values")
        names = [t.get("name") for t in self.trials]
        for t in self.trials:
            if not isinstance(t, dict) or not t.get("name") or set(t) - {"name", "set", "recipe"}:
                raise UserError(f"sweep trial {t!r}: expected {{name: ..., set: [...], recipe: optional}}")
        if len(set(names)) != len(names):
            raise UserError("sweep trials: two trials share a name; names must be unique")


def load_spec(path: str | Path | None = None, **flags) -> SweepSpec:
    """A spec from a YAML file, with command-line flags (those not None) on top."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sweep file {path} does not exist; give a YAML file (see `budgetlora sweep --help`)")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"sweep file {path} is not valid YAML ({first_line(e, limit=None)}); fix it") from None
        if not isinstance(values, dict):
            raise UserError(f"sweep file {path} must be a YAML mapping (recipe, set, trials, grid, seeds, ...)")
    unknown = set(values) - set(SweepSpec.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown sweep key {sorted(unknown)[0]}; allowed: {', '.join(SweepSpec.__dataclass_fields__)}")
    for key, value in flags.items():
        if value is None or value == [] or value == {}:
            continue
        if key == "set":
            values["set"] = list(values.get("set") or []) + list(value)
        elif key == "grid":
            values["grid"] = {**(values.get("grid") or {}), **value}
        else:
            values[key] = value
    return SweepSpec(**values)


def parse_grid_flag(text: str) -> tuple[str, list]:
    """`adapter.r=4,8,16` -> ("adapter.r", [4, 8, 16])."""
    if "=" not in text:
        raise UserError(f"--grid {text!r}: expected key=v1,v2,..., e.g. --grid adapter.r=4,8")
    key, raw = text.split("=", 1)
    return key.strip(), [yaml.safe_load(v) for v in raw.split(",") if v.strip()]


def _slug(assignments: dict) -> str:
    parts = [f"{key.split('.')[-1]}={value}" for key, value in assignments.items()]
    return re.sub(r"[^A-Za-z0-9=.,_+-]", "_", ",".join(parts)) or "base"


def expand(spec: SweepSpec) -> list[dict]:
    """Every trial of a grid/random sweep: {name, recipe, set} (seeds are added by `run_sweep`)."""
    named = spec.trials or [{"name": "", "set": []}]
    keys = list(spec.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    trials = []
    for base in named:
        for combo in combos:
            name = "-".join(p for p in (base["name"], _slug(combo) if combo else "") if p) or "base"
            trials.append({
                "name": name,
                "recipe": base.get("recipe", spec.recipe),
                "set": list(spec.set) + list(base.get("set") or []) + [f"{k}={_yaml_value(v)}" for k, v in combo.items()],
            })
    if spec.search == "random" and spec.n_trials < len(trials):
        trials = random.Random(0).sample(trials, spec.n_trials)
    return trials


def _yaml_value(value) -> str:
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _metric_of(metrics: dict, name: str):
    node = metrics
    for part in METRICS[name][0]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_trial(trial: dict, seed: int, run_dir: Path, log=print) -> dict:
    """Train one trial at one seed (or read/resume what an earlier sweep left); one table row."""
    row = {"trial": trial["name"], "seed": seed, "run_dir": str(run_dir), "overrides": " ".join(trial["set"])}
    try:
        if rundir.is_finished(run_dir):
            metrics = files.read_json(run_dir / rundir.METRICS, f"delete {run_dir} and rerun the sweep")
            status = "done (earlier)"
        elif rundir.is_started(run_dir) or rundir.is_started(rundir.staging_dir(run_dir)):
            log(f"[sweep] resuming {run_dir}")
            metrics, status = train(None, run_dir, resume=True, log=log), "done (resumed)"
        else:
            cfg = load_config(trial["recipe"], [*trial["set"], f"train.seed={seed}"])
            log(f"[sweep] {trial['name']} seed {seed} -> {run_dir}")
            metrics, status = train(cfg, run_dir, overwrite=True, log=log), "done"
    except UserError as e:  # over budget, bad key, ...: the trial cannot run as specified
        return {**row, "status": "refused", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - a crash in one trial must not lose the others
        log(traceback.format_exc())
        return {**row, "status": "failed", "reason": f"{type(e).__name__}: {e}"}
    row.update(status=status, reason="", trainable_params=metrics.get("trainable_params"))
    for name in METRICS:
        row[name] = _metric_of(metrics, name)
    row["wall_seconds"] = metrics.get("wall_seconds")
    row["best_step"] = metrics.get("best_step")
    return row


def summarize(rows: list[dict], metric: str) -> pd.DataFrame:
    """One row per trial: mean and std over its finished seeds, sorted best first."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    done = frame[frame["status"].str.startswith("done")]
    out = []
    for name, group in frame.groupby("trial", sort=False):
        finished = done[done["trial"] == name]
        entry = {"trial": name, "seeds": len(finished), "status": "done" if len(finished) else group["status"].iloc[0]}
        if len(finished):
            entry["trainable_params"] = int(finished["trainable_params"].iloc[0])
            for m in ("val_accuracy", "val_macro_f1", "val_loss", "test_accuracy", "train_seconds"):
                values = pd.to_numeric(finished.get(m), errors="coerce").dropna() if m in finished else []
                if len(values):
                    entry[f"{m}_mean"] = float(values.mean())
                    entry[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        else:
            entry["reason"] = group["reason"].iloc[0]
        entry["overrides"] = group["overrides"].iloc[0]
        out.append(entry)
    summary = pd.DataFrame(out)
    key = f"{metric}_mean"
    if key in summary:
        summary = summary.sort_values(key, ascending=not METRICS[metric][1], na_position="last", kind="stable")
    return summary.reset_index(drop=True)


def _markdown(summary: pd.DataFrame, metric: str) -> str:
    head = f"| rank | trial | seeds | trainable | {metric} (mean ± std) | val acc | val macro-F1 | train s | overrides |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for i, r in summary.iterrows():
        def pm(m, digits=4):
            mean = r.get(f"{m}_mean")
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                return r.get("status", "")
            return f"{mean:.{digits}f} ± {r.get(f'{m}_std', 0.0):.{digits}f}"
        params = r.get("trainable_params")
        params = f"{int(params):,}" if params is not None and not (isinstance(params, float) and math.isnan(params)) else ""
        lines.append(f"| {i + 1} | {r['trial']} | {r['seeds']} | {params} | {pm(metric)} | {pm('val_accuracy')} | "
                     f"{pm('val_macro_f1')} | {pm('train_seconds', 1)} | `{r['overrides']}` |")
    return "\n".join(lines) + "\n"


def _write_tables(out: Path, rows: list[dict], metric: str) -> pd.DataFrame:
    files.write_csv(out / "trials.csv", pd.DataFrame(rows))
    summary = summarize(rows, metric)
    files.write_csv(out / "summary.csv", summary)
    files.write_text(out / "summary.md", _markdown(summary, metric))
    return summary


def _prepare_out(out: Path, spec: SweepSpec) -> None:
    text = yaml.safe_dump(asdict(spec), sort_keys=False)
    spec_file = out / "sweep.yaml"
    if spec_file.is_file():
        if spec_file.read_text(encoding="utf-8") != text:
            raise UserError(f"{out} holds a different sweep (its sweep.yaml differs); choose another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a sweep folder; choose another --out")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    files.write_text(spec_file, text)


def run_sweep(spec: SweepSpec, out: str | Path, log=print) -> pd.DataFrame:
    """Run (or continue) the sweep into folder `out`; returns the summary table (best first)."""
    out = Path(out)
    with files.FolderLock(out, "sweep folder"):  # one sweep process per folder (each trial's run is locked too)
        _prepare_out(out, spec)
        if spec.search == "optuna":
            return _run_optuna(spec, out, log)
        return _run_grid(spec, out, log)


def _run_grid(spec: SweepSpec, out: Path, log) -> pd.DataFrame:
    rows = []
    for trial in expand(spec):
        for seed in spec.seeds:
            rows.append(run_trial(trial, seed, out / "runs" / f"{trial['name']}-s{seed}", log=log))
            summary = _write_tables(out, rows, spec.metric)  # tables stay current while it runs
    log(f"[sweep] results in {out / 'summary.md'}")
    return summary


def _run_optuna(spec: SweepSpec, out: Path, log) -> pd.DataFrame:
    try:
        import optuna
    except ImportError:
        raise UserError("search: optuna needs Optuna; install it with `pip install optuna`") from None
    if not spec.grid:
        raise UserError("search: optuna needs a grid: the values each key may take")
    higher = METRICS[spec.metric][1]
    study = optuna.create_study(
        study_name=out.name, storage=spec.storage, load_if_exists=True,
        direction="maximize" if higher else "minimize", sampler=optuna.samplers.TPESampler(seed=0),
    )
    # trials an earlier, interrupted invocation finished stay in the tables
    rows: list[dict] = pd.read_csv(out / "trials.csv").to_dict("records") if (out / "trials.csv").is_file() else []

    def objective(ot):
        combo = {key: ot.suggest_categorical(key, values) for key, values in spec.grid.items()}
        trial = {"name": f"optuna{ot.number:03d}-{_slug(combo)}", "recipe": spec.recipe,
                 "set": list(spec.set) + [f"{k}={_yaml_value(v)}" for k, v in combo.items()]}
        values = []
        for seed in spec.seeds:
            row = run_trial(trial, seed, out / "runs" / f"{trial['name']}-s{seed}", log=log)
            rows.append(row)
            _write_tables(out, rows, spec.metric)
            if row["status"].startswith("done") and row.get(spec.metric) is not None:
                values.append(row[spec.metric])
        if not values:
            raise optuna.TrialPruned(rows[-1].get("reason", "no finished seed"))
        return sum(values) / len(values)

    done = sum(t.state.is_finished() for t in study.trials)
    study.optimize(objective, n_trials=max(spec.n_trials - done, 0))
    return _write_tables(out, rows, spec.metric) if rows else summarize([], spec.metric)
