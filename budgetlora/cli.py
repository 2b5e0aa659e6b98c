"""Command line: a thin layer over the Python API (argparse in, API call, print out).

Every UserError becomes one line on stderr and exit status 2; so does a malformed command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, like every other bad input
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _add_set(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """--set, repeatable, collected in args.overrides."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar, help=help)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="bundled recipe name or YAML file (default: default)")
    _add_set(p, "KEY=VALUE", "override one config value, e.g. --set train.lr=3e-4 (repeatable)")


def _add_data_set_arg(p: argparse.ArgumentParser) -> None:
    """--set for commands that read data with a trained run's config (evaluate, predict)."""
    _add_set(p, "data.KEY=VALUE", "override a data setting, e.g. --set data.text_column=body (repeatable; data.* only)")


def _add_reading_set_arg(p: argparse.ArgumentParser) -> None:
    """--set for the augment commands: data settings for reading their input files."""
    _add_set(p, "KEY=VALUE", "data settings for reading the files, e.g. --set data.clean=standard")


def _add_model(p: argparse.ArgumentParser) -> None:
    """--model of the commands that count parameters from config.json alone (params, plan)."""
    p.add_argument("--model", help="hub id or local folder with config.json (sets model.name)")


def _add_num_labels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-labels", type=int, default=4, help="classes, unless data.label_names is set (default 4)")


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace an existing {what}")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_backend(p: argparse.ArgumentParser) -> None:
    """--backend of the commands that load a run or an export folder (evaluate, predict)."""
    from .deploy.predictor import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="torch / onnx / onnx-int8 (onnx: an export folder only; default: the best the folder holds)")
    _add_precision(p, "fp32")


def _add_precision(p: argparse.ArgumentParser, default: str) -> None:
    from .deploy.predictor import INFERENCE_PRECISIONS

    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default=default,
                   help="torch backend: fp32, bf16, or auto = bf16 where the CPU/GPU computes it natively "
                        "(default %(default)s)")


def _add_trust_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-pickle", action="store_true", help="allow .pkl data (unpickling runs code)")


def _cmd_train(args) -> int:
    from .config import load_config
    from .training.loop import train

    if args.resume and (args.recipe or args.overrides or args.time_budget is not None):
        raise UserError("--resume continues the run's saved config.yaml (its rows included); drop --recipe/--set/--time-budget")
    cfg = None if args.resume else load_config(args.recipe, args.overrides)
    if args.time_budget is not None:  # the whole command's seconds: start-up and imports count
        from . import rundir
        from .training.time_budget import plan_time_budget, process_seconds

        rundir.precheck(args.out, overwrite=args.overwrite, resume=False)  # refused now, not after measuring
        cfg = plan_time_budget(cfg, args.time_budget, time.time() - process_seconds(),
                               trust_pickle=args.trust_pickle).cfg
    train(cfg, args.out, overwrite=args.overwrite, resume=args.resume, trust_pickle=args.trust_pickle)
    return 0


def _cmd_probe(args) -> int:
    from .config import load_config
    from .training.probe import linear_probe

    cfg = load_config(args.recipe, args.overrides)
    result = linear_probe(cfg, args.out, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
                          log=(lambda m: None) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _cmd_params(args) -> int:
    from .adapters.budget import check, plan_from_config
    from .config import load_config
    from .adapters.model import check_max_length

    overrides = list(args.overrides) + ([f"model.name={args.model}"] if args.model else [])
    cfg = load_config(args.recipe, overrides)
    check_max_length(cfg.model)
    label_names = cfg.data.label_names or [str(i) for i in range(args.num_labels)]
    breakdown = plan_from_config(cfg, label_names)
    if args.json:
        print(json.dumps({"model": cfg.model.name, "recipe": cfg.recipe, "num_labels": len(label_names),
                          **breakdown.to_dict()}, indent=2))
    else:
        print(f"{cfg.model.name} + {cfg.adapter.method} r={cfg.adapter.r} on {cfg.adapter.targets}, "
              f"{len(label_names)} classes (recipe {cfg.recipe}):")
        print(breakdown.table())
    check(breakdown, cfg.budget.max_trainable)
    return 0


def _cmd_plan(args) -> int:
    from .config import load_config
    from .adapters.model import check_max_length

    overrides = list(args.overrides) + ([f"model.name={args.model}"] if args.model else [])
    if args.budget is not None:
        overrides.append(f"budget.max_trainable={args.budget}")
    cfg = load_config(args.recipe, overrides)
    check_max_length(cfg.model)
    label_names = cfg.data.label_names or [str(i) for i in range(args.num_labels)]
    if args.fill:
        from .adapters.planner import fill

        filled, cost = fill(cfg, label_names)
        if args.json:
            print(json.dumps(filled.to_dict(), indent=2))
        else:
            r = filled.adapter.r
            print(f"# {filled.adapter.method}: largest adapter.r that fits {filled.budget.max_trainable:,}: r={r} -> "
                  f"{cost.trainable(r):,} trainable (r={r + 1} would be {cost.trainable(r + 1):,})")
            print(filled.to_yaml(), end="")
        return 0
    from .adapters.planner import plan

    chosen = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    result = plan(cfg, label_names, method_names=chosen)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table(limit=args.limit))
    if not result.entries:
        raise UserError(f"no head, target set and method fits budget.max_trainable={result.budget:,}, even at r=1")
    return 0


def _cmd_evaluate(args) -> int:
    from . import files
    from .evaluation.metrics import evaluate_run

    if args.out:  # checked before the work, not after it
        files.check_new_file(args.out, overwrite=args.overwrite)
    result = evaluate_run(args.run_dir, args.data, trust_pickle=args.trust_pickle,
                          data_overrides=args.overrides, backend=args.backend, precision=args.precision,
                          adjust_prior=args.adjust_prior)
    if args.out:
        files.write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        low, high = result["accuracy_ci95"]
        print(f"{result['data']}: {result['n']} rows, accuracy {result['accuracy']:.4f} "
              f"(95% CI {low:.4f}-{high:.4f}), macro-F1 {result['macro_f1']:.4f}, loss {result['loss']:.4f}")
        if "ensemble" in result:
            print(f"  ensemble of {len(result['ensemble'])} runs: their class probabilities averaged")
        for name, row in result["per_class"].items():
            print(f"  {name:<20} precision {row['precision']:.3f} recall {row['recall']:.3f} "
                  f"f1 {row['f1']:.3f} n={row['support']}")
        if "label_shift" in result:
            shift = result["label_shift"]
            print(f"  corrected for label shift: accuracy {shift['accuracy_without_correction']:.4f} without; class mix "
                  "estimated on the file (labels unread) / trained on: "
                  + ", ".join(f"{name} {share:.3f}/{shift['training_prior'][name]:.3f}"
                              for name, share in shift["estimated_prior"].items()))
    return 0


def _cmd_predict(args) -> int:
    from .evaluation.predict import stream_predictions

    written = stream_predictions(args.run_dir, args.data, args.out, probabilities=args.probs,
                                 label_names_column=args.label_names, overwrite=args.overwrite,
                                 trust_pickle=args.trust_pickle, data_overrides=args.overrides,
                                 backend=args.backend, precision=args.precision, chunk_rows=args.chunk_rows,
                                 adjust_prior=args.adjust_prior)
    if written.target_prior is not None:
        print("class mix estimated on the file (EM), predictions corrected to it: "
              + ", ".join(f"{name} {share:.3f}" for name, share in written.target_prior.items()))
    if written.main_process:  # under accelerate launch, process 0 wrote the file
        members = f" (ensemble of {len(args.run_dir)} runs: class probabilities averaged)" if len(args.run_dir) > 1 else ""
        print(f"wrote {written.rows} predictions to {args.out}{members}")
    return 0


def _cmd_export(args) -> int:
    from .deploy.export import export_run

    formats = [f.strip() for group in (args.format or ["hf"]) for f in group.split(",") if f.strip()]
    export_run(args.run_dir, args.out, formats, overwrite=args.overwrite)
    return 0


def _cmd_quickstart(args) -> int:
    from .quickstart import quickstart
    from .training.time_budget import process_seconds

    budget = args.time_budget
    if budget is not None and budget > 0:  # the budget is the whole command's: start-up and imports count
        budget = max(1e-3, budget - process_seconds())
    quickstart(args.out, overwrite=args.overwrite, overrides=args.overrides, time_budget=budget)
    return 0


def _cmd_recipes(args) -> int:
    from .config import load_config, recipe_names

    for name in recipe_names():
        cfg = load_config(name)
        a, t = cfg.adapter, cfg.train
        length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epoch{'' if t.epochs == 1 else 's'}"
        print(f"{name:<18} {a.method} r={a.r} alpha={a.alpha:g} targets={a.targets} bias={a.bias} "
              f"lr={t.lr:g} {length} of batch {t.batch_size}, {t.scheduler}")
    return 0


def _cmd_data_inspect(args) -> int:
    from .config import load_config
    from .data.inspect import format_report, inspect_file

    overrides = list(args.overrides) + ([f"model.tokenizer={args.model}"] if args.model else [])
    report = inspect_file(args.file, load_config(args.recipe, overrides), examples=args.examples,
                          trust_pickle=args.trust_pickle)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_data_shift(args) -> int:
    from . import files
    from .data.shift import SHIFT_FILE, format_shift, shift_report

    if args.save and not args.run:
        raise UserError(f"--save writes RUN/{SHIFT_FILE} for the run report; give --run RUN, or use --out FILE")
    if args.out:  # checked before the work, not after it
        files.check_new_file(args.out, overwrite=args.overwrite)
    report = shift_report(args.train, args.target, run=args.run, model=args.model, data_overrides=args.overrides,
                          max_rows=args.max_rows, low_confidence=args.low_confidence, seed=args.seed,
                          trust_pickle=args.trust_pickle)
    print(json.dumps(report, indent=2) if args.json else format_shift(report))
    written = ([args.out] if args.out else []) + ([Path(args.run) / SHIFT_FILE] if args.save else [])
    for path in written:
        files.write_json(path, report)
    if written and not args.json:
        print(f"wrote {' and '.join(map(str, written))}"
              + (f" (`budgetlora report {args.run}` shows it)" if args.save else ""))
    return 0


def _cmd_augment_synonyms(args) -> int:
    from .data.augment import synonyms_file
    from .config import load_config

    protect = [w.strip() for w in (args.protect or "").split(",") if w.strip()]
    frame = synonyms_file(args.input, args.output, load_config(None, args.overrides).data, rate=args.rate,
                          copies=args.copies, protect=protect, seed=args.seed, overwrite=args.overwrite,
                          trust_pickle=args.trust_pickle)
    print(f"wrote {len(frame)} augmented rows to {args.output} (append with --set data.extra_train={args.output})")
    return 0


def _cmd_augment_generate(args) -> int:
    from .data.augment import generate_file
    from .config import load_config

    generate_file(
        args.train, args.unlabelled, args.out, model=args.model, prompts=args.prompts, per_class=args.per_class,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        classifier=args.classifier, min_confidence=args.min_confidence, seed=args.seed,
        data_cfg=load_config(None, args.overrides).data, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
        save_model=args.save_model,
    )
    return 0


def _cmd_sweep(args) -> int:
    from .training.sweep import load_spec, parse_grid_flag, run_sweep

    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected integers, e.g. --seeds 1,2,3") from None
    spec = load_spec(args.spec, recipe=args.recipe, set=args.overrides, grid=dict(map(parse_grid_flag, args.grid)),
                     seeds=seeds, metric=args.metric, search=args.search, n_trials=args.n_trials, storage=args.storage)
    summary = run_sweep(spec, args.out)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")
    failed = summary[summary["status"] == "failed"] if "status" in summary else summary.iloc[:0]
    if len(failed):
        print(f"budgetlora: {len(failed)} trial(s) failed: {', '.join(failed['trial'])}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args) -> int:
    from .evaluation.report import write_report

    paths = write_report(args.run_dir)
    print(f"wrote {paths['html']} (self-contained), {paths['markdown']} and {len(paths['plots'])} plots "
          f"in {paths['html'].parent / 'plots'}")
    return 0


def _cmd_compare(args) -> int:
    from .evaluation.compare import compare_runs, formatted, write_comparison

    frame = compare_runs(args.run_dirs, sort=args.sort)
    paths = write_comparison(frame, args.out)
    print(formatted(frame).to_string(index=False))
    print(f"wrote {paths['csv']}, {paths['markdown']} and {paths['plot']}")
    return 0


def _cmd_serve(args) -> int:
    from .deploy.server import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key, backend=args.backend, threads=args.threads,
        precision=args.precision, batching=not args.no_batching, max_batch_tokens=args.max_batch_tokens, batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue, max_client_batch=args.max_client_batch, max_payload=args.max_payload,
        engine=args.engine, replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        cpus_per_replica=args.cpus_per_replica, ray_max_batch_size=args.max_batch_size,
        ray_batch_wait_timeout_s=args.batch_wait_timeout_s, ray_address=args.ray_address)
    if args.engine == "ray":
        from .deploy.ray_serve import serve_ray

        serve_ray(args.path, settings)
    else:
        from .deploy.server import serve

        serve(args.path, settings)
    return 0


def _planned_by_default() -> str:
    """`plan --methods`'s default, read off the method registry: "all but qlora"."""
    from .adapters.registry import method_names

    left_out = method_names(planned=False)
    return f"all but {', '.join(left_out)}" if left_out else "all"


def _declare_train(sub) -> None:
    """`budgetlora train`: fine-tune under the budget into a run directory."""
    p = sub.add_parser("train", help="fine-tune under the budget into a run directory")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="run directory to create")
    _add_overwrite(p, "run directory")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="finish within SECONDS: the training rows (data.max_train_samples, a cap if set) are sized "
                   "to this machine's measured speed before training and written to config.yaml")
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_train)


def _declare_probe(sub) -> None:
    """`budgetlora probe`: the zero-adapter baseline, a method of its own."""
    p = sub.add_parser("probe", help="linear probe: frozen features + logistic regression on a recipe's rows (no fine-tuning)")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="folder for probe.json and probe_weights.npz (default: print only)")
    _add_overwrite(p, "probe.json")
    _add_trust_pickle(p)
    _add_json(p)
    p.set_defaults(func=_cmd_probe)


def _declare_params(sub) -> None:
    """`budgetlora params`: exact trainable-parameter breakdown from a config (no weights)."""
    p = sub.add_parser("params", help="exact trainable-parameter breakdown from a config (no weights)")
    _add_config_args(p)
    _add_model(p)
    _add_num_labels(p)
    _add_json(p)
    p.set_defaults(func=_cmd_params)


def _declare_plan(sub) -> None:
    """`budgetlora plan`: which head x targets x method x rank fit the budget (no weights); --fill: largest r."""
    p = sub.add_parser("plan", help="which head x targets x method x rank fit the budget (no weights); --fill: largest r")
    _add_config_args(p)
    _add_model(p)
    p.add_argument("--budget", type=int, help="trainable-parameter budget (sets budget.max_trainable)")
    _add_num_labels(p)
    p.add_argument("--fill", action="store_true",
                   help="print the config (recipe + --set) with the largest adapter.r that fits, as YAML")
    p.add_argument("--methods", help=f"comma-separated adapter methods to plan (default: {_planned_by_default()})")
    p.add_argument("--limit", type=int, default=40, help="table rows to show (0: all; --json lists all)")
    _add_json(p)
    p.set_defaults(func=_cmd_plan)


def _declare_evaluate(sub) -> None:
    """`budgetlora evaluate`: metrics of a finished run (or its export) on a labelled file."""
    p = sub.add_parser("evaluate", help="metrics of a finished run or an export folder on a labelled file")
    p.add_argument("run_dir", nargs="+", help="a run folder (budgetlora train --out) or an export folder; "
                   "several: their ensemble (class probabilities averaged)")
    _add_backend(p)
    p.add_argument("--data", required=True, help="labelled file or hub dataset (id:split)")
    _add_data_set_arg(p)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--adjust-prior", action="store_true",
                   help="score what predict --adjust-prior writes: the file's class mix estimated without its labels, "
                        "predictions corrected to it (docs/shift.md)")
    _add_overwrite(p, "--out file")
    _add_json(p)
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_evaluate)


def _declare_predict(sub) -> None:
    """`budgetlora predict`: write ID,Label predictions for a file, streamed in chunks; sharded
    under `accelerate launch` (each process a share of the chunks, one ordered output)."""
    from .evaluation.predict import CHUNK_ROWS

    p = sub.add_parser("predict", help="write ID,Label predictions for a file (streamed; shards under accelerate launch)")
    p.add_argument("run_dir", nargs="+", help="a run folder (budgetlora train --out) or an export folder; "
                   "several: their ensemble (class probabilities averaged)")
    _add_backend(p)
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS,
                   help=f"rows read and predicted at a time (default {CHUNK_ROWS}; memory grows with it, not with the file)")
    p.add_argument("--data", required=True, help="file or hub dataset (id:split); labels not needed")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--probs", action="store_true", help="add one probability column per class")
    p.add_argument("--label-names", action="store_true", help="add a LabelName column")
    p.add_argument("--adjust-prior", action="store_true",
                   help="label shift: estimate the file's class mix (EM, no labels read) and correct the predictions "
                        "from the run's training mix to it (docs/shift.md); reads the file twice")
    _add_data_set_arg(p)
    _add_overwrite(p, "--out file")
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_predict)


def _declare_export(sub) -> None:
    """`budgetlora export`: a finished run as merged transformers weights, ONNX, int8 ONNX."""
    p = sub.add_parser("export", help="export a finished run: merged transformers model (hf), onnx, onnx-int8")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="folder to write (config.json, weights, onnx/)")
    p.add_argument("--format", action="append", metavar="FORMAT",
                   help="hf, onnx or onnx-int8; repeat or comma-separate for several (default: hf)")
    _add_overwrite(p, "export folder")
    p.set_defaults(func=_cmd_export)


def _declare_quickstart(sub) -> None:
    """`budgetlora quickstart`: offline demo: real MiniLM on bundled AG News, train/evaluate/predict."""
    p = sub.add_parser("quickstart", help="offline demo: real MiniLM on bundled AG News, train/evaluate/predict")
    p.add_argument("--out", default="budgetlora-quickstart", help="folder for the run and predictions")
    _add_overwrite(p, "--out folder")
    _add_set(p, "KEY=VALUE", "change the minilm-quickstart recipe, e.g. --set train.seed=2 or "
             "--set train.precision=fp32 (repeatable; model.name and data.train are the bundled ones)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="finish within SECONDS: the training rows are sized to this machine's measured speed "
                   "(default: the recipe's 8,000 rows, whatever the time)")
    p.set_defaults(func=_cmd_quickstart)


def _declare_sweep(sub) -> None:
    """`budgetlora sweep`: several configs x seeds, one run each, one results table (resumable)."""
    p = sub.add_parser("sweep", help="several configs x seeds, one run each, one results table (resumable)")
    p.add_argument("spec", nargs="?", help="sweep YAML (recipe, set, trials, grid, seeds, metric, search, ...)")
    p.add_argument("--out", required=True, help="sweep folder (rerun the same sweep to continue it)")
    _add_config_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis, e.g. --grid adapter.r=4,8 (repeatable; axes are crossed)")
    p.add_argument("--seeds", help="comma-separated seeds, each trial runs once per seed (default 42)")
    p.add_argument("--metric", help="sort key: val_accuracy (default), val_macro_f1, val_loss, test_accuracy, ...")
    p.add_argument("--search", choices=["grid", "random", "optuna"], help="grid (default), random or optuna")
    p.add_argument("--n-trials", type=int, help="trials for random/optuna search")
    p.add_argument("--storage", help="Optuna storage URL (e.g. sqlite:///study.db) shared by several machines")
    p.set_defaults(func=_cmd_sweep)


def _declare_report(sub) -> None:
    """`budgetlora report`: write report.md and a self-contained report.html (plots) for a run."""
    p = sub.add_parser("report", help="write report.md and a self-contained report.html (plots) for a run")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_report)


def _declare_compare(sub) -> None:
    """`budgetlora compare`: finished runs side by side: table (CSV, Markdown) and accuracy-vs-cost plot."""
    p = sub.add_parser("compare", help="finished runs side by side: table (CSV, Markdown) and accuracy-vs-cost plot")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--sort", metavar="METRIC",
                   help="sort by run, trainable_params, train_seconds (ascending), best_val_accuracy, "
                        "val_accuracy, val_macro_f1 or test_accuracy (descending)")
    p.add_argument("--out", default="budgetlora-compare", help="folder for compare.csv/.md/.png (default: %(default)s)")
    p.set_defaults(func=_cmd_compare)


def _declare_recipes(sub) -> None:
    """`budgetlora recipes`: list the bundled recipes."""
    p = sub.add_parser("recipes", help="list the bundled recipes")
    p.set_defaults(func=_cmd_recipes)


def _declare_data(sub) -> None:
    """`budgetlora data`: look at a data file (inspect), or at a target file against the training data (shift)."""
    data_sub = sub.add_parser("data", help="look at a data file, or at how a target file differs from it").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser)
    p = data_sub.add_parser("inspect", help="class balance, token lengths, before/after cleaning examples")
    _add_config_args(p)
    p.add_argument("file", help="data file or hub dataset (id:split)")
    p.add_argument("--model", help="tokenizer to count tokens with (sets model.tokenizer)")
    p.add_argument("--examples", type=int, default=5, help="before/after cleaning examples to show (default 5)")
    _add_json(p)
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_data_inspect)

    from .data.shift import LOW_CONFIDENCE, MAX_ROWS, SHIFT_FILE

    p = data_sub.add_parser("shift", help="how far an unlabelled target file is from the training data")
    p.add_argument("--train", required=True, help="training data file (labels used for the prior if present)")
    p.add_argument("--target", required=True, help="target file, e.g. the unlabelled test set")
    p.add_argument("--run", help="a trained run: its model, reading settings, class mix and confidence on target")
    p.add_argument("--model", help="frozen encoder for the domain classifier (default: the run's, else model.name's default)")
    p.add_argument("--max-rows", type=int, default=MAX_ROWS,
                   help=f"rows per side through a model, sampled (default {MAX_ROWS}; 0: all)")
    p.add_argument("--low-confidence", type=float, default=LOW_CONFIDENCE,
                   help=f"top probability below which a row counts as low-confidence (default {LOW_CONFIDENCE})")
    p.add_argument("--seed", type=int, default=0, help="row samples, folds and bootstrap (default 0)")
    p.add_argument("--save", action="store_true", help=f"with --run: write RUN/{SHIFT_FILE} (the report's Shift section)")
    p.add_argument("--out", help="also write the JSON here")
    _add_overwrite(p, "--out file")
    _add_data_set_arg(p)
    _add_json(p)
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_data_shift)


def _declare_augment(sub) -> None:
    """`budgetlora augment`: write augmented training rows (synonyms, generation)."""
    aug_sub = sub.add_parser("augment", help="write augmented training rows (synonyms, generation)").add_subparsers(
        dest="augment_command", required=True, parser_class=_Parser)
    p = aug_sub.add_parser("synonyms", help="WordNet synonym copies of every row, to a CSV for data.extra_train")
    p.add_argument("input", help="labelled data file")
    p.add_argument("output", help="CSV to write (text, label, source)")
    p.add_argument("--rate", type=float, default=0.1, help="share of words replaced per copy (default 0.1)")
    p.add_argument("--copies", type=int, default=1, help="augmented copies per row (default 1)")
    p.add_argument("--protect", help="comma-separated words never replaced")
    p.add_argument("--seed", type=int, default=0)
    _add_reading_set_arg(p)
    _add_overwrite(p, "output file")
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_augment_synonyms)

    p = aug_sub.add_parser("generate", help="fine-tune a causal LM on in-domain text, generate labelled rows")
    p.add_argument("--train", required=True, help="labelled training file (classes, lengths, deduplication)")
    p.add_argument("--unlabelled", help="in-domain texts to fine-tune the LM on (e.g. the unlabelled test file)")
    p.add_argument("--out", required=True, help="CSV to write (text, label)")
    p.add_argument("--model", default="gpt2", help="causal LM: hub id or folder (default gpt2)")
    p.add_argument("--prompts", help="YAML/JSON {class: [prompt, ...]} (default: AG News prompts, else row openings)")
    p.add_argument("--per-class", type=int, default=100, help="rows to generate per class (default 100)")
    p.add_argument("--steps", type=int, default=200, help="LM fine-tuning steps (default 200; 0 = none)")
    p.add_argument("--batch-size", type=int, default=8, help="LM fine-tuning batch (default 8)")
    p.add_argument("--lr", type=float, default=5e-5, help="LM fine-tuning learning rate (default 5e-5)")
    p.add_argument("--max-length", type=int, default=128, help="LM tokens per text (default 128)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.2)
    p.add_argument("--classifier", help="a budgetlora run: keep rows it assigns to their class")
    p.add_argument("--min-confidence", type=float, default=0.0, help="with --classifier: least probability (default 0)")
    p.add_argument("--save-model", help="folder to save the fine-tuned LM in")
    p.add_argument("--seed", type=int, default=0)
    _add_reading_set_arg(p)
    _add_overwrite(p, "--out file")
    _add_trust_pickle(p)
    p.set_defaults(func=_cmd_augment_generate)


def _declare_serve(sub) -> None:
    """`budgetlora serve`: a run or export folder (or several: an ensemble) over HTTP (TEI's routes),
    dynamic batching; --engine ray."""
    from .deploy.predictor import BACKENDS
    from .deploy.server import ServeSettings

    d = ServeSettings()
    p = sub.add_parser("serve", help="a run or export folder over HTTP (TEI's /predict, /info, /health, /metrics)")
    p.add_argument("path", nargs="+", help="run folder (budgetlora train --out) or export folder (budgetlora export "
                   "--out); several: their ensemble (mean class probabilities; members of one model and max_length)")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port (default %(default)s)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (default: $BUDGETLORA_API_KEY)")
    p.add_argument("--backend", choices=BACKENDS, help="default: the best the folder holds")
    p.add_argument("--threads", type=int, help="intra-op threads for inference (default: the library's)")
    _add_precision(p, d.precision)
    p.add_argument("--no-batching", action="store_true", help="one request per model call (a baseline)")
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens,
                   help="padded tokens per model call (default %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long a batch waits to fill (default %(default)s ms)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="inputs waiting; past it 429 (default %(default)s)")
    p.add_argument("--max-client-batch", type=int, default=d.max_client_batch,
                   help="inputs per request; past it 413 (default %(default)s)")
    p.add_argument("--max-payload", type=int, default=d.max_payload, help="body bytes; past it 413 (default %(default)s)")
    p.add_argument("--engine", choices=["uvicorn", "ray"], default=d.engine, help="uvicorn (default) or Ray Serve")
    p.add_argument("--replicas", type=int, default=d.replicas, help="ray: fixed replica count (default %(default)s)")
    p.add_argument("--min-replicas", type=int, help="ray: autoscale from this many replicas (with --max-replicas)")
    p.add_argument("--max-replicas", type=int, help="ray: autoscale up to this many replicas")
    p.add_argument("--cpus-per-replica", type=float, default=d.cpus_per_replica, help="ray (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=d.ray_max_batch_size,
                   help="ray: @serve.batch max_batch_size (default %(default)s)")
    p.add_argument("--batch-wait-timeout-s", type=float, default=d.ray_batch_wait_timeout_s,
                   help="ray: @serve.batch batch_wait_timeout_s (default %(default)s)")
    p.add_argument("--ray-address", help="ray: join this cluster (auto, or HOST:PORT); default: a local Ray")
    p.set_defaults(func=_cmd_serve)

def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags; each command is declared by its own `_declare_*` function."""
    parser = _Parser(prog="budgetlora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for declare in (_declare_train, _declare_probe, _declare_params, _declare_plan, _declare_evaluate, _declare_predict, _declare_export, _declare_serve, _declare_quickstart, _declare_sweep, _declare_report, _declare_compare, _declare_recipes, _declare_data, _declare_augment):
        declare(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        print(f"budgetlora: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except OSError as e:  # disk full, permission denied, ... where no writer named its file
        from .files import os_error_line

        print(f"budgetlora: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("budgetlora: interrupted (a training run can continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
