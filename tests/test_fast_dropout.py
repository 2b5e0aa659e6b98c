"""CPU dropout with numpy's PCG64 masks: the same dropout as torch's (rate, scale, gradient), masks
reproducible from torch's seed, every dropout of a model swapped (attention probabilities too),
nothing changes outside training, and a run that uses it resumes exactly."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from budgetlora.adapters.model import build_model
from budgetlora.data import eval_batches
from budgetlora.evaluation.metrics import compute_logits
from budgetlora.training.fast_dropout import ATTENTION, FastDropout, drop, dropout_mask, use_fast_dropout
from budgetlora.training.loop import train

from .conftest import tiny_config

LABELS = ["a", "b", "c", "d"]


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_mask_drops_at_rate_p_and_scales_the_rest_like_torch(p, dtype):
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size([1000, 1000]), p, dtype, torch.device("cpu"))
    assert mask.dtype == dtype and mask.shape == (1000, 1000)
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - p) < 0.002  # 1e6 draws: the standard error is 0.0005 at most
    kept = mask[mask != 0].float()
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2, atol=0)  # bf16 rounding
    torch.manual_seed(0)
    reference = nn.functional.dropout(torch.ones(1000, 1000, dtype=dtype), p, True)
    assert abs(mask.float().mean().item() - reference.float().mean().item()) < 0.01  # both keep E[x]


def test_masks_follow_torchs_seed():
    torch.manual_seed(7)
    a = dropout_mask(torch.Size([64, 64]), 0.1, torch.float32, torch.device("cpu"))
    b = dropout_mask(torch.Size([64, 64]), 0.1, torch.float32, torch.device("cpu"))
    torch.manual_seed(7)
    assert torch.equal(a, dropout_mask(torch.Size([64, 64]), 0.1, torch.float32, torch.device("cpu")))
    assert not torch.equal(a, b)  # the next call draws a new mask


def test_the_gradient_is_the_mask_and_eval_is_the_identity():
    torch.manual_seed(3)
    x = torch.randn(256, 128, requires_grad=True)
    y = drop(x, 0.2, True)
    y.sum().backward()
    mask = y.detach() / x.detach()
    torch.testing.assert_close(x.grad, mask)
    assert set(np.unique(np.round(mask.numpy(), 4))) == {0.0, 1.25}
    assert drop(x, 0.2, False) is x and drop(x, 0.0, True) is x


def test_every_dropout_is_swapped_and_only_training_changes(tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.dropout=0.1")
    model = build_model(cfg, LABELS, attention="eager")
    dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
    ids = torch.randint(5, 500, (4, 12))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert use_fast_dropout(model) == len(dropouts) > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert all(isinstance(m, FastDropout) for m in dropouts)
    assert model.get_base_model().config._attn_implementation == ATTENTION
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # eval: identical logits
    model.train()
    torch.manual_seed(1)
    first = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.manual_seed(1)
    again = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.manual_seed(2)
    other = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_attention_dropout_uses_the_fast_mask(tiny_model_dir, synthetic_csv, monkeypatch):
    """The attention probabilities' dropout (which transformers applies with nn.functional.dropout
    inside its eager kernel) goes through the fast mask too."""
    from budgetlora.training import fast_dropout

    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.dropout=0")
    model = build_model(cfg, LABELS, attention="eager")
    use_fast_dropout(model)
    shapes = []
    real = fast_dropout.dropout_mask
    monkeypatch.setattr(fast_dropout, "dropout_mask", lambda shape, *a: shapes.append(tuple(shape)) or real(shape, *a))
    model.train()
    ids = torch.randint(5, 500, (3, 10))
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    heads = model.get_base_model().config.num_attention_heads
    assert (3, heads, 10, 10) in shapes  # attention probabilities: batch x heads x length x length


def test_a_run_with_fast_dropout_learns_and_resumes_exactly(tiny_model_dir, synthetic_csv, tmp_path):
    extra = ("adapter.dropout=0.1", "train.precision=fp32", "train.max_steps=24", "train.eval_every=8",
             "train.fast_dropout=true")
    whole = train(tiny_config(tiny_model_dir, synthetic_csv, *extra), tmp_path / "whole", log=lambda m: None)
    history = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    cut = tiny_config(tiny_model_dir, synthetic_csv, *extra)

    class Stop(Exception):
        pass

    def stop_after_first_checkpoint(message):
        if message.startswith("step 8/"):
            raise Stop

    with pytest.raises(Stop):
        train(cut, tmp_path / "cut", log=stop_after_first_checkpoint)
    resumed = train(None, tmp_path / "cut", resume=True, log=lambda m: None)
    assert resumed["val"]["accuracy"] == whole["val"]["accuracy"]
    assert resumed["best_value"] == whole["best_value"]


def test_torch_dropout_is_kept_when_fast_dropout_is_off(tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    from budgetlora.training import fast_dropout

    calls = []
    monkeypatch.setattr(fast_dropout, "dropout_mask", lambda *a: calls.append(a))
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.dropout=0.1", "train.max_steps=2", "train.eval_every=2",
                      "train.report=false", "train.fast_dropout=false")
    train(cfg, tmp_path / "run", log=lambda m: None)
    assert calls == []


def test_cpu_inference_batches_hold_at_most_max_tokens_and_every_row_once():
    rng = np.random.default_rng(0)
    ids = [np.arange(int(n)) for n in rng.integers(1, 120, size=300)] + [np.arange(500)]  # one row alone over the cap
    batches = list(eval_batches(ids, 128, 0, max_tokens=1024))
    rows = np.concatenate([b.index for b in batches])
    assert sorted(rows.tolist()) == list(range(len(ids)))
    for b in batches:
        assert b.input_ids.numel() <= 1024 or len(b.index) == 1
        assert len(b.index) <= 128
    assert len(batches) > len(list(eval_batches(ids, 128, 0)))


def test_capped_batches_give_the_same_logits(tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv)
    model = build_model(cfg, LABELS).eval()
    rng = np.random.default_rng(1)
    ids = [rng.integers(5, 500, size=int(n)) for n in rng.integers(2, 100, size=200)]
    capped = compute_logits(model, ids, 128, 1)  # on a CPU: batches of at most 2,048 tokens
    with torch.no_grad():
        one_by_one = np.concatenate([model(input_ids=torch.as_tensor(row)[None]).logits.numpy() for row in ids])
    np.testing.assert_allclose(capped, one_by_one, atol=1e-4)


def test_encoder_dropout_sets_the_encoders_dropouts_only(tiny_model_dir, synthetic_csv):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "adapter.dropout=0.1", "model.encoder_dropout=0")
    model = build_model(cfg, LABELS)
    ps = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    encoder = {n: p for n, p in ps.items() if ".roberta." in n and "lora_dropout" not in n}
    assert encoder and set(encoder.values()) == {0.0}  # embeddings, attention, hidden
    assert {p for n, p in ps.items() if "lora_dropout" in n} == {0.1}  # the adapter's own stays
    assert {p for n, p in ps.items() if "classifier" in n} == {0.1}  # and the head's
    default = build_model(tiny_config(tiny_model_dir, synthetic_csv, "adapter.dropout=0.1"), LABELS)
    assert {m.p for n, m in default.named_modules() if isinstance(m, nn.Dropout) and ".roberta." in n
            and "lora_dropout" not in n} == {0.1}
