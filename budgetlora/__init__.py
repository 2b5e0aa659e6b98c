"""budgetlora: fine-tune a frozen text encoder for classification with LoRA under a hard
budget of trainable parameters.

The modules follow the data: config -> data -> model / budget -> train -> evaluate -> predict,
with `cli` a thin layer over them. In a notebook:

    from budgetlora import load_config, train, evaluate_run, predict_file
    cfg = load_config("r6-qkv-a24", ["data.train=my.csv", "model.name=roberta-base"])
    metrics = train(cfg, "runs/first")
"""

__version__ = "0.1.0"  # first: deploy.export records it, and is imported below

from .adapters.budget import Breakdown, count, plan_from_config
from .config import Config, load_config, recipe_names
from .data import train_val_indices
from .errors import UserError
from .evaluation.metrics import evaluate_run
from .adapters.model import build_model, load_run
from .adapters.planner import fill, plan
from .evaluation.predict import predict_file
from .training.loop import Hooks, train
from .training.time_budget import plan_time_budget
from .deploy.export import export_run
from .deploy.predictor import load_predictor

__all__ = [
    "Breakdown",
    "Config",
    "Hooks",
    "UserError",
    "build_model",
    "count",
    "evaluate_run",
    "export_run",
    "load_config",
    "load_predictor",
    "load_run",
    "plan",
    "fill",
    "plan_from_config",
    "plan_time_budget",
    "predict_file",
    "recipe_names",
    "train",
    "train_val_indices",
]
