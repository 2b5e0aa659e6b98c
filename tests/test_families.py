"""BERT and MPNet families end to end on tiny random models: roles, head, train, plain reload."""

import json

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, MPNetConfig, MPNetForMaskedLM

from budgetlora.evaluation.metrics import table_logits
from budgetlora.data import read_table
from budgetlora.adapters.model import load_run
from budgetlora.training.loop import train

from .conftest import ROBERTA_BASE, tiny_config

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=130, pad_token_id=1)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_family_trains_and_reloads_with_plain_peft(family, tmp_path, synthetic_csv):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(ROBERTA_BASE))  # any tokenizer whose ids fit the vocab
    torch.manual_seed(0)
    if family == "bert":
        model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **TINY))
    else:
        model = MPNetForMaskedLM(MPNetConfig(vocab_size=len(tokenizer), **TINY))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    cfg = tiny_config(tmp_path / "model", synthetic_csv, "train.epochs=1", "adapter.targets=attention_all")
    metrics = train(cfg, tmp_path / "run", log=lambda m: None)
    budget = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert budget["adapted_modules"] == 2 * 4  # q, k, v, o in each of 2 layers
    expected_head = (32 * 32 + 32) + (32 * 4 + 4)  # BERT: pooler + classifier; MPNet: dense + out_proj
    assert budget["head"] == expected_head
    assert metrics["trainable_params"] == 8 * 4 * (32 + 32) + expected_head

    run_model, run_tokenizer, run_cfg, names = load_run(tmp_path / "run")
    table = read_table(str(synthetic_csv), run_cfg.data)
    ours = table_logits(run_model, run_tokenizer, run_cfg, table)[:16]
    base = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"), num_labels=4)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
    with torch.inference_mode():
        batch = tokenizer(table.texts[:16], padding=True, truncation=True, max_length=32, return_tensors="pt")
        theirs = plain(**batch).logits.numpy()
    assert abs(ours - theirs).max() < 1e-4
