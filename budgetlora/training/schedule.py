"""Learning-rate schedule: the scheduler that training steps, and the exact rate of every step
(which the run report plots without re-running anything)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import Config


def scheduler(cfg: Config, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = cfg.train.warmup
    warmup_steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.train.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def lr_schedule(cfg: Config, total_steps: int) -> np.ndarray:
    """The learning rate of each optimiser step 1..total_steps: the scheduler above, evaluated exactly."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    factor = scheduler(cfg, optimizer, total_steps).lr_lambdas[0]  # a LambdaLR; step s uses factor(s - 1)
    return np.array([cfg.train.lr * factor(s) for s in range(total_steps)])
