"""Cheaper dropout on the CPU: the same masks' distribution, drawn from 15-bit integers.

Why by hand: torch's CPU dropout draws its mask with `bernoulli_` into a float tensor and then
scales it, which costs about a quarter of a MiniLM + LoRA training step on a 2-core CPU (see the
profile in docs/speed.md). Drawing int16 values with `random_` (uniform on 0..32767) and keeping
those >= round(p * 32768) gives the same Bernoulli masks, with p rounded to a multiple of
1/32768, at about half the cost forward and backward. On CUDA torch's fused dropout is already
cheap, so training swaps these in on the CPU only (`train.fast_dropout`).
"""

from __future__ import annotations

import torch
from torch import nn


class CheapMaskDropout(nn.Dropout):
    """nn.Dropout whose training-time mask comes from int16 `random_`; identical in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return torch.zeros_like(x)
        threshold = round(self.p * 32768)
        keep = torch.empty(x.shape, dtype=torch.int16, device=x.device).random_() >= threshold
        return torch.where(keep, x, 0.0) * (1.0 / (1.0 - self.p))


def install(model: nn.Module) -> int:
    """Swap every plain nn.Dropout with p > 0 in `model` for CheapMaskDropout; returns how many.

    Modules that read `.p` (e.g. attention that passes it to scaled_dot_product_attention) still
    see the same value, and dropout has no parameters, so saved adapters are unchanged.
    """
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                fast = CheapMaskDropout(child.p, inplace=False)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped += 1
    return swapped
