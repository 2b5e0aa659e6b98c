"""Exact parameter accounting on the real roberta-base shapes (meta device, no weights)."""

import pytest
import torch
from transformers import BertConfig, MPNetConfig

from budgetlora.adapters.budget import check, count, plan_from_config
from budgetlora.config import load_config, recipe_names
from budgetlora.errors import UserError
from budgetlora.adapters.model import build_model, resolve_targets

from .conftest import ROBERTA_BASE

AG_NEWS = ["World", "Sports", "Business", "Sci/Tech"]


def roberta(*overrides, recipe="r6-qkv-a24"):
    return load_config(recipe, [f"model.name={ROBERTA_BASE}", *overrides])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["adapter.r=6", "adapter.targets=attention"], 925_444),
        (["adapter.r=7", "adapter.targets=attention"], 980_740),
        (["adapter.r=2", "adapter.targets=query,value"], 667_396),
    ],
)
def test_published_counts_for_roberta_base(overrides, expected):
    cfg = roberta(*overrides)
    model = build_model(cfg, AG_NEWS, meta=True)
    breakdown = count(model)
    assert breakdown.trainable == expected
    trainable_by_peft, _ = model.get_nb_trainable_parameters()
    assert trainable_by_peft == expected
    assert breakdown.head == 593_668  # dense 768x768 + out_proj 768x4, with biases
    # roberta-base is 124,645,632 parameters with its pooler; the classifier does not use the pooler
    assert breakdown.frozen == 124_645_632 - (768 * 768 + 768)


def test_breakdown_by_module_type_and_biases():
    breakdown = count(build_model(roberta("adapter.r=4", "adapter.bias=all"), AG_NEWS, meta=True))
    assert breakdown.adapter_by_module == {
        "attention.self.query": 12 * 4 * (768 + 768),
        "attention.self.key": 12 * 4 * (768 + 768),
        "attention.self.value": 12 * 4 * (768 + 768),
    }
    # every bias of the encoder: q,k,v,o (4x768) + intermediate (3072) + output (768) + 2 LayerNorms per
    # layer, plus the embeddings' LayerNorm
    assert breakdown.biases == 12 * (4 * 768 + 3072 + 768 + 2 * 768) + 768
    assert breakdown.trainable == 221_184 + 593_668 + 102_144 == 916_996


ROBERTA_RECIPES = [n for n in recipe_names() if load_config(n).model.name == "roberta-base"]


def test_all_but_the_quickstart_recipe_are_for_roberta_base():
    assert set(recipe_names()) - set(ROBERTA_RECIPES) == {"minilm-quickstart"}


@pytest.mark.parametrize("name", ROBERTA_RECIPES)
def test_every_bundled_recipe_builds_and_fits_the_budget_on_roberta_base(name):
    cfg = roberta(recipe=name)
    breakdown = plan_from_config(cfg, AG_NEWS)
    check(breakdown, cfg.budget.max_trainable)
    assert 0 < breakdown.trainable <= 1_000_000
    assert breakdown.trainable == build_model(cfg, AG_NEWS, meta=True).get_nb_trainable_parameters()[0]


def test_over_budget_is_refused_with_the_amount_over():
    cfg = roberta("adapter.r=8")
    breakdown = plan_from_config(cfg, AG_NEWS)
    assert breakdown.trainable == 1_036_036
    with pytest.raises(UserError) as err:
        check(breakdown, cfg.budget.max_trainable)
    assert "36,036" in str(err.value) and "head 593,668" in str(err.value)


def _names(model, role):
    return {n.split(".layer.0.")[1] for n in resolve_targets(model, role) if ".layer.0." in n}


def _meta(config):
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def test_roles_resolve_per_architecture():
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=4)
    bert = _meta(BertConfig(**tiny))
    assert _names(bert, "attention") == {"attention.self.query", "attention.self.key", "attention.self.value"}
    assert _names(bert, "attention_all") == _names(bert, "attention") | {"attention.output.dense"}
    assert _names(bert, "ffn") == {"intermediate.dense", "output.dense"}
    assert len(_names(bert, "all_linear")) == 6
    mpnet = _meta(MPNetConfig(**tiny))
    assert _names(mpnet, "attention") == {"attention.attn.q", "attention.attn.k", "attention.attn.v"}
    assert _names(mpnet, "attention_all") == _names(mpnet, "attention") | {"attention.attn.o"}
    assert _names(mpnet, "ffn") == {"intermediate.dense", "output.dense"}
    # explicit names match as suffixes, exactly like PEFT
    assert _names(bert, ["query", "value"]) == {"attention.self.query", "attention.self.value"}
    assert _names(bert, ["attention.output.dense"]) == {"attention.output.dense"}


def test_target_that_matches_nothing_is_refused(tmp_path):
    cfg = roberta("adapter.targets=q_proj")
    with pytest.raises(UserError, match="q_proj.*matches no"):
        build_model(cfg, AG_NEWS, meta=True)


def test_bert_standard_head_includes_the_pooler(tmp_path):
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config.save_pretrained(tmp_path)
    cfg = load_config("r6-qkv-a24", [f"model.name={tmp_path}", "adapter.r=2"])
    breakdown = count(build_model(cfg, AG_NEWS, meta=True))
    assert breakdown.head == (32 * 32 + 32) + (32 * 4 + 4)  # pooler dense + classifier


def test_mpnet_standard_head_has_roberta_shape(tmp_path):
    config = MPNetConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         vocab_size=30527)
    config.save_pretrained(tmp_path)
    cfg = load_config("r6-qkv-a24", [f"model.name={tmp_path}", "adapter.r=6"])
    assert plan_from_config(cfg, AG_NEWS).trainable == 925_444


def test_default_recipe_spends_the_budget_on_every_linear_with_a_mean_head():
    """The default chosen in docs/best_default.md: all_linear LoRA at the largest rank + mean head."""
    cfg = load_config(None, [f"model.name={ROBERTA_BASE}"])
    assert (cfg.adapter.targets, cfg.head.type, cfg.adapter.r) == ("all_linear", "mean", 6)
    breakdown = count(build_model(cfg, AG_NEWS, meta=True))
    assert breakdown.trainable == 998_404 and breakdown.head == 3_076
    over = load_config(None, [f"model.name={ROBERTA_BASE}", "adapter.r=7"])
    with pytest.raises(UserError, match="over"):
        check(count(build_model(over, AG_NEWS, meta=True)), over.budget.max_trainable)
