#!/usr/bin/env python
"""The one-call GPU check of issue 15 (run it through benchmarks/gpu.sh): in one call of at most
9 minutes on an H200, the speed benchmark on roberta-base shapes and on MPNet, and the default
recipe's whole run on MPNet, every result written as JSON under OUT.

Stages, in order, each under its own time cap (and all under --budget seconds):
  env            nvidia-smi, torch and package versions; the MPNet folder joined from the carried
                 parts (.device-carry/mpnet, packed by ../shared/tools/pack_model.py); the data
                 file (the 27,190 AG News rows, else the bundled sample, said so) and the sizes.
  speed-roberta  benchmarks/speed.py on random-init roberta-base shapes (tests/fixtures config):
                 trainer-published, trainer-tuned, budgetlora, budgetlora+b128.
  speed-mpnet    benchmarks/speed.py on MPNet (real weights): trainer-published, trainer-tuned, budgetlora.
  default-run    `budgetlora train` with the default recipe, model.name = MPNet, data.train = the
                 data file: wall time of the command and validation accuracy (its metrics.json).
Files under OUT: env.json, speed-roberta.json, speed-mpnet.json, default-run.json (each with
status ok / failed / timeout / skipped, seconds, command and log tail), summary.json (issue 15's
targets, each with met true/false; rewritten after every stage) and gpu-check.log (all output).

--dry-run runs the same stages on a CPU with tiny random RoBERTa and MPNet encoders and a few
rows (about a minute on 2 cores); every file says dry_run: true. The test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # budgetlora from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpucheck

from gpucheck import inputs, progress, summary  # noqa: E402
from gpucheck.plan import DRY, DRY_DEFAULT_RUN, DRY_SPEED_FLAGS, GPU, PIPELINES, ROBERTA_PIPELINES, fit  # noqa: E402
from gpucheck.runner import Check  # noqa: E402

BENCH = Path(__file__).resolve().parent


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The one-call GPU check of issue 15 (see the module docstring).")
    p.add_argument("--dry-run", action="store_true", help="the same stages on a CPU, tiny models and sizes")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check", help="results folder (default $OUT)")
    p.add_argument("--data", default=None, help=f"training file (default: the first of {inputs.DATA_CANDIDATES} "
                   "that exists); the bundled sample if it is absent")
    p.add_argument("--parts", default=None, help="packed MPNet folder (default .device-carry/mpnet; --dry-run: "
                   "none, a tiny MPNet instead)")
    p.add_argument("--mpnet", default=None, help="an MPNet folder ready to load (skips joining the parts)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check (default 520; --dry-run 1500)")
    p.add_argument("--workdir", default=None, help="models and runs (default: a temporary folder, removed)")
    return p.parse_args(argv)


def prepare_models(check: Check, args, work: Path) -> dict:
    """{roberta, mpnet: {path, how, ok}}: what each stage loads."""
    if args.dry_run:
        roberta = {"path": str(inputs.tiny_encoder("roberta", work / "tiny-roberta")), "ok": True,
                   "how": "tiny random RoBERTa (2 layers, 64 wide), random-init again by speed.py"}
    else:
        roberta = {"path": str(inputs.ROBERTA_FIXTURE), "ok": True, "how": "roberta-base config, random init"}
    if args.mpnet:
        mpnet = {"path": args.mpnet, "ok": Path(args.mpnet, "config.json").is_file(), "how": "--mpnet folder"}
    elif args.parts or not args.dry_run:
        parts = Path(args.parts or inputs.REPO / ".device-carry" / "mpnet")
        target = work / "mpnet" if args.dry_run else inputs.MPNET_TARGET
        joined = inputs.assemble_mpnet(parts, target, check.log)
        mpnet = {"path": str(target), "ok": joined["ok"], "how": "joined from packed parts", "assembly": joined}
    else:
        mpnet = {"path": str(inputs.tiny_encoder("mpnet", work / "tiny-mpnet")), "ok": True,
                 "how": "tiny random MPNet (2 layers, 64 wide) with the roberta-base tokenizer"}
    return {"roberta": roberta, "mpnet": mpnet}


def env_stage(check: Check, args, work: Path) -> dict:
    env_file = work / "env-info.json"
    record = check.run("env", [sys.executable, str(BENCH / "gpucheck" / "envinfo.py"), str(env_file)], 60)
    record["environment"] = json.loads(env_file.read_text()) if env_file.is_file() else None
    t0 = time.monotonic()
    record["models"] = prepare_models(check, args, work)
    record["data"] = inputs.choose_data(args.data or inputs.default_data())
    record["setup_seconds"] = round(time.monotonic() - t0, 2)
    plan = DRY if args.dry_run else GPU
    record["sizes"] = fit(plan, record["data"]["rows"])
    if record["data"]["note"]:
        check.log(record["data"]["note"])
    return record


def speed_command(setup: dict, model: str, pipelines: str, json_path: Path, work: Path, dry_run: bool) -> list[str]:
    s, m = setup["sizes"], setup["models"][model]
    return [sys.executable, str(BENCH / "speed.py"), "--model", m["path"],
            *(["--random-init"] if model == "roberta" else []), "--data", setup["data"]["path"],
            "--rows", str(s["rows"]), "--val-size", str(s["val"]), "--epochs", str(s["epochs"]),
            "--published-samples", str(s["published"]), "--eval-batch-size", str(s["eval_batch"]),
            "--pipelines", pipelines, "--json", str(json_path), "--workdir", str(work / f"speed-{model}"),
            *(DRY_SPEED_FLAGS if dry_run else [])]


def speed_stage(check: Check, setup: dict, model: str, pipelines: str, cap: float, work: Path) -> dict:
    """speed.py on one model; if the whole list fails (not a timeout), budgetlora alone once more."""
    name, json_path = f"speed-{model}", work / f"speed-{model}.json"
    if not setup["models"][model]["ok"]:
        return {"status": "skipped", "reason": f"no {model} model: {setup['models'][model]}"}
    record = check.run(name, speed_command(setup, model, pipelines, json_path, work, check.dry_run), cap)
    if record["status"] == "failed" and pipelines != "budgetlora" and cap - record["seconds"] >= 60:
        first = {k: record[k] for k in ("status", "returncode", "seconds", "log_tail")}
        record = check.run(f"{name} (budgetlora alone)", speed_command(
            setup, model, "budgetlora", json_path, work, check.dry_run), cap - record["seconds"])
        record.update(first_attempt=first, note=f"{pipelines} failed; budgetlora rerun alone")
    record["from_log"] = progress.speed_pipelines(check.output)  # all there is if it overran its cap
    if record["status"] == "ok" and json_path.is_file():
        record["report"] = json.loads(json_path.read_text())
    return {**record, "model": setup["models"][model], "pipelines": pipelines}


def default_run_stage(check: Check, setup: dict, cap: float, work: Path) -> dict:
    """`budgetlora train` (default recipe) on MPNet and the data file, a cold token cache."""
    mpnet, run_dir = setup["models"]["mpnet"], work / "default-run"
    if not mpnet["ok"]:
        return {"status": "skipped", "reason": f"no MPNet model: {mpnet}"}
    overrides = [f"model.name={mpnet['path']}", f"data.train={setup['data']['path']}",
                 *(DRY_DEFAULT_RUN if check.dry_run else [])]
    command = [sys.executable, "-m", "budgetlora", "train", *[a for o in overrides for a in ("--set", o)],
               "--out", str(run_dir)]
    record = check.run("default-run", command, cap, env={"BUDGETLORA_CACHE": str(work / "cache-default-run")})
    record.update(command_wall_seconds=record["seconds"], overrides=overrides, model=mpnet,
                  last_evaluation=progress.last_evaluation(check.output))
    metrics = run_dir / "metrics.json"
    if record["status"] == "ok" and metrics.is_file():
        record["metrics"] = json.loads(metrics.read_text())
        record["val_accuracy"] = record["metrics"]["val"]["accuracy"]
    return record


def main(argv=None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = DRY if args.dry_run else GPU
    check = Check(Path(args.out), args.budget or plan.budget, args.dry_run, inputs.REPO)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}

    def stage(name: str, make, finished: bool = False) -> dict:
        """Run one stage and save its record (an error in this script's own code becomes the
        record, so the stages after it still run), then summary.json as it stands."""
        try:
            record = make()
        except Exception:  # noqa: BLE001 -- the device call is too dear to lose to one stage
            record = {"status": "error", "error": traceback.format_exc()[-3000:]}
            check.log(f"{name}: error\n{record['error']}")
        stages[name] = check.write(name, record)
        report = summary.build(stages, check.dry_run, time.monotonic() - check.t0, finished)
        (check.out / "summary.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        return stages[name]

    def after_setup(run):
        return lambda: run(setup) if setup.get("sizes") else {"status": "skipped", "reason": "the env stage failed"}

    check.log(f"{'dry run' if args.dry_run else 'GPU check'}: results in {check.out}, work in {work}")
    try:
        setup = stage("env", lambda: env_stage(check, args, work))
        stage("speed-roberta", after_setup(
            lambda s: speed_stage(check, s, "roberta", ROBERTA_PIPELINES, plan.speed_caps[0], work)))
        stage("speed-mpnet", after_setup(lambda s: speed_stage(check, s, "mpnet", PIPELINES, plan.speed_caps[1], work)))
        stage("default-run", after_setup(lambda s: default_run_stage(check, s, plan.default_cap, work)), finished=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    final = json.loads((check.out / "summary.json").read_text())
    for name, r in final["speed"].items():
        print(f"\n{name}\n{r['table_markdown'] or '(no table)'}")
    print("\n" + json.dumps({"stages": final["stages"], "targets": final["targets"]}, indent=1))
    return 0 if all(s["status"] == "ok" for s in final["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
