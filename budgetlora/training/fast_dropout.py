"""Dropout for training on a CPU, with masks drawn from numpy's PCG64: same math as torch's.

Why by hand: torch's CPU dropout draws one Mersenne-Twister number per element, one element
after another (`aten::bernoulli_`; only on Intel CPUs does it hand the draw to MKL), which was
36% of a bf16 training step of MiniLM + LoRA on a 2-core AMD EPYC (docs/speed.md). Neither torch
nor transformers offers another generator for it. Here one PCG64 stream per mask gives 16 random
bits per element (about 0.6 ns each), and torch's vectorised elementwise ops apply the mask:
4x faster per call. The drop probability is exact to 1/65536 (p = 0.1 drops 6,554 of 65,536).

Each mask's stream is seeded from torch's generator, so masks remain a function of the seed
torch was given: the loop's per-step `torch.manual_seed` makes them a function of the step, and
a resumed run draws the same masks as the run it continues.

`use_fast_dropout(model)` swaps every `nn.Dropout` of the model (embeddings, encoder layers, head,
the adapters' own) for `FastDropout`, and BERT-style models' eager attention (transformers calls
`nn.functional.dropout` on the attention probabilities itself) for `eager_attention`, registered
with transformers' AttentionInterface: transformers' eager computation with this mask.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ATTENTION = "budgetlora_eager"  # the attention implementation's registered name
_BITS = 16


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """keep / (1 - p) for each element (0 where dropped), in `dtype`."""
    n = int(np.prod(shape))
    seed = int(torch.randint(0, 2**62, (1,)))  # from torch's generator: seeded runs stay reproducible
    words = np.random.PCG64(seed).random_raw((n + 3) // 4)  # four 16-bit draws per 64-bit word
    draws = torch.from_numpy(words.view(np.int16)[:n]).view(shape)
    dropped = round(p * 2**_BITS)  # draws below the threshold are dropped
    mask = torch.empty(shape, dtype=dtype)  # compared straight into `dtype`: one pass, no bool tensor
    torch.ge(draws, dropped - 2 ** (_BITS - 1), out=mask)
    return mask.mul_(1.0 / (1.0 - p)).to(device)


def drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """nn.functional.dropout with the fast mask on a CPU (torch's own elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    return x * dropout_mask(x.shape, p, x.dtype, x.device)


class FastDropout(nn.Dropout):
    """nn.Dropout (same p, same state) whose mask comes from `dropout_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop(x, self.p, self.training)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers' eager attention (softmax(QK^T * scaling + mask) V), dropout by `drop`."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = drop(weights, dropout, module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def register_attention() -> None:
    """Make ATTENTION a transformers attention implementation (eager's masks); idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(ATTENTION, eager_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap the model's dropouts for the fast ones (in place; dropout has no weights, so nothing
    saved changes); returns how many were swapped. Eager attention becomes `eager_attention`."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            swapped += 1
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "eager":
        register_attention()
        base.set_attn_implementation(ATTENTION)
    return swapped
