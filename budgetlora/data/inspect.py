"""Inspect a data file: class balance, token-length distribution, and what cleaning does to it.

`budgetlora data inspect FILE` prints this; `inspect_file` returns it as a JSON-ready dict.
Lengths are counted in tokens of the chosen tokenizer (special tokens included, not
truncated), after cleaning. With no `data.clean` configured the examples show what the
`standard` cleaning would change.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from .clean import Cleaner, length_bounds, resolve_steps
from ..config import Config
from . import tokenize

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def inspect_file(source: str, cfg: Config, *, examples: int = 5, trust_pickle: bool = False) -> dict:
    from . import read_table
    from ..adapters.model import load_tokenizer

    raw = read_table(source, dataclasses.replace(cfg.data, clean=None), need_labels=False, trust_pickle=trust_pickle)
    steps = resolve_steps(cfg.data.clean)
    cleaner = Cleaner(steps or resolve_steps(["standard"]))
    cleaned = cleaner.apply(raw.texts)
    used = cleaned if steps else raw.texts  # what a run with this config would see
    tokenizer_name = cfg.model.tokenizer or cfg.model.name
    lengths = np.array([len(t) for t in tokenize(used, load_tokenizer(tokenizer_name), 1_000_000)])

    report = {"source": source, "rows": len(raw)}
    if raw.labels is not None:
        counts = Counter(str(v) for v in raw.labels)
        report["classes"] = {name: {"rows": n, "share": n / len(raw)} for name, n in sorted(counts.items())}
    report["tokens"] = {
        "tokenizer": tokenizer_name,
        "min": int(lengths.min()),
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "percentiles": {str(p): float(np.percentile(lengths, p)) for p in PERCENTILES},
        "max_length": cfg.model.max_length,
        "over_max_length": float((lengths > cfg.model.max_length).mean()),
    }
    if cfg.data.length_filter:
        lo, hi = length_bounds(lengths, cfg.data.length_filter)
        report["length_filter"] = {"percentiles": list(cfg.data.length_filter), "tokens": [lo, hi],
                                   "rows_dropped": int(((lengths < lo) | (lengths > hi)).sum())}
    changed = [i for i, (a, b) in enumerate(zip(raw.texts, cleaned)) if a != b]
    report["cleaning"] = {
        "steps": list(cleaner.steps),
        "configured": bool(steps),
        "rows_changed": len(changed),
        "examples": [{"row": i, "before": raw.texts[i], "after": cleaned[i]} for i in changed[:examples]],
    }
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['source']}: {report['rows']:,} rows"]
    if "classes" in report:
        lines.append("classes:")
        lines += [f"  {name:<20} {c['rows']:>8,}  {c['share']:6.1%}" for name, c in report["classes"].items()]
    t = report["tokens"]
    pct = "  ".join(f"p{p} {v:g}" for p, v in t["percentiles"].items())
    lines += [f"length in tokens ({t['tokenizer']}): min {t['min']}  {pct}  max {t['max']}  mean {t['mean']:.1f}",
              f"  {t['over_max_length']:.1%} of rows longer than model.max_length={t['max_length']} (truncated)"]
    if "length_filter" in report:
        f = report["length_filter"]
        lines.append(f"length filter {f['percentiles']}: keeps {f['tokens'][0]:g}-{f['tokens'][1]:g} tokens, "
                     f"drops {f['rows_dropped']:,} rows (training rows only, when training)")
    c = report["cleaning"]
    which = "data.clean" if c["configured"] else "not configured; what `standard` would do"
    lines.append(f"cleaning ({which}: {', '.join(c['steps'])}): {c['rows_changed']:,} rows changed")
    for ex in c["examples"]:
        lines += [f"  row {ex['row']}", f"    before: {ex['before']}", f"    after:  {ex['after']}"]
    return "\n".join(lines)
