"""The training loop: learns, is deterministic, keeps the best checkpoint, resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from budgetlora import rundir
from budgetlora.errors import UserError
from budgetlora.training.loop import train

from .conftest import tiny_config

quiet = dict(log=lambda message: None)


def test_tiny_model_learns_the_synthetic_task(trained_run):
    out, metrics = trained_run
    assert metrics["val"]["accuracy"] >= 0.8  # chance is 0.25
    assert metrics["test"]["accuracy"] >= 0.8
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["val_loss"] > history[-1]["val_loss"]
    assert metrics["best_step"] == min(history, key=lambda r: r["val_loss"])["step"]


def test_run_directory_contents(trained_run):
    out, metrics = trained_run
    for name in ["config.yaml", "labels.json", "budget.json", "metrics.jsonl", "metrics.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "checkpoint/state.pt"]:
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == ["money", "sports", "tech", "world"]
    final = json.loads((out / "metrics.json").read_text())
    assert final["val"]["accuracy"] == metrics["val"]["accuracy"]
    assert {"accuracy", "macro_f1", "accuracy_ci95", "per_class", "confusion_matrix"} <= set(final["val"])
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("classifier" in k for k in saved) and any("lora_A" in k for k in saved)
    assert json.loads((out / "budget.json").read_text())["trainable"] == metrics["trainable_params"]


def test_same_seed_same_result(tiny_model_dir, synthetic_csv, tmp_path):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.epochs=2")
    a = train(cfg, tmp_path / "a", **quiet)
    b = train(cfg, tmp_path / "b", **quiet)
    assert a["val"]["loss"] == b["val"]["loss"]
    wa = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_run_is_not_overwritten_without_flag(tiny_model_dir, synthetic_csv, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    cfg = tiny_config(tiny_model_dir, synthetic_csv)
    with pytest.raises(UserError, match="--overwrite"):
        train(cfg, out, **quiet)
    assert (out / "precious.txt").read_text() == "keep me"


def test_early_stopping_keeps_and_restores_the_best(tiny_model_dir, synthetic_csv, tmp_path):
    # accuracy can only get worse after a huge learning rate blows the model up
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.eval_every=10", "train.early_stopping_patience=2",
                      "train.metric=accuracy", "train.lr=0.5", "train.max_grad_norm=", "train.epochs=10")
    metrics = train(cfg, tmp_path / "run", **quiet)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics["stopped_early"]
    assert len(history) < metrics["total_steps"] // 10
    assert history[-3]["step"] == metrics["best_step"]  # best, then two evaluations without progress
    best = max(history, key=lambda r: r["val_accuracy"])
    assert metrics["val"]["accuracy"] == pytest.approx(best["val_accuracy"])  # restored, not the last
    again = train(None, tmp_path / "run", resume=True, **quiet)  # a stopped run stays stopped
    assert again["steps"] == metrics["steps"] and again["val"]["accuracy"] == metrics["val"]["accuracy"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == len(history)


@pytest.mark.parametrize("batching", ["rows", "tokens"])
def test_killed_run_resumes_to_the_same_weights(tiny_model_dir, synthetic_csv, tmp_path, monkeypatch, batching):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "train.epochs=3", "train.eval_every=20",
                      f"train.batching={batching}")
    full = train(cfg, tmp_path / "full", **quiet)

    real_save = rundir.save_checkpoint

    def save_then_die(out, state, progress):
        real_save(out, state, progress)
        if state["step"] == 40:
            raise KeyboardInterrupt  # killed right after the checkpoint of step 40 (of 90)

    monkeypatch.setattr(rundir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", **quiet)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(rundir, "save_checkpoint", real_save)
    resumed = train(None, tmp_path / "killed", resume=True, **quiet)

    assert resumed["val"]["loss"] == full["val"]["loss"]
    wa = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 60, 80, 90]


def test_over_budget_is_refused_before_anything_is_written(tiny_model_dir, synthetic_csv, tmp_path):
    cfg = tiny_config(tiny_model_dir, synthetic_csv, "budget.max_trainable=100")
    with pytest.raises(UserError, match="over budget"):
        train(cfg, tmp_path / "run", **quiet)
    assert not (tmp_path / "run").exists()


def test_final_val_metrics_are_the_saved_adapter_on_the_exact_val_rows(trained_run, tmp_path):
    """metrics.json reuses the best evaluation's logits; they must be what the saved adapter
    gives on the rows `train_val_indices` names (the public split helper)."""
    import numpy as np

    from budgetlora.config import load_config
    from budgetlora.data import encode_labels, read_table, train_val_indices
    from budgetlora.evaluation.metrics import evaluate_run

    out, metrics = trained_run
    cfg = load_config(out / "config.yaml")
    table = read_table(cfg.data.train, cfg.data, split="train")
    labels = encode_labels(table, json.loads((out / "labels.json").read_text()))
    train_idx, val_idx = train_val_indices(labels, cfg.data, cfg.train.seed)
    assert len(val_idx) == metrics["val_rows"] and len(train_idx) == metrics["train_rows"]
    assert not set(train_idx) & set(val_idx)
    val_csv = tmp_path / "val.csv"
    import pandas as pd

    pd.DataFrame({"text": [table.texts[i] for i in val_idx], "label": [table.labels[i] for i in val_idx]}).to_csv(
        val_csv, index=False)
    again = evaluate_run(out, str(val_csv))
    assert again["accuracy"] == metrics["val"]["accuracy"]
    assert np.isclose(again["loss"], metrics["val"]["loss"], rtol=1e-5)


def test_resume_with_a_different_config_is_refused_not_silently_replaced(trained_run, tiny_model_dir, synthetic_csv):
    out, metrics = trained_run
    other = tiny_config(tiny_model_dir, synthetic_csv, "train.lr=5e-3")
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(UserError, match="resume continues .* saved config.yaml, and the config given differs"):
        train(other, out, resume=True, **quiet)
    assert (out / "metrics.json").read_bytes() == before


def test_label_smoothing_caps_the_confidence_the_model_learns(trained_run, tiny_model_dir, synthetic_csv,
                                                              synthetic_test_csv, tmp_path):
    import pandas as pd

    from budgetlora.deploy.predictor import load_predictor
    from budgetlora.evaluation.metrics import softmax

    smoothed = train(tiny_config(tiny_model_dir, synthetic_csv, "train.label_smoothing=0.6"), tmp_path / "ls", **quiet)
    texts = pd.read_csv(synthetic_test_csv)["text"].tolist()

    def mean_confidence(run) -> float:
        predictor = load_predictor(run)
        return float(softmax(predictor.logits(predictor.encode(texts))).max(axis=1).mean())

    assert smoothed["val"]["accuracy"] >= 0.8
    # smoothing 0.6 over 4 classes: the loss is lowest at 0.4 + 0.6 / 4 = 0.55 on the true class
    assert mean_confidence(tmp_path / "ls") < 0.65 < mean_confidence(trained_run[0])
