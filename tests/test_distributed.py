"""Data-parallel training with Accelerate: two CPU processes (gloo) match one process."""

import json
import os
import subprocess
import sys

import pytest

from budgetlora.training.loop import train

from .conftest import TINY_TRAIN


def test_two_processes_match_one_at_the_same_global_batch(tiny_model_dir, synthetic_csv, tmp_path):
    # an odd global batch (15) splits unevenly (8 + 7): the loss weighting must still make the
    # step the mean over the global batch; dropout off (encoder and adapter) so that both runs
    # do the same arithmetic
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    model_dir = tmp_path / "no-dropout"
    config = AutoConfig.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForMaskedLM.from_pretrained(tiny_model_dir, config=config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    overrides = [f"model.name={model_dir}", f"data.train={synthetic_csv}", *TINY_TRAIN,
                 "train.epochs=2", "train.batch_size=15", "train.eval_every=16", "adapter.dropout=0"]
    # --multi_gpu is Accelerate's torchrun launcher; on a machine without CUDA budgetlora's
    # Accelerator runs it on the CPU over gloo
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "budgetlora", "train", "--recipe", "r6-qkv-a24", "--out", str(tmp_path / "two")]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["processes"] == 2

    from budgetlora.config import load_config

    one = train(load_config("r6-qkv-a24", overrides), tmp_path / "one", log=lambda m: None)
    assert one["processes"] == 1
    assert two["steps"] == one["steps"] and two["best_step"] == one["best_step"]
    assert two["val"]["loss"] == pytest.approx(one["val"]["loss"], rel=1e-4)
    assert two["val"]["accuracy"] == one["val"]["accuracy"]
    history_two = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    history_one = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history_two] == [r["step"] for r in history_one]
    for a, b in zip(history_two, history_one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
