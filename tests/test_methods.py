"""Every adapter method: exact counts on roberta-base, trains on the tiny model, reloads to equal logits."""

import importlib.util
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from budgetlora.adapters import methods
from budgetlora.adapters.budget import count
from budgetlora.adapters.registry import method_names
from budgetlora.config import load_config
from budgetlora.errors import UserError
from budgetlora.adapters.model import build_model, load_adapter, load_run, merge_and_unload, prepare_head, save_adapter, trainable_state

from .conftest import ROBERTA_BASE, perturbed_model, tiny_config

AG_NEWS = ["World", "Sports", "Business", "Sci/Tech"]
HEAD = 593_668  # roberta-base standard head: dense 768x768+768, out_proj 768x4+4
ROBERTA_FROZEN = 124_645_632 - (768 * 768 + 768)
QKV = 36  # query, key, value in 12 layers, each Linear(768, 768)
R = 4

# adapter parameters on q,k,v of roberta-base at r=4, from each method's own formula
EXPECTED_ADAPTER = {
    "lora": QKV * R * (768 + 768),
    "rslora": QKV * R * (768 + 768),
    "pissa": QKV * R * (768 + 768),
    "olora": QKV * R * (768 + 768),
    "qlora": QKV * R * (768 + 768),
    "dora": QKV * (R * (768 + 768) + 768),  # + magnitude vector (out)
    "loha": QKV * 2 * R * (768 + 768),  # two low-rank pairs
    "lokr": QKV * (24 * 24 + R * (32 + 32)),  # 768 = 24 x 32: w1 (24x24) full, w2 = (32xr)(rx32)
    "adalora": QKV * (R * (768 + 768) + R),  # P, Q and the singular values E, at the peak rank
    "vera": QKV * (768 + R),  # scaling vectors b (out) and d (r); the projections are frozen buffers
    "ia3": QKV * 768,
    "bitfit": QKV * 768,  # one bias vector per targeted Linear
    "layernorm": 25 * 2 * 768,  # 2 LayerNorms per layer + the embeddings' one, weight and bias
}
BUILT_IN = method_names()  # the registry's methods at collection time
TRAINABLE_METHODS = [m for m in BUILT_IN if m != "qlora"]  # qlora needs a GPU and bitsandbytes


def roberta(*overrides):
    return load_config("r6-qkv-a24", [f"model.name={ROBERTA_BASE}", *overrides])


def built(cfg, **kwargs):
    model = build_model(cfg, AG_NEWS, meta=True, **kwargs)
    breakdown = count(model, cfg.budget.max_trainable)
    assert breakdown.trainable == model.get_nb_trainable_parameters()[0]  # PEFT's own count
    return breakdown, model


def test_every_method_is_covered():
    assert set(EXPECTED_ADAPTER) == set(BUILT_IN)


@pytest.mark.parametrize("method", BUILT_IN)
def test_exact_count_of_every_method_on_roberta_base(method):
    b, model = built(roberta(f"adapter.method={method}", f"adapter.r={R}"))
    assert b.adapter == EXPECTED_ADAPTER[method]
    assert b.trainable == EXPECTED_ADAPTER[method] + HEAD
    assert b.head == HEAD and b.biases == 0 and b.other == 0
    assert b.frozen == ROBERTA_FROZEN  # AdaLoRA's ranknum and VeRA's projections are not parameters of the model
    assert b.adapted_modules == (25 if method == "layernorm" else QKV)


def test_vera_projections_are_shared_frozen_buffers():
    b, model = built(roberta("adapter.method=vera", "adapter.r=16"))
    tuner = model.base_model
    assert tuple(tuner.vera_A["default"].shape) == (16, 768) and tuple(tuner.vera_B["default"].shape) == (768, 16)
    assert not any("vera_A" in n or "vera_B" in n for n, _ in model.named_parameters())
    assert b.adapter == QKV * (768 + 16)


def test_ia3_scales_the_input_of_ffn_modules():
    b, _ = built(roberta("adapter.method=ia3", "adapter.targets=ffn"))
    assert b.adapter == 12 * (768 + 3072)  # intermediate.dense in=768, output.dense in=3072 (feedforward)


def test_bitfit_on_all_linear_is_every_linear_bias_of_the_encoder():
    b, _ = built(roberta("adapter.method=bitfit", "adapter.targets=all_linear"))
    assert b.adapter == 12 * (4 * 768 + 3072 + 768)


LAYERNORMS = 25  # 2 per layer + the embeddings' one
EVERY_LINEAR_BIAS = 12 * (4 * 768 + 3072 + 768)


@pytest.mark.parametrize("overrides, adapter, biases", [
    (["adapter.targets=all_linear"], EVERY_LINEAR_BIAS, LAYERNORMS * 768),  # BitFit as published: 102,144
    (["adapter.top_layers=2"], 2 * 3 * 768, 2 * 2 * 768),  # the embeddings' LayerNorm only for all layers
])
def test_bitfit_with_layernorm_biases_counts_exactly_and_the_planner_agrees(overrides, adapter, biases):
    from budgetlora.adapters.planner import config_cost, plan

    cfg = roberta("adapter.method=bitfit", "adapter.layernorm_bias=true", *overrides)
    b, model = built(cfg)  # also checks against PEFT's get_nb_trainable_parameters
    assert (b.adapter, b.biases, b.head, b.other) == (adapter, biases, HEAD, 0)
    assert b.trainable == adapter + biases + HEAD
    assert b.frozen == ROBERTA_FROZEN - biases  # the LayerNorm weights stay frozen (and counted once)
    frozen_weights = [n for n, p in model.named_parameters() if "LayerNorm" in n and ".modules_to_save." in n
                      and not p.requires_grad]
    assert len(frozen_weights) == biases // 768 and all(n.endswith(".weight") for n in frozen_weights)
    assert config_cost(cfg, AG_NEWS).trainable() == b.trainable
    targets = cfg.adapter.targets
    entry = next(e for e in plan(cfg, AG_NEWS, budget=10**7, heads=["standard"], method_names=["bitfit", "ia3"],
                                 target_sets=[targets], layer_sets=[cfg.adapter.top_layers]).entries
                 if e.method == "bitfit")
    assert entry.trainable == b.trainable
    assert config_cost(roberta("adapter.method=bitfit", *overrides), AG_NEWS).trainable() == adapter + HEAD


def test_rank_pattern_alpha_pattern_and_layer_selection_count_exactly():
    b, model = built(roberta("adapter.r=4", "adapter.rank_pattern={value: 8}", "adapter.alpha_pattern={value: 64}"))
    assert b.adapter == 12 * (4 + 4 + 8) * 1536
    value = model.get_submodule("base_model.model.roberta.encoder.layer.5.attention.self.value")
    query = model.get_submodule("base_model.model.roberta.encoder.layer.5.attention.self.query")
    assert (value.r["default"], value.scaling["default"]) == (8, 64 / 8)
    assert (query.r["default"], query.scaling["default"]) == (4, 24 / 4)
    b, model = built(roberta("adapter.r=4", "adapter.top_layers=3", "adapter.targets=all_linear"))
    assert b.adapted_modules == 18 and b.adapter == 3 * R * (4 * 1536 + 2 * (768 + 3072))
    assert {n.split(".layer.")[1].split(".")[0] for n in model.peft_config["default"].target_modules} == {"9", "10", "11"}
    b, model = built(roberta("adapter.method=loha", "adapter.r=4", "adapter.layers=[0, -1]"))
    assert b.adapted_modules == 6 and b.adapter == 6 * 2 * R * 1536
    b, _ = built(roberta("adapter.method=layernorm", "adapter.top_layers=2"))
    assert b.adapter == 2 * 2 * 2 * 768  # the embeddings' LayerNorm only when all layers are chosen


def test_adalora_budget_is_its_peak_count():
    b, model = built(roberta("adapter.method=adalora", "adapter.r=8", "adapter.target_r=2"), total_steps=500)
    config = model.peft_config["default"]
    assert (config.init_r, config.target_r, config.total_step, config.tinit, config.tfinal) == (8, 2, 500, 50, 100)
    assert b.adapter == QKV * (8 * 1536 + 8)  # init_r, not target_r: masked ranks stay parameters


@pytest.mark.parametrize("overrides, message", [
    (["adapter.method=ia3", "adapter.rank_pattern={value: 8}"], "rank_pattern is not supported by adapter.method=ia3"),
    (["adapter.layers=[1]", "adapter.top_layers=1"], "both set"),
    (["adapter.method=loha", "adapter.bias=all"], "adapter.bias=all is not supported by adapter.method=loha"),
    (["adapter.rank_pattern={value: 0}"], "must be > 0"),
    (["adapter.method=nope"], "adapter.method: 'nope' is not allowed"),
    (["adapter.layernorm_bias=true"], "layernorm_bias=true is a bitfit setting"),
    (["adapter.method=adalora", "adapter.r=4", "adapter.target_r=6"], "target_r=6 is above adapter.r=4"),
])
def test_bad_method_settings_are_refused_by_the_config(overrides, message):
    with pytest.raises(UserError, match=message):
        roberta(*overrides)


@pytest.mark.parametrize("overrides, message", [
    (["adapter.top_layers=13"], "this model has 12 layers"),
    (["adapter.layers=[12]"], "out of range"),
    (["adapter.method=adalora", "adapter.tinit=0.5", "adapter.tfinal=0.5"], "leave no steps"),
    (["adapter.method=layernorm", "head.type=standard_lora"], "LayerNorms only"),
])
def test_bad_method_settings_are_refused_at_build(overrides, message):
    with pytest.raises(UserError, match=message):
        build_model(roberta(*overrides), AG_NEWS, meta=True)


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes and a GPU are here: QLoRA can run")
def test_qlora_without_gpu_or_bitsandbytes_is_a_clear_error(tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=qlora")
    with pytest.raises(UserError, match="adapter.method=qlora needs .*(bitsandbytes|CUDA GPU).*use adapter.method=lora"):
        build_model(cfg, AG_NEWS)
    b, _ = built(roberta("adapter.method=qlora"))  # counting needs neither
    assert b.trainable == QKV * 6 * 1536 + HEAD


# ---------------------------------------------------------------- saving and reloading


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    ids[0, 7:] = 1
    return dict(input_ids=ids, attention_mask=mask)


def _perturbed(cfg):
    return perturbed_model(cfg, AG_NEWS)


def _plain_peft(tiny_model_dir, folder, head="standard"):
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    prepare_head(base, head)
    return PeftModel.from_pretrained(base, str(folder)).eval()


@pytest.mark.parametrize("head", ["standard", pytest.param("standard_lora", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_every_method_reloads_with_plain_peft_to_equal_logits(method, head, tiny_model_dir, synthetic_csv, tmp_path):
    if method == "layernorm" and head == "standard_lora":
        pytest.skip("layernorm has no adapter for the head's Linear (refused at build)")
    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"adapter.method={method}", "adapter.targets=all_linear",
                      f"head.type={head}")
    model = _perturbed(cfg)
    with torch.no_grad():
        expected = model(**_batch()).logits
        save_adapter(model, tmp_path)
        reloaded = _plain_peft(tiny_model_dir, tmp_path)
        torch.testing.assert_close(reloaded(**_batch()).logits, expected, rtol=0, atol=1e-5)
        merged = merge_and_unload(reloaded)
        torch.testing.assert_close(merged(**_batch()).logits, expected, rtol=0, atol=1e-5)


def test_bitfit_layernorm_biases_train_and_reload_with_plain_peft_to_equal_logits(tiny_model_dir, synthetic_csv,
                                                                                   tmp_path):
    """Only the biases move (the LayerNorm weights stay as pretrained), and a plain PEFT reload and
    the merged model give the trained model's logits."""
    from safetensors.torch import load_file

    from budgetlora.training.loop import train

    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=bitfit", "adapter.layernorm_bias=true",
                      "adapter.targets=all_linear", "train.max_steps=10", "train.eval_every=10", "train.lr=5e-2")
    metrics = train(cfg, tmp_path / "run", log=lambda message: None)
    norms = {n: m for n, m in AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
             .named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert len(norms) == 5  # 2 layers x 2 + the embeddings'
    assert metrics["trainable_params"] == 2 * (4 * 64 + 128 + 64) + 5 * 64 + (64 * 64 + 64 + 64 * 4 + 4)
    saved = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    for name, norm in norms.items():
        key = f"base_model.model.{name}"  # PEFT saves a modules_to_save copy under the module's own name
        assert torch.equal(saved[f"{key}.weight"], norm.weight.detach())  # frozen: as pretrained
        assert not torch.equal(saved[f"{key}.bias"], norm.bias.detach())  # trained
    reloaded = _plain_peft(tiny_model_dir, tmp_path / "run" / "adapter")
    unmerged, _, _, _ = load_run(tmp_path / "run", merge=False)
    merged, _, _, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        expected = unmerged(**_batch()).logits
        torch.testing.assert_close(reloaded(**_batch()).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged(**_batch()).logits, expected, rtol=0, atol=1e-5)
    model = build_model(cfg, AG_NEWS)  # the trained weights are the built model's + trained biases only
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)["trainable"],
                          strict=False)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**_batch()).logits, expected, rtol=0, atol=1e-5)


def test_pissa_is_saved_as_a_plain_lora_of_twice_the_rank(tiny_model_dir, synthetic_csv, tmp_path):
    model = _perturbed(tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=pissa"))
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["init_lora_weights"]) == (8, True)


def _adalora_steps(model, steps, snapshot_at=None):
    """A bare training loop with AdaLoRA's hooks; returns the trainable state at `snapshot_at`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-2)
    labels = torch.tensor([0, 1, 2])
    snapshot = None
    model.train()
    for step in range(steps):
        loss = F.cross_entropy(model(**_batch()).logits, labels) + methods.extra_loss(model)
        loss.backward()
        optimizer.step()
        methods.after_step(model, step)
        optimizer.zero_grad()
        if step == snapshot_at:
            snapshot = trainable_state(model)
    return snapshot


def test_pruned_adalora_reloads_to_equal_logits_even_from_an_earlier_checkpoint(tiny_model_dir, synthetic_csv, tmp_path):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=adalora", "adapter.r=4", "adapter.target_r=1",
                      "adapter.tinit=2", "adapter.tfinal=3")
    model = build_model(cfg, AG_NEWS, total_steps=10)
    earlier = _adalora_steps(model, 10, snapshot_at=4)  # step 4: mid-pruning, other ranks than the final ones
    for state, folder in ((None, tmp_path / "final"), (earlier, tmp_path / "earlier")):
        if state is not None:
            model.load_state_dict(state, strict=False)  # as train() restores the best checkpoint
        model.eval()
        with torch.no_grad():
            expected = model(**_batch()).logits
            save_adapter(model, folder)
            reloaded = _plain_peft(tiny_model_dir, folder)
            torch.testing.assert_close(reloaded(**_batch()).logits, expected, rtol=0, atol=1e-5)
            with warnings.catch_warnings(record=True) as caught:  # budgetlora's own loader: no false alarm
                warnings.simplefilter("always")
                base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
                prepare_head(base, "standard")
                ours = load_adapter(base, folder).eval()
            assert not [w for w in caught if "rank_pattern" in str(w.message)], [str(w.message) for w in caught]
            torch.testing.assert_close(ours(**_batch()).logits, expected, rtol=0, atol=1e-5)
        kept = sum(m.lora_E["default"].shape[0] for m in reloaded.modules() if hasattr(m, "lora_E"))
        if state is None:  # the final allocation keeps target_r per module on average
            assert kept == 1 * 6
        assert kept < 4 * 6


# ---------------------------------------------------------------- training


# the default suite trains three unlike tuners (and AdaLoRA below); the rest run with -m slow (CI runs both)
FAST_TO_TRAIN = {"dora", "vera", "layernorm"}


@pytest.mark.parametrize("method", [m if m in FAST_TO_TRAIN else pytest.param(m, marks=pytest.mark.slow)
                                    for m in TRAINABLE_METHODS])
def test_every_method_trains_on_the_tiny_model_and_its_run_reloads(method, tiny_model_dir, synthetic_csv, tmp_path):
    from budgetlora.training.loop import train

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, synthetic_csv, f"adapter.method={method}", "head.type=mean",
                      "train.max_steps=30", "train.eval_every=10")
    metrics = train(cfg, out, log=lambda message: None)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert metrics["val"]["accuracy"] >= 0.5  # chance: 0.25
    # the adapter itself was trained, not only the head: every adapter tensor left its initial value
    start = trainable_state(build_model(cfg, metrics_labels(out), total_steps=30))
    end = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["trainable"]
    moved = {k: not torch.equal(start[k], end[k]) for k in start if ".classifier." not in k}
    assert moved and all(moved.values()), [k for k, v in moved.items() if not v]
    unmerged, _, _, labels = load_run(out, merge=False)
    merged, _, _, _ = load_run(out)
    by_hand = _plain_peft(tiny_model_dir, out / "adapter", head="mean")
    with torch.no_grad():
        expected = by_hand(**_batch()).logits
        torch.testing.assert_close(unmerged(**_batch()).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged(**_batch()).logits, expected, rtol=0, atol=1e-5)


def metrics_labels(out):
    return json.loads((out / "labels.json").read_text())


def test_adalora_allocates_ranks_while_training(tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    from peft.tuners.adalora import AdaLoraModel

    from budgetlora.training.loop import train

    calls = []
    real = AdaLoraModel.update_and_allocate
    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", lambda self, step: (calls.append(step), real(self, step))[1])
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=adalora", "adapter.r=4", "adapter.target_r=1",
                      "adapter.tinit=5", "adapter.tfinal=10", "train.max_steps=30", "train.eval_every=30",
                      "head.type=mean")
    train(cfg, out, log=lambda message: None)
    assert calls == list(range(30))  # every step, 0-based as PEFT expects
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (saved["total_step"], saved["tinit"], saved["tfinal"]) == (30, 5, 10)
    ranks = {name: sum(mask) for name, mask in saved["rank_pattern"].items()}
    assert len(ranks) == 6 and sum(ranks.values()) == 6  # 6 modules x target_r 1 kept of 6 x 4
    budget = json.loads((out / "budget.json").read_text())
    assert budget["adapter"] == 6 * (4 * (64 + 64) + 4)  # the peak (init_r) count is what was budgeted


def test_adalora_killed_mid_allocation_resumes_to_the_same_ranks_and_weights(tiny_model_dir, synthetic_csv, tmp_path,
                                                                            monkeypatch):
    """Killed between tinit and tfinal, a resumed run must carry on the rank allocator (importance
    scores, ranks) from the checkpoint, not start it afresh: same masks, weights and metrics."""
    from safetensors.torch import load_file

    from budgetlora import train
    quiet = dict(log=lambda message: None)
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.method=adalora", "adapter.r=4", "adapter.target_r=1",
                      "adapter.tinit=4", "adapter.tfinal=8", "train.max_steps=24", "train.eval_every=6",
                      "head.type=mean")  # allocation: steps 5..15 of 24, masks every step
    full = train(cfg, tmp_path / "full", **quiet)

    from budgetlora import rundir

    real_save = rundir.save_checkpoint
    killed_at = {}

    def save_then_die(out, state, progress):
        real_save(out, state, progress)
        if state["step"] == 12:
            killed_at.update(torch.load(out / "checkpoint" / "state.pt", weights_only=False))
            raise KeyboardInterrupt  # killed right after the checkpoint of step 12

    monkeypatch.setattr(rundir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", **quiet)
    # the kill really is mid-allocation: some ranks pruned, more than target_r still kept, scores in flight
    kept = sum(sum(mask) for mask in killed_at["method"]["rank_pattern"].values())
    assert 6 * 1 < kept < 6 * 4
    assert killed_at["method"]["exp_avg_ipt"]
    monkeypatch.setattr(rundir, "save_checkpoint", real_save)
    resumed = train(None, tmp_path / "killed", resume=True, **quiet)

    assert resumed["val"]["loss"] == full["val"]["loss"] and resumed["best_step"] == full["best_step"]
    for name in ("full", "killed"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["val"]["accuracy"] == full["val"]["accuracy"]
    wa = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = json.loads((tmp_path / "full" / "adapter" / "adapter_config.json").read_text())
    cb = json.loads((tmp_path / "killed" / "adapter" / "adapter_config.json").read_text())
    assert ca["rank_pattern"] == cb["rank_pattern"] and sum(map(sum, ca["rank_pattern"].values())) == 6
    sa = torch.load(tmp_path / "full" / "checkpoint" / "state.pt", weights_only=False)
    sb = torch.load(tmp_path / "killed" / "checkpoint" / "state.pt", weights_only=False)
    assert all(torch.equal(sa["trainable"][k], sb["trainable"][k]) for k in sa["trainable"])  # the last step too
    assert sa["method"]["rank_pattern"] == sb["method"]["rank_pattern"]
    history = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("full", "killed")]
    same = ("step", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "train_accuracy")
    assert [{k: r[k] for k in same} for r in history[0]] == [{k: r[k] for k in same} for r in history[1]]
    assert [r["step"] for r in history[1]] == [6, 12, 18, 24]
