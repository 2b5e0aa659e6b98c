"""The CPU dropout: same Bernoulli law and scaling as torch's, swapped in only where it should be."""

import torch
from torch import nn

from budgetlora import cpu_dropout
from budgetlora.cpu_dropout import CheapMaskDropout


def test_masks_drop_p_and_keep_the_expectation():
    torch.manual_seed(0)
    drop = CheapMaskDropout(0.1).train()
    x = torch.ones(2_000_000, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.001  # 4.7 standard errors
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.002
    y.sum().backward()  # gradient flows through kept entries only, scaled like the forward
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.allclose(x.grad[y != 0], torch.full_like(x.grad[y != 0], 1 / 0.9))


def test_eval_mode_and_p0_are_identity_and_masks_follow_the_seed():
    x = torch.randn(64, 32)
    assert CheapMaskDropout(0.3).eval()(x) is x
    assert CheapMaskDropout(0.0).train()(x) is x
    assert torch.equal(CheapMaskDropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(7)
    a = CheapMaskDropout(0.5).train()(x)
    torch.manual_seed(7)
    b = CheapMaskDropout(0.5).train()(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, CheapMaskDropout(0.5).train()(x))


def test_install_swaps_plain_dropouts_with_p_and_mode_kept(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).train()
    plain = [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]
    ps = sorted(m.p for m in plain)
    x = torch.randint(5, 50, (2, 9))
    model.eval()
    before = model(input_ids=x).logits
    assert cpu_dropout.install(model) == len(plain) > 0
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    swapped = [m for m in model.modules() if type(m) is CheapMaskDropout]
    assert sorted(m.p for m in swapped) == ps and not any(m.training for m in swapped)
    assert torch.equal(model(input_ids=x).logits, before)  # eval: nothing changes
    assert cpu_dropout.install(model) == 0  # idempotent
