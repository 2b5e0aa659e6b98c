"""summary.json: issue 15's GPU targets, each with its value and met true/false (false, with
measured false, when its stage gave no figure), every stage's status and seconds, the data and
models used, and per speed stage the figures per pipeline (training and inference samples/s, MFU,
peak memory, accuracy, ratios to the Trainer pipelines) with speed.py's own tables."""

from __future__ import annotations

from .plan import TARGETS

PIPELINE_KEYS = ("precision_used", "batch_size", "steps", "samples", "loop_samples_per_s", "step_samples_per_s",
                 "loop_tokens_per_s", "mfu", "peak_mem_train_mib", "val_accuracy", "infer_samples_per_s",
                 "loop_samples_per_s_x_trainer-tuned", "loop_samples_per_s_x_trainer-published",
                 "infer_samples_per_s_x_trainer-tuned", "wall_seconds")


def speed_rows(record: dict) -> dict:
    """{pipeline: speed.py's mean row} from a speed stage's embedded report, else (a stage that
    overran its cap) the figures its log printed."""
    return (record.get("report") or {}).get("summary") or record.get("from_log") or {}


def value_of(target: str, stages: dict):
    """The figure a target is judged on, or None where its stage gave none."""
    budgetlora = speed_rows(stages.get("speed-roberta", {})).get("budgetlora", {})
    if target == "roberta_base_train_samples_per_s":
        return budgetlora.get("loop_samples_per_s")
    if target == "roberta_base_infer_samples_per_s":
        return budgetlora.get("infer_samples_per_s")
    run = stages.get("default-run", {})
    return run.get("command_wall_seconds") if run.get("status") == "ok" else None


def targets(stages: dict) -> list[dict]:
    out = []
    for name, stage, what, op, threshold in TARGETS:
        value = value_of(name, stages)
        met = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        row = {"name": name, "target": f"{op} {threshold:,}", "value": value, "met": met,
               "measured": value is not None, "stage": stage, "what": what}
        if value is None and stages.get(stage, {}).get("status") == "timeout":
            row["note"] = f"{stage} stopped at its cap of {stages[stage].get('timeout_s')} s"
        out.append(row)
    return out


def build(stages: dict, dry_run: bool, seconds: float, finished: bool) -> dict:
    env, run = stages.get("env", {}), stages.get("default-run")
    speed = {name: {"pipelines": {p: {k: row.get(k) for k in PIPELINE_KEYS} for p, row in speed_rows(r).items()},
                    "source": "speed.py JSON" if r.get("report") else "speed.py log lines (no JSON)",
                    "table_markdown": (r.get("report") or {}).get("table_markdown")}
             for name, r in stages.items() if name.startswith("speed-")}
    return {
        "dry_run": dry_run,
        "finished": finished,
        "seconds": round(seconds, 1),
        "targets": targets(stages),
        "stages": {name: {"status": r.get("status"), "seconds": r.get("seconds")} for name, r in stages.items()},
        "data": env.get("data"),
        "sizes": env.get("sizes"),
        "models": {k: {"path": m.get("path"), "how": m.get("how")} for k, m in (env.get("models") or {}).items()},
        "speed": speed,
        "default_run": {k: run.get(k) for k in ("status", "command_wall_seconds", "val_accuracy", "last_evaluation")}
        if run else None,
    }
