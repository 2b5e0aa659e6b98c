"""The figures a stage's output printed as it went, so a stage stopped at its time cap still
gives them: speed.py's line per finished pipeline (loop, step and inference samples/s, tokens/s,
validation accuracy, wall) and `budgetlora train`'s line per evaluation (kept: the last)."""

from __future__ import annotations

import re

SPEED_LINE = re.compile(
    r"\] (?P<pipeline>\S+): loop (?P<loop_samples_per_s>[\d.]+) samples/s, step (?P<step_samples_per_s>[\d.-]+), "
    r"(?P<loop_tokens_per_s>[\d.-]+) tokens/s, val acc (?P<val_accuracy>[\d.]+), wall (?P<wall_seconds>[\d.]+)s, "
    r"infer (?P<infer_samples_per_s>[\d.]+) samples/s")
TRAIN_LINE = re.compile(r"^step \d+/\d+ .*$", re.MULTILINE)


def number(text: str) -> float | None:
    return None if text == "-" else float(text)


def speed_pipelines(output: str) -> dict:
    """{pipeline: figures} from speed.py's log lines (its last line per pipeline)."""
    found = {}
    for m in SPEED_LINE.finditer(output):
        found[m["pipeline"]] = {k: number(v) for k, v in m.groupdict().items() if k != "pipeline"}
    return found


def last_evaluation(output: str) -> str | None:
    """budgetlora train's last `step N/M epoch ... val_acc ...` line."""
    lines = TRAIN_LINE.findall(output)
    return lines[-1] if lines else None
