"""The adapter-method registry: a method added by `register_method` alone is validated by
load_config, counted exactly, planned, trained, saved and reloaded like a built-in one; a
method's constraints (AdaLoRA's target_r <= r) are config errors."""

import json

import pytest
import torch

from budgetlora import build_model, count, fill, load_config, load_run, plan, train
from budgetlora.adapters.planner import planned_methods
from budgetlora.adapters.registry import METHODS, MethodSpec, method_names, register_method, unregister_method
from budgetlora.errors import UserError

from .conftest import tiny_config

LABELS = ["money", "sports", "tech", "world"]  # the synthetic task's classes, as a run infers them
NAME = "test-lora"
ALPHA, R = 24, 4  # r6-qkv-a24 with tiny_config's adapter.r
QKV = 2 * 3  # query, key, value in the tiny model's 2 layers, each Linear(64, 64)


def double_alpha_lora(a, placement):
    """A LoRA whose update is scaled by 2 * alpha / r: its builder is visibly the one used."""
    import peft

    return peft.LoraConfig(r=a.r, lora_alpha=2 * a.alpha, lora_dropout=a.dropout, **placement.common())


@pytest.fixture
def fake_method():
    """`test-lora` registered for one test (the steps its after_step hook saw), then unregistered."""
    steps = []
    spec = register_method(MethodSpec(NAME, build=double_alpha_lora, after_step=lambda model, step: steps.append(step)))
    yield spec, steps
    unregister_method(NAME)


def fake_config(model_dir, train_csv, *extra):
    return tiny_config(model_dir, train_csv, f"adapter.method={NAME}", *extra)


def test_a_registered_method_is_accepted_and_its_unread_keys_refused(fake_method, tiny_model_dir, synthetic_csv):
    assert NAME in METHODS and method_names()[-1] == NAME
    assert fake_config(tiny_model_dir, synthetic_csv).adapter.method == NAME
    for key, value in (("bias", "all"), ("rank_pattern", "{value: 8}"), ("layernorm_bias", "true")):
        with pytest.raises(UserError, match=f"adapter.{key}.* not supported by adapter.method={NAME}"):
            fake_config(tiny_model_dir, synthetic_csv, f"adapter.{key}={value}")


def test_an_unregistered_method_is_refused_by_the_config(tiny_model_dir, synthetic_csv):
    assert NAME not in METHODS  # the fixture cleaned up after the tests that used it
    with pytest.raises(UserError, match=f"adapter.method: '{NAME}' is not allowed; choose one of lora,"):
        fake_config(tiny_model_dir, synthetic_csv)


def test_a_registered_method_is_counted_exactly(fake_method, tiny_model_dir, synthetic_csv):
    model = build_model(fake_config(tiny_model_dir, synthetic_csv), LABELS)
    breakdown = count(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert breakdown.trainable == trainable == model.get_nb_trainable_parameters()[0]
    assert breakdown.adapter == QKV * R * (64 + 64) and breakdown.adapted_modules == QKV
    query = model.get_submodule("base_model.model.roberta.encoder.layer.1.attention.self.query")
    assert query.scaling["default"] == 2 * ALPHA / R  # built by the registered builder


def test_a_registered_method_is_planned_and_filled(fake_method, tiny_model_dir, synthetic_csv):
    cfg = fake_config(tiny_model_dir, synthetic_csv)
    assert NAME in planned_methods()
    result = plan(cfg, LABELS, budget=5_000, heads=["linear"])
    mine = {(e.targets, e.top_layers): e for e in result.entries if e.method == NAME}
    lora = {(e.targets, e.top_layers): e for e in result.entries if e.method == "lora"}
    assert mine and {k: (e.r, e.trainable) for k, e in mine.items()} == {k: (e.r, e.trainable) for k, e in lora.items()}
    e = mine[("attention", None)]
    at_r = fake_config(tiny_model_dir, synthetic_csv, "head.type=linear", f"adapter.r={e.r}")
    assert count(build_model(at_r, LABELS, meta=True)).trainable == e.trainable <= 5_000
    filled, cost = fill(fake_config(tiny_model_dir, synthetic_csv, "head.type=linear"), LABELS, budget=5_000)
    assert filled.adapter.r == e.r and cost.trainable(e.r) == e.trainable  # fill re-counts on a built model


def test_a_registered_method_trains_with_its_hooks_saves_and_reloads(fake_method, tiny_model_dir, synthetic_csv,
                                                                     tmp_path):
    _, steps = fake_method
    out = tmp_path / "run"
    cfg = fake_config(tiny_model_dir, synthetic_csv, "head.type=mean", "train.max_steps=12", "train.eval_every=6")
    metrics = train(cfg, out, log=lambda message: None)
    assert steps == list(range(12))  # the loop called the method's after_step through the registry
    assert metrics["trainable_params"] == json.loads((out / "budget.json").read_text())["trainable"] \
        == count(build_model(cfg, LABELS, meta=True)).trainable
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["lora_alpha"]) == ("LORA", R, 2 * ALPHA)
    unmerged, _, _, _ = load_run(out, merge=False)
    merged, _, _, _ = load_run(out)
    assert any(p.abs().sum() > 0 for n, p in unmerged.named_parameters() if "lora_B" in n)  # trained off zero
    ids = torch.randint(5, 1000, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_adalora_target_r_above_r_is_refused_by_load_config_and_lowered_by_fill(tiny_model_dir, synthetic_csv):
    with pytest.raises(UserError) as err:
        load_config("r6-qkv-a24", ["adapter.method=adalora", "adapter.r=4", "adapter.target_r=5"])
    assert "adapter.target_r=5 is above adapter.r=4" in str(err.value) and "\n" not in str(err.value)
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=adalora", "adapter.r=8", "adapter.target_r=8",
                      "head.type=linear")
    filled, _ = fill(cfg, LABELS, budget=3_000)  # P, Q and E of 6 modules: 6 * 129 per rank + the 260 of the head
    assert (filled.adapter.r, filled.adapter.target_r) == (3, 3)


def test_register_method_refuses_a_taken_name_and_an_unknown_module_kind():
    with pytest.raises(ValueError, match="already registered"):
        register_method(MethodSpec("lora", build=double_alpha_lora))
    with pytest.raises(ValueError, match="adapts"):
        MethodSpec(NAME, build=double_alpha_lora, adapts="conv")
    assert METHODS["lora"].build is not double_alpha_lora
