"""Plots: the figures of a run report and a run comparison, one function per figure.

Each function takes plain data (lists, dicts, arrays: no run directory) and writes one PNG
with matplotlib's Agg backend (no display needed). Colours are chosen so that the confusion
matrices alone use purple (the "Purples" colormap): the curves and bars use blue, orange,
green and red, which lets a test find the confusion matrix in a screenshot of the report.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .. import files  # noqa: E402

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"
CONFUSION_CMAP = "Purples"
DPI = 110


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", facecolor="white", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def _mark_best(ax, best_step) -> None:
    if best_step is not None:
        ax.axvline(best_step, color=GREY, linestyle="--", linewidth=1, label=f"best checkpoint (step {best_step})")


def training_curves(history: list[dict], train_log: list[dict], best_step: int | None, path: Path) -> Path:
    """Loss and accuracy against optimiser steps: training (every few steps) and validation (each evaluation)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    if train_log:
        steps = [r["step"] for r in train_log]
        loss_ax.plot(steps, [r["loss"] for r in train_log], color=BLUE, alpha=0.45, linewidth=1,
                     label="training (batches since last point)")
        acc_ax.plot(steps, [r["accuracy"] for r in train_log], color=BLUE, alpha=0.45, linewidth=1,
                    label="training (batches since last point)")
    steps = [r["step"] for r in history]
    loss_ax.plot(steps, [r["train_loss"] for r in history], "o-", color=BLUE, label="training (since last evaluation)")
    loss_ax.plot(steps, [r["val_loss"] for r in history], "s-", color=ORANGE, label="validation")
    if all("train_accuracy" in r for r in history):
        acc_ax.plot(steps, [r["train_accuracy"] for r in history], "o-", color=BLUE,
                    label="training (since last evaluation)")
    acc_ax.plot(steps, [r["val_accuracy"] for r in history], "s-", color=ORANGE, label="validation")
    for ax in (loss_ax, acc_ax):
        _mark_best(ax, best_step)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    loss_ax.set_ylabel("cross-entropy loss (nats)")
    loss_ax.set_title("Loss")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}"))
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_title("Accuracy")
    return _save(fig, path)


def lr_schedule(steps: np.ndarray, lrs: np.ndarray, logged: list[dict], path: Path) -> Path:
    """The learning rate of every step (from the config) with the rates training logged on top."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(steps, lrs, color=BLUE, linewidth=1.5, label="schedule (from the config)")
    if logged:
        ax.plot([r["step"] for r in logged], [r["lr"] for r in logged], "o", color=ORANGE, markersize=3,
                label="used in training (train_log.csv)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title("Learning-rate schedule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_matrices(matrix: list[list[int]], names: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    """Counts and row-normalised (recall per true class) side by side, class names on both axes."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(names)
    side = max(4.2, 0.55 * k + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    for ax, values, what, fmt in ((axes[0], counts, "counts", "{:.0f}"),
                                  (axes[1], normalised, "row-normalised (share of each true class)", "{:.2f}")):
        image = ax.imshow(values, cmap=CONFUSION_CMAP, vmin=0, vmax=values.max() or 1)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="rows" if what == "counts" else "share of row")
        ax.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{title}: {what}", fontsize=10)
        if k <= 20:  # numbers in the cells while they still fit
            threshold = 0.5 * (values.max() or 1)
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8 if k > 8 else 10,
                            color="white" if values[i, j] > threshold else "black")
    fig.tight_layout()
    return _save(fig, path)


def per_class_bars(per_class: dict[str, dict], path: Path) -> Path:
    """Precision, recall and F1 of every class as grouped bars."""
    names = list(per_class)
    x = np.arange(len(names))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 3.8))
    for offset, key, colour in ((-width, "precision", BLUE), (0, "recall", ORANGE), (width, "f1", GREEN)):
        ax.bar(x + offset, [per_class[n][key] for n in names], width, label=key if key != "f1" else "F1", color=colour)
    ax.set_xticks(x, [f"{n}\n(n={per_class[n]['support']})" for n in names],
                  rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (0-1)")
    ax.set_xlabel("class (validation rows)")
    ax.set_title("Per-class precision, recall and F1 (validation)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: never over a bar
    return _save(fig, path)


def distributions(edges: list[float], shares: dict[str, list[float]], path: Path, title: str, xlabel: str) -> Path:
    """Several distributions over the same bins (share of rows per bin) as overlaid step histograms."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for (name, values), colour in zip(shares.items(), (BLUE, ORANGE, GREEN, RED)):
        ax.stairs(values, edges, color=colour, linewidth=1.8, label=name, fill=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of rows")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_cost(rows: list[dict], path: Path) -> Path:
    """Best validation accuracy against trainable parameters and against training time, one point per run."""
    fig, (params_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((params_ax, "trainable_params", "trainable parameters"),
                           (time_ax, "train_seconds", "training time (s)")):
        points = [r for r in rows if r.get(key) is not None and r.get("best_val_accuracy") is not None]
        ax.scatter([r[key] for r in points], [100 * r["best_val_accuracy"] for r in points], color=BLUE, zorder=3)
        labels: dict[tuple, list[str]] = {}  # runs on the same spot share one label
        for r in points:
            labels.setdefault((r[key], 100 * r["best_val_accuracy"]), []).append(str(r["run"]))
        for xy, names in labels.items():
            ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("best validation accuracy (%)")
        ax.grid(alpha=0.3)
        if key == "trainable_params":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.margins(x=0.15, y=0.15)
    params_ax.set_title("Accuracy against trainable parameters")
    time_ax.set_title("Accuracy against training time")
    fig.subplots_adjust(wspace=0.3)  # long run names may reach past the axes; the saved bbox takes them in
    return _save(fig, path)
