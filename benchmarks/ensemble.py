#!/usr/bin/env python
"""What serving an ensemble buys and costs, against one of its members in the same run.

For runs of one recipe (seeds): each member's and the ensemble's accuracy on a held-out file
(`budgetlora.evaluate_run`, as `budgetlora evaluate RUN [RUN ...]` computes it), then the load test
of benchmarks/loadtest.py with batching on (`budgetlora serve FIRST` against
`budgetlora serve RUN RUN ...`), `--repeat` rounds interleaved so that a drifting machine hits both
alike. Nothing here trains: the runs and the held-out rows are yours (the held-out rows must be
rows none of the runs trained or selected on; the quickstart's evaluation file is such a file for
quickstart runs).

    python benchmarks/ensemble.py q1/run q2/run q3/run --threads 2 --out benchmarks/results/ensemble-serving.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadtest  # noqa: E402  (the sibling benchmark: its load, server start and machine record)

QUICKSTART_EVAL = Path(__file__).resolve().parent.parent / "budgetlora" / "assets" / "quickstart" / "eval.csv.gz"


def accuracies(runs: list[str], data: str) -> dict:
    """Accuracy (with its 95% interval) of each member and of their ensemble on `data`."""
    from budgetlora import evaluate_run

    def scored(run_dirs):
        result = evaluate_run(run_dirs, data)
        return {"accuracy": result["accuracy"], "accuracy_ci95": result["accuracy_ci95"], "n": result["n"]}

    members = {run: scored(run) for run in runs}
    return {"members": members, "ensemble": scored(runs),
            "mean_member_accuracy": round(float(np.mean([m["accuracy"] for m in members.values()])), 4)}


def serving(runs: list[str], *, n: int, concurrency: int, threads: int | None, repeat: int, max_seconds: float) -> dict:
    """Throughput and latency of the first member alone and of the ensemble, batching on."""
    texts = loadtest.load_texts()
    rounds = [{"served": name, **loadtest.serve_and_load(paths, texts, batching=True, n=n, concurrency=concurrency,
                                                         threads=threads, warmup=64, max_seconds=max_seconds)}
              for _ in range(repeat) for name, paths in (("one run", runs[:1]), ("ensemble", runs))]
    median = {name: float(np.median([r["throughput_rps"] for r in rounds if r["served"] == name]))
              for name in ("one run", "ensemble")}
    return {"rounds": rounds, "median_throughput_rps": median,
            "cost": round(median["one run"] / median["ensemble"], 2) if median["ensemble"] else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="two or more run folders of one recipe (seeds)")
    p.add_argument("--data", default=str(QUICKSTART_EVAL),
                   help="labelled held-out file (default: the quickstart's evaluation rows)")
    p.add_argument("-n", "--requests", type=int, default=512, help="requests per load (default %(default)s)")
    p.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent clients (default %(default)s)")
    p.add_argument("--threads", type=int, help="the server's --threads")
    p.add_argument("--repeat", type=int, default=2, help="interleaved one-run/ensemble rounds (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="wall-clock cap per load (default 120)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give two or more run folders")
    figures = {"data": args.data, "accuracy": accuracies(args.runs, args.data),
               "serving": serving(args.runs, n=args.requests, concurrency=args.concurrency, threads=args.threads,
                                  repeat=args.repeat, max_seconds=args.max_seconds)}
    loadtest.publish("ensemble.py", argv, figures, args.out)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
