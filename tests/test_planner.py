"""Heads (standard, standard_lora, linear, mean) and the planner: exact counts, reloads, `plan --fill`."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig

from budgetlora.adapters.budget import count
from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.errors import UserError
from budgetlora.adapters.model import build_model, load_run, prepare_head, save_adapter
from budgetlora.adapters.planner import config_cost, fill, plan, planned_methods

from .conftest import ROBERTA_BASE, perturbed_model, tiny_config

AG_NEWS = ["World", "Sports", "Business", "Sci/Tech"]
ROBERTA_FROZEN = 124_645_632 - (768 * 768 + 768)  # roberta-base without its (unused) pooler


def roberta(*overrides):
    return load_config("r6-qkv-a24", [f"model.name={ROBERTA_BASE}", *overrides])


def built(cfg, labels=AG_NEWS):
    model = build_model(cfg, labels, meta=True)
    breakdown = count(model, cfg.budget.max_trainable)
    assert breakdown.trainable == model.get_nb_trainable_parameters()[0]
    return breakdown


LORA_QKV_R6 = 12 * 3 * 6 * (768 + 768)  # 331,776


@pytest.mark.parametrize(
    "head, head_params, frozen",
    [
        ("standard", 593_668, ROBERTA_FROZEN),  # dense 768x768+768, out_proj 768x4+4
        ("standard_lora", 6 * (768 + 768) + 768 * 4 + 4, ROBERTA_FROZEN + 768 * 768 + 768),  # 12,292
        ("linear", 768 * 4 + 4, ROBERTA_FROZEN),  # 3,076
        ("mean", 768 * 4 + 4, ROBERTA_FROZEN),
    ],
)
def test_exact_head_counts_on_roberta_base(head, head_params, frozen):
    b = built(roberta(f"head.type={head}", "adapter.r=6", "adapter.targets=attention"))
    assert b.head == head_params
    assert b.adapter == LORA_QKV_R6 and b.adapted_modules == 36
    assert b.trainable == LORA_QKV_R6 + head_params
    assert b.frozen == frozen  # standard_lora keeps the (random) classifier.dense, frozen
    assert b.head_type == head


def test_standard_lora_head_bias_counts_as_head():
    b = built(roberta("head.type=standard_lora", "adapter.r=6", "adapter.bias=all"))
    assert b.head == 12_292 + 768  # classifier.dense.bias becomes trainable
    assert b.biases == 102_144  # the encoder's, as under the standard head


def test_heads_on_a_bert_style_model(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    counts = {h: built(load_config("r6-qkv-a24", [f"model.name={tmp_path}", f"head.type={h}", "adapter.r=2"])).head
              for h in ("standard", "standard_lora", "linear", "mean")}
    assert counts == {"standard": 32 * 32 + 32 + 32 * 4 + 4, "standard_lora": 2 * 64 + 32 * 4 + 4,
                      "linear": 32 * 4 + 4, "mean": 32 * 4 + 4}


def test_pooling_heads_refuse_an_unsupported_head(tmp_path):
    DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="head.type=linear is not supported for distilbert"):
        build_model(load_config("r6-qkv-a24", [f"model.name={tmp_path}", "head.type=linear"]), AG_NEWS, meta=True)
    result = plan(load_config("r6-qkv-a24", [f"model.name={tmp_path}"]), AG_NEWS, method_names=["lora"])
    assert set(result.skipped) == {"head linear", "head mean"}


# ---------------------------------------------------------------- planner


@pytest.fixture(scope="module")
def roberta_plan():
    return plan(roberta(), AG_NEWS, budget=1_000_000, method_names=["lora"], layer_sets=[None])


def test_plan_lists_every_head_and_role_with_its_largest_rank(roberta_plan):
    got = {(e.head, e.targets): e.r for e in roberta_plan.entries}
    assert len(got) == 16 and not roberta_plan.unfit
    assert got[("standard", "attention")] == 7  # 980,740; r=8 is 1,036,036
    assert got[("linear", "attention")] == 18
    assert got[("standard_lora", "attention_all")] == 13
    assert got[("mean", "all_linear")] == 6
    ranks = [e.r for e in roberta_plan.entries]
    assert ranks == sorted(ranks, reverse=True)
    best = roberta_plan.entries[roberta_plan.recommended]
    assert (best.head, best.targets, best.r) == ("standard_lora", "attention_all", 13)
    assert roberta_plan.reason


@pytest.mark.parametrize("pick", [("standard", "attention"), ("standard_lora", "all_linear"),
                                  ("linear", "ffn"), ("mean", "attention_all"), ("standard_lora", "attention")])
def test_plan_entries_agree_with_built_models(roberta_plan, pick):
    e = next(e for e in roberta_plan.entries if (e.head, e.targets) == pick)
    at_r = built(roberta(f"head.type={e.head}", f"adapter.targets={e.targets}", f"adapter.r={e.r}"))
    assert at_r.trainable == e.trainable <= 1_000_000
    assert at_r.head == e.head_params
    above = built(roberta(f"head.type={e.head}", f"adapter.targets={e.targets}", f"adapter.r={e.r + 1}"))
    assert above.trainable == e.trainable + e.per_rank > 1_000_000


@pytest.mark.parametrize("bias, head, targets", [("all", "standard_lora", "ffn"), ("lora_only", "standard_lora", "attention"),
                                                 ("all", "linear", "query,value"), ("lora_only", "standard", "attention_all")])
def test_analytic_cost_with_biases_and_module_names_matches_built_models(bias, head, targets):
    cfg = roberta(f"adapter.bias={bias}", f"head.type={head}", f"adapter.targets={targets}", "adapter.r=3")
    cost = config_cost(cfg, AG_NEWS)
    b = built(cfg)
    assert (cost.trainable(3), cost.head_params(3)) == (b.trainable, b.head)


def test_fill_gives_the_largest_rank_that_fits():
    cfg = roberta("head.type=linear", "adapter.targets=all_linear")
    filled, cost = fill(cfg, AG_NEWS, budget=600_000)
    r = filled.adapter.r
    assert r == (600_000 - 3_076) // (12 * (4 * 1536 + 2 * (768 + 3072))) == 3
    assert built(filled).trainable == cost.trainable(r) <= 600_000
    assert built(roberta("head.type=linear", "adapter.targets=all_linear", f"adapter.r={r + 1}")).trainable > 600_000
    assert filled.budget.max_trainable == 600_000 and cfg.adapter.r == 6  # the input is left alone


def test_plan_cli_fill_json_and_yaml(capsys):
    args = ["plan", "--model", str(ROBERTA_BASE), "--recipe", "r6-qkv-a24", "--set", "head.type=standard", "--budget", "1000000", "--fill"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adapter"]["r"] == 7 and out["head"]["type"] == "standard"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "r=7 -> 980,740" in text and "r=8 would be 1,036,036" in text
    import yaml

    assert yaml.safe_load(text)["adapter"]["r"] == 7


def test_plan_cli_table_and_nothing_fits(capsys):
    assert main(["plan", "--model", str(ROBERTA_BASE), "--budget", "1000000"]) == 0
    out = capsys.readouterr().out
    assert "recommended (*): standard_lora + lora on attention_all at r=13" in out
    assert main(["plan", "--model", str(ROBERTA_BASE), "--budget", "2000", "--fill"]) == 2
    assert "r=1 already needs" in capsys.readouterr().err


# ---------------------------------------------------------------- saving, reloading, training


_perturbed = perturbed_model


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    ids[0, 7:] = 1  # <pad>
    return dict(input_ids=ids, attention_mask=mask)


def test_standard_lora_reloads_with_plain_peft(tiny_model_dir, synthetic_csv, tmp_path):
    from peft import PeftModel

    cfg = tiny_config(tiny_model_dir, synthetic_csv, "head.type=standard_lora")
    model = _perturbed(cfg, AG_NEWS)
    expected = model(**_batch()).logits
    save_adapter(model, tmp_path)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    assert torch.equal(reloaded(**_batch()).logits, expected)


def test_linear_head_needs_prepare_head_before_peft_reload(tiny_model_dir, synthetic_csv, tmp_path):
    from peft import PeftModel

    cfg = tiny_config(tiny_model_dir, synthetic_csv, "head.type=linear")
    model = _perturbed(cfg, AG_NEWS)
    save_adapter(model, tmp_path)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    with pytest.raises(KeyError):  # plain PEFT refuses loudly: the saved head has another shape
        PeftModel.from_pretrained(base, str(tmp_path))
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    prepare_head(base, "linear")
    reloaded = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    assert torch.equal(reloaded(**_batch()).logits, model(**_batch()).logits)


def test_mean_head_ignores_padding(tiny_model_dir, synthetic_csv):
    model = _perturbed(tiny_config(tiny_model_dir, synthetic_csv, "head.type=mean"), AG_NEWS)
    batch = _batch()
    with torch.no_grad():
        padded = model(**batch).logits[0]
        alone = model(input_ids=batch["input_ids"][:1, :7], attention_mask=batch["attention_mask"][:1, :7]).logits[0]
        unmasked = model(input_ids=batch["input_ids"][:1]).logits[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(padded, unmasked, atol=1e-3)  # the mask does reach the head


def test_linear_head_learns_the_synthetic_task_and_reloads(tiny_model_dir, synthetic_csv, tmp_path):
    from peft import PeftModel

    from budgetlora.training.loop import train

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "head.type=linear", "train.epochs=6")
    metrics = train(cfg, out, log=lambda message: None)
    assert metrics["val"]["accuracy"] >= 0.8
    assert metrics["trainable_params"] == json.loads((out / "budget.json").read_text())["trainable"]
    assert json.loads((out / "budget.json").read_text())["head"] == 64 * 4 + 4
    merged, _, _, _ = load_run(out)
    unmerged, _, _, _ = load_run(out, merge=False)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=4)
    prepare_head(base, "linear")
    by_hand = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    with torch.no_grad():
        expected = by_hand(**_batch()).logits
        assert torch.equal(unmerged(**_batch()).logits, expected)
        torch.testing.assert_close(merged(**_batch()).logits, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- planner x adapter methods


@pytest.fixture(scope="module")
def methods_plan():
    return plan(roberta(), AG_NEWS, budget=1_000_000, heads=("standard_lora", "linear"))


@pytest.mark.parametrize("method, head, targets, top", [
    ("dora", "linear", "attention", None), ("loha", "standard_lora", "attention_all", 6),
    ("lokr", "standard_lora", "all_linear", None), ("adalora", "linear", "ffn", 3),
    ("vera", "standard_lora", "attention", 6), ("rslora", "linear", "all_linear", 3),
    ("ia3", "standard_lora", "all_linear", None), ("bitfit", "linear", "attention_all", 6),
    ("layernorm", "linear", "layernorm", 3), ("pissa", "standard_lora", "ffn", 6),
])
def test_plan_entries_of_every_method_agree_with_built_models(methods_plan, method, head, targets, top):
    e = next(e for e in methods_plan.entries
             if (e.method, e.head, e.targets, e.top_layers) == (method, head, targets, top))
    sets = [f"head.type={head}", f"adapter.method={method}"] + ([f"adapter.top_layers={top}"] if top else [])
    if method != "layernorm":
        sets.append(f"adapter.targets={targets}")
    at_r = built(roberta(*sets, f"adapter.r={e.r or 1}"))
    assert at_r.trainable == e.trainable <= 1_000_000 and at_r.head == e.head_params
    assert at_r.adapted_modules == e.modules
    if e.r is not None and not e.capped:
        assert built(roberta(*sets, f"adapter.r={e.r + 1}")).trainable > 1_000_000


def test_plan_covers_every_method_and_layer_choice(methods_plan):
    assert {e.method for e in methods_plan.entries} == set(planned_methods())
    assert {e.top_layers for e in methods_plan.entries} == {None, 6, 3}
    assert [e for e in methods_plan.entries if e.method == "ia3"][0].r is None  # rank-free
    best = methods_plan.entries[methods_plan.recommended]
    assert (best.method, best.head, best.targets, best.r) == ("lora", "standard_lora", "attention_all", 13)


@pytest.mark.parametrize("method", ["dora", "loha", "lokr", "adalora", "vera"])
def test_fill_works_for_every_rank_based_method(method):
    cfg = roberta("head.type=linear", f"adapter.method={method}", "adapter.targets=attention", "adapter.top_layers=6")
    filled, cost = fill(cfg, AG_NEWS, budget=300_000)
    r = filled.adapter.r
    assert built(filled).trainable == cost.trainable(r) <= 300_000
    if r < cost.rank_cap:
        assert built(roberta("head.type=linear", f"adapter.method={method}", "adapter.targets=attention",
                             "adapter.top_layers=6", f"adapter.r={r + 1}")).trainable > 300_000


def test_fill_refuses_a_rank_free_method():
    with pytest.raises(UserError, match="no rank to fill"):
        fill(roberta("adapter.method=ia3"), AG_NEWS)


def test_plan_cli_methods_filter_and_json(capsys):
    assert main(["plan", "--model", str(ROBERTA_BASE), "--methods", "vera,ia3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {e["method"] for e in out["entries"]} == {"vera", "ia3"}
    assert {"method", "head", "targets", "top_layers", "modules", "r", "capped", "trainable", "head_params",
            "left"} <= set(out["entries"][0])
    assert main(["plan", "--model", str(ROBERTA_BASE), "--methods", "nope"]) == 2
