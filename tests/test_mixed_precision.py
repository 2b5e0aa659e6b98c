"""Training in bf16: the frozen encoder stored once in bf16 with fp32 adapter/head masters, every
method trains, and `auto` picks and logs the precision and attention kernel the hardware calls for."""

import json

import pytest
import torch

from budgetlora.adapters.model import attention_dropout, build_model, head_modules, load_run, store_frozen_encoder_in
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


def test_auto_attention_follows_the_rows_length_on_a_cpu():
    """fp32 on a CPU: SDPA from SDPA_FROM_TOKENS (measured faster there and no L x L weights kept),
    eager below; bf16 keeps eager (its SDPA backward is slower); GPUs keep the library's default."""
    from budgetlora import hardware

    long, short = hardware.SDPA_FROM_TOKENS, hardware.SDPA_FROM_TOKENS - 1
    assert hardware.attention("auto", "cpu", "fp32", long, 0.0).value == "sdpa"
    assert hardware.attention("auto", "cpu", "fp32", short, 0.0).value == "eager"
    assert hardware.attention("auto", "cpu", "fp32", None, 0.0).value == "eager"
    assert hardware.attention("auto", "cpu", "fp32", long, 0.1).value == "eager"  # SDPA's math fallback
    assert hardware.attention("auto", "cpu", "fp32", long, None).value == "eager"  # unknown dropout
    assert hardware.attention("auto", "cpu", "bf16", long, 0.0).value == "eager"
    assert hardware.attention("auto", "cuda", "fp32", long, 0.0).value == "default"
    assert hardware.attention("eager", "cpu", "fp32", long, 0.0).value == "eager"


def test_typical_length_is_where_half_the_tokens_are():
    from budgetlora.hardware import typical_length

    assert typical_length([10] * 90 + [500] * 10) == 500  # 5,000 of 5,900 tokens are in the long rows
    assert typical_length([10] * 99 + [500]) == 10  # one long row does not swing it
    assert typical_length([7]) == 7 and typical_length([]) == 0


def test_a_run_on_long_rows_trains_with_sdpa_on_a_cpu_in_fp32(tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    """The loop hands the training rows' typical length to the choice: rows past the threshold
    (here lowered to the synthetic rows' length) train with SDPA and the log says why."""
    from budgetlora import hardware

    if torch.cuda.is_available():
        pytest.skip("the choice by length is a CPU one")
    lines = []
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.max_steps=2", "train.eval_every=2", "train.report=false",
                      "train.precision=fp32", "model.encoder_dropout=0")
    assert train(cfg, tmp_path / "short", log=lines.append)["attention"] == "eager"
    dropout = tiny_config(tiny_model_dir, synthetic_csv, "train.max_steps=2", "train.eval_every=2",
                          "train.report=false", "train.precision=fp32")  # the tiny model's own attention dropout
    assert attention_dropout(dropout.model) > 0
    monkeypatch.setattr(hardware, "SDPA_FROM_TOKENS", 4)
    lines.clear()
    assert train(cfg, tmp_path / "long", log=lines.append)["attention"] == "sdpa"
    assert any(m.startswith("attention sdpa (auto: on a CPU in fp32 on rows of about") for m in lines), lines
    assert train(dropout, tmp_path / "long-dropout", log=lambda m: None)["attention"] == "eager"


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
