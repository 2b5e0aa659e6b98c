"""Report: one finished run as a Markdown file and a self-contained HTML page.

    budgetlora report RUN_DIR      (also written when training ends, unless train.report=false)

Reads what training left in the run directory (config.yaml, labels.json, budget.json,
metrics.jsonl, metrics.json, train_log.csv, val_predictions.csv; shift.json when `budgetlora data
shift --save` wrote one), draws the figures with budgetlora.evaluation.plots into RUN_DIR/plots/,
and writes RUN_DIR/report.md (images linked) and RUN_DIR/report.html (images embedded as base64:
one file to mail or archive).

The page is a list of blocks (heading, paragraph, table, image, preformatted text) rendered
twice, once as Markdown and once as HTML. That renderer is hand-written (a few lines with
html.escape) because a Markdown-to-HTML library would be a dependency for five element types.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files

from . import plots

from .. import rundir
from ..errors import UserError
from ..training.schedule import lr_schedule

MISCLASSIFIED_SAMPLE = 20
TEXT_CHARS = 300  # longer texts are cut in the misclassified table


# ---------------------------------------------------------------- reading the run


def read_run(run_dir: str | Path) -> dict:
    """Everything a report or a comparison needs from a finished run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; give the --out folder of a training run")
    missing = [n for n in ("config.yaml", "metrics.json", "metrics.jsonl", "budget.json") if not (run_dir / n).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run (no {', '.join(missing)}); train it to the end first, "
                        f"or `budgetlora train --resume --out {run_dir}`")
    fix = "rerun the training with --overwrite"
    train_log = pd.read_csv(run_dir / "train_log.csv").to_dict("records") if (run_dir / "train_log.csv").is_file() else []
    return {
        "dir": run_dir,
        "name": run_dir.resolve().name,
        "config_text": (run_dir / "config.yaml").read_text(encoding="utf-8"),
        "config": rundir.read_config(run_dir),
        "budget": files.read_json(run_dir / "budget.json", fix),
        "metrics": files.read_json(run_dir / "metrics.json", fix),
        "history": files.read_jsonl(run_dir / "metrics.jsonl"),
        "train_log": train_log,
        "shift": _read_shift(run_dir),
    }


def _read_shift(run_dir: Path) -> dict | None:
    """RUN_DIR/shift.json (`budgetlora data shift --run RUN_DIR --save`), or None."""
    from ..data.shift import SHIFT_FILE

    path = run_dir / SHIFT_FILE
    fix = f"write it again with `budgetlora data shift --run {run_dir} --save ...`, or delete it"
    return files.read_json(path, fix) if path.is_file() else None


# ---------------------------------------------------------------- the report's content


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def _accuracy_line(m: dict) -> str:
    low, high = m["accuracy_ci95"]
    return f"{_pct(m['accuracy'])} (95% bootstrap CI {_pct(low)} to {_pct(high)}, n={m['n']:,})"


def _summary(run: dict) -> list[tuple[str, str]]:
    cfg, m = run["config"], run["metrics"]
    a = cfg.adapter
    targets = a.targets if isinstance(a.targets, str) else ",".join(a.targets)
    rows = [
        ("run", run["name"]),
        ("recipe", cfg.recipe),
        ("model", cfg.model.name),
        ("adapter", f"{a.method} r={a.r} alpha={a.alpha:g} dropout={a.dropout:g} targets={targets} bias={a.bias}"),
        ("head", cfg.head.type + (" (LP-FT: output layer fitted by a linear probe before step 0)"
                                  if cfg.head.init == "probe" else "")),
        ("trainable parameters", f"{m['trainable_params']:,} ({_pct(run['budget']['share'])} of the model)"),
        ("validation accuracy", _accuracy_line(m["val"])),
        ("validation macro-F1", f"{m['val']['macro_f1']:.4f}"),
        ("validation loss", f"{m['val']['loss']:.4f}"),
    ]
    if "test" in m:
        rows += [("test accuracy", _accuracy_line(m["test"])), ("test macro-F1", f"{m['test']['macro_f1']:.4f}")]
    rows += _baseline_rows(m)
    rows += [
        ("best checkpoint", f"step {m['best_step']} of {m['steps']} (best {m['metric']} {m['best_value']:.4f})"
                            + (", stopped early" if m.get("stopped_early") else "")),
        ("training rows / validation rows", f"{m['train_rows']:,} / {m['val_rows']:,}"),
        ("training time", f"{_seconds(m['train_seconds'])} (optimiser steps only, no evaluation)"),
        ("wall time", _seconds(m["wall_seconds"]) + " (everything, from start to saved run)"),
        ("throughput", f"{m['train_samples_per_s']:,.1f} samples/s, {m['train_tokens_per_s']:,.0f} tokens/s (training)"),
        ("device", f"{m['device']} x {m['processes']} process{'es' if m['processes'] > 1 else ''}"),
    ]
    return rows


def _baseline_rows(m: dict) -> list[tuple[str, str]]:
    """LP-FT's head before any step, and the linear-probe baseline beside the adapter: what fine-tuning bought."""
    rows = []
    init = m.get("head_init")
    if init:
        rows.append(("head before any step (LP-FT)", f"validation accuracy {_pct(init['val_accuracy'])}, "
                                                     f"{init['layer']} fitted on {init['rows']:,} rows (C={init['C']:g}) "
                                                     f"in {init['seconds']:.1f} s"))
    b = m.get("baseline")
    if b:
        for split in ("val", "test"):
            if split in b and split in m:
                gain = 100 * (m[split]["accuracy"] - b[split]["accuracy"])
                name = "validation" if split == "val" else "test"
                rows.append((f"linear-probe baseline, {name}",
                             f"{_accuracy_line(b[split])}: frozen {b['pooling']}-pooled features + logistic regression "
                             f"(C={b['C']:g}), 0 adapter parameters, {b['seconds']:.1f} s; fine-tuning bought "
                             f"{gain:+.2f} points"))
    return rows


def _parameter_rows(budget: dict) -> list[list[str]]:
    total = budget["frozen"] + budget["trainable"]

    def row(part, n):
        return [part, f"{n:,}", f"{100 * n / max(total, 1):.3f}%"]

    rows = [row("frozen (pretrained, not trained)", budget["frozen"])]
    rows += [row(f"adapter: {name}", n) for name, n in budget["adapter_by_module"].items()]
    rows += [row(f"head ({budget['head_type']})" if budget.get("head_type") else "head", budget["head"]),
             row("biases", budget["biases"])]
    if budget.get("other"):
        rows.append(row("other", budget["other"]))
    rows += [row("**trainable total**", budget["trainable"]), row("model total", total)]
    if budget.get("max_trainable"):
        used = budget["trainable"] / budget["max_trainable"]
        rows.append(["budget (budget.max_trainable)", f"{budget['max_trainable']:,}", f"{100 * used:.1f}% used"])
    return rows


def _misclassified(run_dir: Path, seed: int) -> tuple[list[list[str]], str]:
    path = run_dir / "val_predictions.csv"
    if not path.is_file():
        return [], "No val_predictions.csv in this run (trained by an older budgetlora): no sample to show."
    frame = pd.read_csv(path, keep_default_na=False)
    wrong = frame[frame["true"].astype(str) != frame["pred"].astype(str)]
    if wrong.empty:
        return [], f"Every one of the {len(frame):,} validation rows is classified correctly."
    sample = wrong.sample(n=min(MISCLASSIFIED_SAMPLE, len(wrong)), random_state=seed)
    sample = sample.sort_values("confidence", ascending=False)
    rows = []
    for r in sample.itertuples():
        text = str(r.text)
        text = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "..."
        rows.append([text, str(r.true), str(r.pred), f"{100 * float(r.confidence):.1f}%"])
    note = (f"{len(wrong):,} of {len(frame):,} validation rows are misclassified; a random sample of {len(rows)}, "
            f"most confident first (confidence = the model's probability for its predicted class).")
    return rows, note


def _blocks(run: dict, figures: dict) -> list[tuple]:
    """The report, top to bottom, as (kind, ...) blocks."""
    m, cfg = run["metrics"], run["config"]
    val = m["val"]
    blocks = [("title", f"budgetlora run report: {run['name']}"),
              ("h2", "Summary"), ("table", ["", ""], [[k, v] for k, v in _summary(run)]),
              ("h2", "Training curves"),
              ("p", "Training loss and accuracy are measured on the training batches as they are trained "
                    "(dropout on); validation at each evaluation. The dashed line marks the checkpoint kept."),
              ("img", figures["curves"], "training and validation loss and accuracy against steps"),
              ("h2", "Learning-rate schedule"),
              ("p", f"{cfg.train.scheduler} schedule, peak {cfg.train.lr:g}, warmup {cfg.train.warmup:g} "
                    f"({'fraction of steps' if cfg.train.warmup < 1 else 'steps'}), {m['total_steps']} steps."),
              ("img", figures["lr"], "learning rate against steps"),
              ("h2", "Confusion matrix"),
              ("p", f"Validation set, {val['n']:,} rows. Rows are the true class, columns the predicted class; "
                    "the right panel divides each row by its total, so its diagonal is the recall of each class."),
              ("img", figures["confusion"], "confusion matrix heatmaps, counts and row-normalised"),
              ("h2", "Per-class precision, recall and F1"),
              ("table", ["class", "precision", "recall", "F1", "support"],
               [[name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['support']:,}"]
                for name, r in val["per_class"].items()]),
              ("img", figures["per_class"], "per-class precision, recall and F1 bar chart")]
    if "test" in m:
        blocks += [("h2", "Test set"), ("p", f"Accuracy {_accuracy_line(m['test'])}, macro-F1 "
                                             f"{m['test']['macro_f1']:.4f}, loss {m['test']['loss']:.4f}."),
                   ("img", figures["test_confusion"], "test confusion matrix heatmaps")]
    if run.get("shift"):
        blocks += _shift_blocks(run["shift"], figures)
    rows, note = _misclassified(run["dir"], cfg.train.seed)
    blocks += [("h2", "Misclassified validation texts"), ("p", note)]
    if rows:
        blocks.append(("table", ["text", "true", "predicted", "confidence"], rows))
    blocks += [("h2", "Trainable parameters"),
               ("table", ["part", "parameters", "share of the model"], _parameter_rows(run["budget"])),
               ("h2", "Configuration"), ("p", "The resolved config.yaml of the run."),
               ("pre", run["config_text"])]
    return blocks


def _shift_blocks(shift: dict, figures: dict) -> list[tuple]:
    """The Shift section: `budgetlora data shift --save`'s numbers, words and histograms."""
    from ..data.shift import summary_rows, word_rows

    blocks = [("h2", "Shift"),
              ("p", f"How far the target {shift['target']['source']} is from the training data {shift['train']['source']} "
                    "(budgetlora data shift). Domain classifier AUC: 0.5 = the two sets cannot be told apart."),
              ("table", ["", ""], [list(row) for row in summary_rows(shift)]),
              ("img", figures["shift_lengths"], "token-length histograms of the training and target rows")]
    if word_rows(shift):
        blocks.append(("table", ["over-represented in target (z; target vs train count)", "over-represented in train"],
                       word_rows(shift)))
    p = shift.get("predictions")
    if p:
        blocks.append(("table", ["class", "predicted share of target", "training prior", "estimated target share (EM)"],
                       [[name, _pct(m["target"]), _pct(m["prior"]) if m["prior"] is not None else "-",
                         _pct(m["estimated"]) if m.get("estimated") is not None else "-"]
                        for name, m in p["class_mix"].items()]))
        blocks.append(("img", figures["shift_confidence"], "histograms of the top probability on target and validation rows"))
    return blocks


def draw_figures(run: dict) -> dict:
    """All the report's PNGs in RUN_DIR/plots/; returns name -> path."""
    folder = run["dir"] / "plots"
    m = run["metrics"]
    total = m["total_steps"]
    figures = {
        "curves": plots.training_curves(run["history"], run["train_log"], m["best_step"], folder / "curves.png"),
        "lr": plots.lr_schedule(np.arange(1, total + 1), lr_schedule(run["config"], total), run["train_log"],
                                folder / "lr_schedule.png"),
        "confusion": plots.confusion_matrices(m["val"]["confusion_matrix"], m["val"]["label_names"],
                                              folder / "confusion_matrix.png", title="Validation"),
        "per_class": plots.per_class_bars(m["val"]["per_class"], folder / "per_class.png"),
    }
    if "test" in m:
        figures["test_confusion"] = plots.confusion_matrices(m["test"]["confusion_matrix"], m["test"]["label_names"],
                                                             folder / "test_confusion_matrix.png", title="Test")
    shift = run.get("shift")
    if shift:
        h = shift["tokens"]["histogram"]
        figures["shift_lengths"] = plots.distributions(h["edges"], {"train": h["train"], "target": h["target"]},
                                                       folder / "shift_lengths.png", "Token lengths (untruncated)",
                                                       "tokens per row (the last bin holds every longer row)")
        c = (shift.get("predictions") or {}).get("confidence_histogram")
        if c:
            shares = {name: c[key] for name, key in (("validation", "validation"), ("target", "target")) if c[key]}
            figures["shift_confidence"] = plots.distributions(c["edges"], shares, folder / "shift_confidence.png",
                                                              "Confidence (top probability)", "top probability")
    return figures


# ---------------------------------------------------------------- rendering


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[tuple], base: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "title":
            out.append(f"# {rest[0]}")
        elif kind == "h2":
            out.append(f"## {rest[0]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "table":
            header, rows = rest
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in header) + " |",
                                  "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]))
        elif kind == "img":
            path, alt = rest
            out.append(f"![{alt}]({Path(path).relative_to(base).as_posix()})")
        elif kind == "pre":
            out.append("```yaml\n" + rest[0].rstrip() + "\n```")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: .6em 0; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def _html_cell(text: str) -> str:
    text = html.escape(str(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)  # the one bit of Markdown cells use


def to_html(blocks: list[tuple], title: str) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "title":
            out.append(f"<h1>{html.escape(rest[0])}</h1>")
        elif kind == "h2":
            out.append(f'<h2 id="{_slug(rest[0])}">{html.escape(rest[0])}</h2>')
        elif kind == "p":
            out.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "table":
            header, rows = rest
            head = "" if not any(header) else "<tr>" + "".join(f"<th>{_html_cell(h)}</th>" for h in header) + "</tr>"
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
            out.append(f"<table>{head}{body}</table>")
        elif kind == "img":
            path, alt = rest
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        elif kind == "pre":
            out.append(f"<pre>{html.escape(rest[0])}</pre>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(out) + "\n</body>\n</html>\n")


def write_report(run_dir: str | Path) -> dict:
    """Write RUN_DIR/report.md, RUN_DIR/report.html and RUN_DIR/plots/*.png; returns their paths."""
    run = read_run(run_dir)
    figures = draw_figures(run)
    blocks = _blocks(run, figures)
    md_path, html_path = run["dir"] / "report.md", run["dir"] / "report.html"
    for path, text in ((md_path, to_markdown(blocks, run["dir"])), (html_path, to_html(blocks, blocks[0][1]))):
        files.write_text(path, text)
    return {"markdown": md_path, "html": html_path, "plots": sorted(figures.values())}
