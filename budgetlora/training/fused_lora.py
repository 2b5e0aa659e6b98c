"""LoRA layers for training on a CPU: base and adapter in one autograd Function, output written once.

Why by hand: PEFT's LoRA Linear computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as
separate tensors of the layer's full output width (B's product, its scaled copy, the sum), and
autograd's backward adds the scaling pass and a second full-width input gradient. On a CPU those
elementwise passes over (tokens x width) tensors cost as much as the adapter's small matmuls: in a
MiniLM-L6 training step with LoRA r=8 on all linear layers (batch 32 x 52 tokens, fp32, Zen 3)
LoRA made the step ~50% slower than the same backward without it, and `aten::add` / `aten::mul`
on the 1,536-wide FFN tensors were a quarter of that (docs/speed.md). Neither PEFT nor torch fuses
them; torch.compile did not pay on a CPU (docs/speed.md). Here the base product is written once and
B's product is accumulated into it by BLAS (`addmm_`, the scaling as its alpha); the backward
writes one input gradient, into which the adapter's part is accumulated the same way. Same
parameters, same PEFT adapter files; gradients equal PEFT's to rounding (tests/test_fused_lora.py).

The rank-r intermediates are kept r-major, (r, rows) rather than (rows, r): the products that read
a full-width activation and write a rank-r result (A x, B^T g, and B's gradient) ran 1.5-5x faster
in that layout on a Zen 3 CPU (BLAS handles a skinny left operand better than a skinny right one),
which made the whole MiniLM step 6-10% faster (docs/speed.md).

`use_fused_lora(model)` rebinds `forward` of every plain LoRA Linear (one active adapter, an
`nn.Linear` base, no DoRA or other variant); anything else, and a merged or disabled layer, keeps
PEFT's own forward. Under autocast (bf16) it computes in the autocast dtype, as PEFT's layer does.
"""

from __future__ import annotations

import types

import torch
from torch import nn


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s (d A^T) B^T, with d = dropout(x) (or x itself when there is no dropout)."""

    @staticmethod
    def forward(ctx, x, dropped, weight, bias, lora_a, lora_b, scaling: float):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            d2 = x2 if dropped is None else dropped.reshape(-1, x.shape[-1]).to(dtype)
            weight, lora_a, lora_b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            adapted_t = lora_a @ d2.t()  # (r, rows): r-major, as the module docstring says
            out = x2 @ weight.t() if bias is None else torch.addmm(bias.to(dtype), x2, weight.t())
            out.addmm_(adapted_t.t(), lora_b.t(), alpha=scaling)  # into the base product: no second full-width tensor
        ctx.save_for_backward(d2, adapted_t, weight, lora_a, lora_b)
        ctx.scaling, ctx.x_shape, ctx.separate_dropout = scaling, x.shape, dropped is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        d2, adapted_t, weight, lora_a, lora_b = ctx.saved_tensors
        wants_x, wants_dropped = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad_dropped = None
        with torch.autocast(grad.device.type, enabled=False):
            g2 = grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
            grad_adapted_t = (lora_b.t() @ g2.t()).mul_(ctx.scaling)  # (r, rows)
            grad_a = grad_adapted_t @ d2
            grad_b = (adapted_t @ g2).mul_(ctx.scaling).t()
            if wants_x:  # not for the first layer's input, which nothing trainable precedes
                grad_x = g2 @ weight  # the frozen base's part of the input gradient
                if not ctx.separate_dropout:
                    grad_x.addmm_(grad_adapted_t.t(), lora_a)  # the adapter's part, accumulated in place
                grad_x = grad_x.view(ctx.x_shape)
            if wants_dropped:
                grad_dropped = (grad_adapted_t.t() @ lora_a).view(ctx.x_shape)
        # autograd casts each gradient to its input's dtype (fp32 master weights under bf16 autocast)
        return grad_x, grad_dropped, None, None, grad_a, grad_b, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or self.disable_adapters or self.merged:
        return type(self).forward(self, x, *args, **kwargs)  # PEFT's own path
    name = self.active_adapters[0]
    dropout = self.lora_dropout[name]
    dropped = None if isinstance(dropout, nn.Identity) else dropout(x)
    base = self.base_layer
    return LoraLinearFunction.apply(x, dropped, base.weight, base.bias, self.lora_A[name].weight,
                                    self.lora_B[name].weight, float(self.scaling[name]))


def fusable(module: nn.Module) -> bool:
    """A plain LoRA Linear this module can run: one active adapter, an nn.Linear base, no variant."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(module) is not LoraLinear or not isinstance(module.base_layer, nn.Linear) or module.fan_in_fan_out:
        return False
    names = module.active_adapters
    return len(names) == 1 and names[0] in module.lora_A and names[0] not in getattr(module, "lora_variant", {})


def use_fused_lora(model: nn.Module) -> int:
    """Run every fusable LoRA Linear of `model` through LoraLinearFunction; returns how many."""
    layers = [m for m in model.modules() if fusable(m)]
    for layer in layers:
        layer.forward = types.MethodType(_fused_forward, layer)
    return len(layers)
