"""Training in bf16: the frozen encoder stored once in bf16 with fp32 adapter/head masters, every
method trains, and `auto` picks and logs the precision and attention kernel the hardware calls for."""

import json

import pytest
import torch

from budgetlora.adapters.model import build_model, head_modules, load_run, store_frozen_encoder_in
from budgetlora.adapters.registry import method_names
from budgetlora.hardware import native_bf16_cpu
from budgetlora.training.loop import train

from .conftest import tiny_config

LABELS = ["a", "b", "c", "d"]
TRAINABLE_METHODS = [m for m in method_names() if m != "qlora"]  # qlora needs a GPU and bitsandbytes


@pytest.mark.parametrize("head", ["standard", "standard_lora", "mean"])
def test_frozen_encoder_weights_go_to_bf16_and_adapter_and_head_stay_fp32(head, tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"head.type={head}")
    model = build_model(cfg, LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert store_frozen_encoder_in(model, torch.bfloat16) > 0
    heads = tuple(head_modules(model.get_base_model()))
    for name, param in model.named_parameters():
        short = name.removeprefix("base_model.model.")
        if param.requires_grad or short.startswith(heads):
            assert param.dtype == torch.float32, name
            assert torch.equal(param, before[name]), name  # masters and the head's saved base untouched
        elif param.is_floating_point():
            assert param.dtype == torch.bfloat16, name
            torch.testing.assert_close(param.float(), before[name], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", [m if m in {"lora", "dora", "vera"} else pytest.param(m, marks=pytest.mark.slow)
                                    for m in TRAINABLE_METHODS])
def test_every_method_trains_in_bf16_with_eager_attention_on_a_cpu(method, tiny_model_dir, synthetic_csv, tmp_path):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"adapter.method={method}", "train.precision=bf16",
                      "train.max_steps=30", "train.eval_every=10")
    metrics = train(cfg, tmp_path / "run", log=lambda message: None)
    assert (metrics["precision"], metrics["attention"]) == ("bf16", "eager")
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    model, *_ = load_run(tmp_path / "run")  # saved adapters are fp32 and reload into an fp32 model
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


def test_auto_precision_and_attention_are_chosen_for_the_hardware_and_logged(tiny_model_dir, synthetic_csv, tmp_path):
    lines = []
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.max_steps=2", "train.eval_every=2", "train.report=false",
                      "train.precision=auto")
    metrics = train(cfg, tmp_path / "run", log=lines.append)
    native = native_bf16_cpu() and not torch.cuda.is_available()
    assert metrics["precision"] == ("bf16" if native else "fp32")
    assert metrics["attention"] == ("default" if torch.cuda.is_available() else "eager")  # eager on every CPU
    line = next(m for m in lines if m.startswith("precision "))
    assert ("has native bf16" in line) if native else ("no native bf16" in line or "GPU" in line)


def test_an_explicit_attention_kernel_is_used(tiny_model_dir, synthetic_csv, tmp_path):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.max_steps=2", "train.eval_every=2", "train.report=false",
                      "model.attention=sdpa", "train.precision=bf16")
    assert train(cfg, tmp_path / "run", log=lambda m: None)["attention"] == "sdpa"


def test_a_module_with_a_trainable_part_stays_exact_since_the_adapter_saves_it_whole(tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=bitfit", "adapter.layernorm_bias=true",
                      "adapter.targets=all_linear")
    model = build_model(cfg, LABELS)
    store_frozen_encoder_in(model, torch.bfloat16)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    adapted = [m for m in norms if m.bias.requires_grad]
    assert adapted and all(m.weight.dtype == torch.float32 for m in adapted)  # saved whole: exact
    assert all(m.weight.dtype == torch.bfloat16 for m in norms if not m.bias.requires_grad)


def test_one_process_trains_a_bf16_run_then_an_fp32_one(tiny_model_dir, synthetic_csv, tmp_path):
    """Accelerate keeps one process-wide precision; a notebook or a sweep changes it between runs."""
    for precision in ("bf16", "fp32", "bf16"):
        cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.max_steps=2", "train.eval_every=2",
                          f"train.precision={precision}")
        assert train(cfg, tmp_path / precision, overwrite=True, log=lambda m: None)["precision"] == precision
