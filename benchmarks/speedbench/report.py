"""Results: rates derived from each run, the mean per pipeline with ratios to the Trainer
pipelines, the Markdown tables, and the JSON report that --json writes."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from .common import LORA, OPTIM, REFERENCE_BATCH, cuda, log
from .machine import cpu_identity, cpu_model

MEAN_KEYS = ("loop_samples_per_s", "step_samples_per_s", "loop_tokens_per_s", "mfu", "peak_mem_train_mib",
             "peak_mem_pipeline_mib", "loop_seconds", "wall_seconds", "val_accuracy", "infer_samples_per_s",
             "overhead_ms_per_step", "tokens_per_sample", "other_load_cores", "padding_share")
FLOPS_FORMULA = ("4 x encoder non-embedding parameters per non-padding token (forward 2N + "
                 "activation-gradient backward 2N; frozen weights need no weight gradients)")


def derive(r: dict, peak_flops: float | None, flops_per_token: float) -> None:
    """Add samples/s, tokens/s, padding share, MFU and per-step overhead to one run."""
    loop = r.get("loop_seconds") or r.get("step_seconds")
    r["loop_samples_per_s"] = r["samples"] / loop
    r["step_samples_per_s"] = r["samples"] / r["step_seconds"] if r.get("step_seconds") else None
    r["loop_tokens_per_s"] = r["tokens"] / loop if r.get("tokens") else None
    r["tokens_per_sample"] = r["tokens"] / r["samples"] if r.get("tokens") else None
    r["padding_share"] = 1 - r["tokens"] / r["padded_tokens"] if r.get("tokens") and r.get("padded_tokens") else None
    r["mfu"] = r["loop_tokens_per_s"] * flops_per_token / peak_flops if peak_flops and r["loop_tokens_per_s"] else None
    if r.get("loop_seconds") and r.get("step_seconds"):
        r["overhead_ms_per_step"] = 1000 * (r["loop_seconds"] - r["step_seconds"]) / r["steps"]


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pipeline_row(name: str, rs: list[dict]) -> dict:
    """The mean over one pipeline's runs (seeds and repeats)."""
    row = {"pipeline": name, "seeds": [r["seed"] for r in rs], "batch_size": rs[0]["batch_size"],
           "precision": rs[0]["precision"], "precision_used": rs[0].get("precision_used"),
           "attention": rs[0].get("attention"), "group_by_length": rs[0]["group_by_length"],
           "pad_to_max": rs[0]["pad_to_max"], "lora_dropout": rs[0]["lora_dropout"],
           "steps": rs[0]["steps"], "samples": rs[0]["samples"]}
    for key in MEAN_KEYS:
        row[key] = mean(r.get(key) for r in rs)
    loop_rates = [r["loop_samples_per_s"] for r in rs]
    row["runs"] = len(rs)
    row["loop_samples_per_s_min"], row["loop_samples_per_s_max"] = min(loop_rates), max(loop_rates)
    row["train_other_load_cores"] = mean(r.get("train_other_load_cores") for r in rs)
    row["infer_other_load_cores"] = mean(r.get("infer_other_load_cores") for r in rs)
    row["infer_how"] = rs[0].get("infer_how")
    if rs[0].get("infer_variants"):
        row["infer_variants"] = {k: {m: (mean(r["infer_variants"][k][m] for r in rs) if m != "how" else v[m])
                                     for m in v} for k, v in rs[0]["infer_variants"].items()}
    return row


def summarise(runs: list[dict]) -> dict:
    """Mean over seeds per pipeline, and ratios to trainer-tuned and trainer-published."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["pipeline"], []).append(r)
    summary = {name: pipeline_row(name, rs) for name, rs in by_name.items()}
    for ref in ("trainer-tuned", "trainer-published", "trainer-tuned+bf16"):
        if ref in summary:
            for row in summary.values():
                for key in ("loop_samples_per_s", "step_samples_per_s", "infer_samples_per_s"):
                    a, b = row.get(key), summary[ref].get(key)
                    row[f"{key}_x_{ref}"] = a / b if a and b else None
    return summary


def fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def training_table(summary: dict) -> list[str]:
    head = ["pipeline", "batch", "prec", "group", "pad %", "steps", "samples", "loop smp/s", "step smp/s", "tok/s", "MFU",
            "peak mem MiB", "loop s", "wall s", "val acc", "x tuned", "x tuned bf16", "x published", "infer smp/s", "infer x tuned", "other load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in summary.values():
        spread = f" ({s['loop_samples_per_s_min']:.1f}-{s['loop_samples_per_s_max']:.1f})" if s["runs"] > 1 else ""
        used = s.get("precision_used") or s["precision"]
        precision = used if used == s["precision"] else f"{s['precision']}={used}"
        cells = [s["pipeline"], str(s["batch_size"]), precision, "yes" if s["group_by_length"] else "no",
                 fmt(s["padding_share"] and 100 * s["padding_share"], "{:.0f}"), str(s["steps"]), str(s["samples"]),
                 fmt(s["loop_samples_per_s"]) + spread,
                 fmt(s["step_samples_per_s"]), fmt(s["loop_tokens_per_s"], "{:.0f}"),
                 fmt(s["mfu"] and 100 * s["mfu"], "{:.1f}%"), fmt(s["peak_mem_train_mib"], "{:.0f}"),
                 fmt(s["loop_seconds"]), fmt(s["wall_seconds"]), fmt(s["val_accuracy"], "{:.4f}"),
                 fmt(s.get("loop_samples_per_s_x_trainer-tuned"), "{:.2f}x"),
                 fmt(s.get("loop_samples_per_s_x_trainer-tuned+bf16"), "{:.2f}x"),
                 fmt(s.get("loop_samples_per_s_x_trainer-published"), "{:.2f}x"),
                 fmt(s["infer_samples_per_s"]), fmt(s.get("infer_samples_per_s_x_trainer-tuned"), "{:.2f}x"),
                 fmt(s["train_other_load_cores"], "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def inference_table(summary: dict) -> list[str]:
    lines = ["| inference (validation rows) | how | samples/s | x Trainer.predict (trainer-tuned) | accuracy | other load |",
             "|---|---|---|---|---|---|"]
    ref = summary.get("trainer-tuned", {}).get("infer_samples_per_s")
    for s in summary.values():
        for label, v in (s.get("infer_variants") or {"": None}).items():
            rate = v["samples_per_s"] if v else s["infer_samples_per_s"]
            how = v["how"] if v else s["infer_how"]
            lines.append(f"| {s['pipeline']}{' (' + label + ')' if label else ''} | {how} | {fmt(rate)} | "
                         f"{fmt(rate / ref if ref and rate else None, '{:.2f}x')} | "
                         f"{fmt(v['accuracy'] if v else s['val_accuracy'], '{:.4f}')} | "
                         f"{fmt(v['other_load_cores'] if v else s['infer_other_load_cores'], '{:.2f}')} |")
    return lines


def format_tables(summary: dict, device: str, mem_kind: str) -> str:
    return ("\n".join(training_table(summary)) + "\n\n" + "\n".join(inference_table(summary))
            + f"\n\ndevice: {device}; peak memory: {mem_kind}; ratios are loop samples/s (infer: inference samples/s); "
            "loop = whole training loop, step = inside optimizer steps only; "
            "other load = CPU cores busy with other processes during training (noise indicator); "
            "with --repeat, loop smp/s shows mean (min-max)")


def build_report(args, device: str, model: dict, peak: tuple, mem_kind: str, runs: list[dict],
                 summary: dict, table: str) -> dict:
    """Everything --json writes. model: path, weights, source, encoder_nonembedding_params;
    peak: (TFLOP/s, how it was obtained)."""
    import peft
    import torch
    import transformers

    flops_per_token = 4 * model["encoder_nonembedding_params"]
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device,
        "cpu_model": cpu_model(),
        "cpu": cpu_identity(),
        "cuda": torch.cuda.get_device_name(0) if cuda() else None,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "model": {**model, "train_flops_per_token": flops_per_token, "flops_formula": FLOPS_FORMULA},
        "peak_tflops": peak[0],
        "peak_tflops_how": peak[1],
        "memory_measure": mem_kind,
        "recipe": {"lora": LORA, **OPTIM, "scheduler": "linear", "reference_batch": REFERENCE_BATCH},
        "args": vars(args),
        "summary": summary,
        "runs": runs,
        "table_markdown": table,
    }


def write_json(report: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"wrote {path}")
