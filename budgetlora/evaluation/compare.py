"""Compare: finished runs side by side, as a table and one plot.

    budgetlora compare RUN_DIR... [--sort METRIC] [--out DIR]

One row per run (recipe, method, rank, alpha, targets, head, trainable parameters, best
validation accuracy, the kept checkpoint's validation accuracy and macro-F1, test accuracy when
there is one, training time), printed, and written to DIR/compare.csv (raw numbers) and
DIR/compare.md; DIR/compare.png plots best validation accuracy against trainable parameters
and against training time.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import files

from . import plots
from ..errors import UserError
from .report import read_run

COLUMNS = ["run", "recipe", "method", "r", "alpha", "targets", "head", "trainable_params",
           "best_val_accuracy", "val_accuracy", "val_macro_f1", "test_accuracy", "train_seconds"]
# --sort: larger is better for scores, smaller for cost; names ascending
ASCENDING = {"run": True, "trainable_params": True, "train_seconds": True, "best_val_accuracy": False,
             "val_accuracy": False, "val_macro_f1": False, "test_accuracy": False}


def run_row(run: dict) -> dict:
    cfg, m = run["config"], run["metrics"]
    targets = cfg.adapter.targets
    return {
        "run": run["label"],
        "recipe": cfg.recipe,
        "method": cfg.adapter.method,
        "r": cfg.adapter.r,
        "alpha": cfg.adapter.alpha,
        "targets": targets if isinstance(targets, str) else ",".join(targets),
        "head": cfg.head.type,
        "trainable_params": m["trainable_params"],
        "best_val_accuracy": max((h["val_accuracy"] for h in run["history"]), default=m["val"]["accuracy"]),
        "val_accuracy": m["val"]["accuracy"],
        "val_macro_f1": m["val"]["macro_f1"],
        "test_accuracy": m["test"]["accuracy"] if "test" in m else None,
        "train_seconds": m["train_seconds"],
    }


def compare_runs(run_dirs: list[str | Path], sort: str | None = None) -> pd.DataFrame:
    """One row per run, in the order given or sorted by `sort` (best first)."""
    if not run_dirs:
        raise UserError("give at least one run directory to compare")
    if sort is not None and sort not in ASCENDING:
        raise UserError(f"--sort {sort}: not a column to sort by; choose one of {', '.join(ASCENDING)}")
    runs = [read_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    for run, given in zip(runs, run_dirs):  # two runs called "run" in different folders: show the paths
        run["label"] = run["name"] if names.count(run["name"]) == 1 else str(given)
    frame = pd.DataFrame([run_row(r) for r in runs], columns=COLUMNS)
    if sort is not None:
        frame = frame.sort_values(sort, ascending=ASCENDING[sort], kind="stable", na_position="last")
    return frame.reset_index(drop=True)


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: percentages, thousands separators, seconds."""
    shown = frame.copy().astype(object)
    for col in ("best_val_accuracy", "val_accuracy", "test_accuracy"):
        shown[col] = [f"{100 * v:.2f}%" if pd.notna(v) else "-" for v in frame[col]]
    shown["val_macro_f1"] = [f"{v:.4f}" for v in frame["val_macro_f1"]]
    shown["trainable_params"] = [f"{v:,}" for v in frame["trainable_params"]]
    shown["alpha"] = [f"{v:g}" for v in frame["alpha"]]
    shown["train_seconds"] = [f"{v:.1f}" for v in frame["train_seconds"]]
    return shown


def to_markdown(frame: pd.DataFrame) -> str:
    shown = formatted(frame)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_comparison(frame: pd.DataFrame, out: str | Path) -> dict:
    """DIR/compare.csv, DIR/compare.md and DIR/compare.png (replaced if there)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for compare.csv, compare.md and compare.png")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "compare.csv", "markdown": out / "compare.md", "plot": out / "compare.png"}
    files.write_csv(paths["csv"], frame)
    files.write_text(paths["markdown"], to_markdown(frame))
    plots.accuracy_vs_cost(frame.to_dict("records"), paths["plot"])
    return paths
