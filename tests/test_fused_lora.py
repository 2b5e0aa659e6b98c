"""Fused LoRA layers (training/fused_lora.py): PEFT's outputs and gradients, fewer passes, PEFT's files."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from budgetlora.training.fused_lora import use_fused_lora
from budgetlora.training.loop import train

from .conftest import tiny_config


def tiny_lora_model(tiny_model_dir, **lora):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"], **lora)
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():  # B = 0 at init would hide B's gradient path
        if "lora_B" in name:
            nn.init.normal_(param, std=0.05)
    return model


def loss_and_grads(model, seed=1, autocast=False):
    ids = torch.randint(3, 1000, (6, 11), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(seed)  # the same dropout masks for both models
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    loss = nn.functional.cross_entropy(logits.float(), torch.arange(6) % 4)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return logits.detach().float(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_layers_give_peft_outputs_and_gradients(tiny_model_dir, dropout):
    peft_model = tiny_lora_model(tiny_model_dir, lora_dropout=dropout)
    fused_model = copy.deepcopy(peft_model)
    lora_layers = sum(1 for n, _ in peft_model.named_modules() if n.endswith(("query", "key", "value", "dense")))
    assert use_fused_lora(fused_model) == lora_layers > 0
    peft_model.train(), fused_model.train()
    logits, grads = loss_and_grads(peft_model)
    fused_logits, fused_grads = loss_and_grads(fused_model)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == fused_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_under_bf16_autocast_the_master_gradients_stay_fp32_and_close(tiny_model_dir):
    peft_model = tiny_lora_model(tiny_model_dir)
    fused_model = copy.deepcopy(peft_model)
    use_fused_lora(fused_model)
    logits, grads = loss_and_grads(peft_model, autocast=True)
    fused_logits, fused_grads = loss_and_grads(fused_model, autocast=True)
    torch.testing.assert_close(fused_logits, logits, rtol=0.05, atol=0.05)
    for name, grad in fused_grads.items():
        assert grad.dtype == torch.float32, name
        assert torch.nn.functional.cosine_similarity(grad.flatten(), grads[name].flatten(), dim=0) > 0.99, name


def test_merged_dora_and_disabled_layers_keep_peft_forward(tiny_model_dir):
    assert use_fused_lora(tiny_lora_model(tiny_model_dir, use_dora=True)) == 0  # a LoRA variant: PEFT's own
    model = tiny_lora_model(tiny_model_dir)
    use_fused_lora(model)
    model.eval()
    ids = torch.randint(3, 1000, (2, 7))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert not torch.allclose(adapted, plain)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_training_fuses_on_cpu_and_steps_as_peft_does(tiny_model_dir, synthetic_csv, tmp_path):
    from safetensors.torch import load_file

    weights, logs = {}, {}
    for fused in ("true", "false"):
        logs[fused] = []
        cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.max_steps=5", "train.eval_every=5", f"train.fused_lora={fused}")
        train(cfg, tmp_path / fused, log=logs[fused].append)
        weights[fused] = load_file(tmp_path / fused / "adapter" / "adapter_model.safetensors")
    assert any(line.startswith("fused LoRA layers: ") for line in logs["true"])
    assert not any(line.startswith("fused LoRA layers") for line in logs["false"])
    assert any("lora_B" in name for name in weights["true"])
    for name, tensor in weights["false"].items():  # rounding apart, the same five AdamW steps
        torch.testing.assert_close(weights["true"][name], tensor, rtol=1e-3, atol=1e-5, msg=name)
