"""Tracking: hand a run's metrics to an experiment tracker through Accelerate.

`train.tracker` picks one of Accelerate's trackers: `tensorboard` (default; event files in
RUN_DIR/tensorboard/), `mlflow` (logs where MLFLOW_TRACKING_URI points, ./mlruns by default),
`wandb` (your W&B account, or WANDB_MODE=offline), or `none`. Accelerate does the logging and
only ever logs from the main process; this module checks the choice before anything is
written, names the run, and flattens the config into the scalars trackers accept.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

TRACKERS = {  # name -> (pip package, Accelerate's availability check)
    "tensorboard": ("tensorboard", "is_tensorboard_available"),
    "mlflow": ("mlflow", "is_mlflow_available"),
    "wandb": ("wandb", "is_wandb_available"),
}


def accelerator_kwargs(tracker: str, out: Path) -> dict:
    """Accelerator(...) arguments for `tracker`; a UserError if it is not installed."""
    if tracker == "none":
        return {}
    import accelerate.utils

    package, check = TRACKERS[tracker]
    if not getattr(accelerate.utils, check)():
        raise UserError(f"train.tracker={tracker} needs the {package} package; `pip install {package}` "
                        f"or choose another with --set train.tracker=tensorboard|mlflow|wandb|none")
    return {"log_with": tracker, "project_dir": str(out)}


def start(accelerator, cfg, out: Path, resume_step: int = 0) -> None:
    """Open the tracker's run (main process only, inside Accelerate) with the config as hyperparameters."""
    tracker = cfg.train.tracker
    if tracker == "none":
        return
    init_kwargs = {
        # events land in RUN_DIR/tensorboard; a resumed run hides the events logged after its
        # checkpoint (the steps it will log again)
        "tensorboard": {"purge_step": resume_step + 1} if resume_step else {},
        "mlflow": {"run_name": out.name},
        "wandb": {"name": out.name},
    }
    project = "tensorboard" if tracker == "tensorboard" else "budgetlora"
    accelerator.init_trackers(project, config=flat_config(cfg), init_kwargs={tracker: init_kwargs[tracker]})


def flat_config(cfg) -> dict:
    """{"train.lr": 2e-4, "adapter.targets": "query,value", ...}: scalars only, as trackers want."""
    flat = {}
    for section, values in cfg.to_dict().items():
        if not isinstance(values, dict):
            flat[section] = str(values)
            continue
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                value = ",".join(map(str, value))
            elif value is None:
                value = "none"
            flat[f"{section}.{key}"] = value
    return flat
