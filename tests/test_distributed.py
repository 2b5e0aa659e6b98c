"""Accelerate with two CPU processes (gloo): data-parallel training and sharded predict match one process."""

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


def launch_two(*budgetlora_args) -> subprocess.CompletedProcess:
    """`accelerate launch` of `python -m budgetlora ARGS` in two CPU processes."""
    # --multi_gpu is Accelerate's torchrun launcher; without CUDA the processes use gloo on the CPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "budgetlora", *map(str, budgetlora_args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sharded_predict_writes_the_single_process_file(trained_run, tmp_path):
    import numpy as np
    import pandas as pd

    from budgetlora.evaluation.predict import predict_file

    rows = [f"{w} team goal market bank {i}" for i, w in enumerate(["the", "a", "of", "in", "on"] * 21)]  # 105 rows
    data = tmp_path / "in.jsonl"
    pd.DataFrame({"id": [f"x{i}" for i in range(len(rows))], "text": rows}).to_json(data, orient="records", lines=True)
    one = predict_file(trained_run[0], str(data), tmp_path / "one.csv", probabilities=True, label_names_column=True,
                       chunk_rows=10)
    # 11 chunks: process 0 predicts 6 of them, process 1 five, the last one short
    done = launch_two("predict", trained_run[0], "--data", data, "--out", tmp_path / "two.csv", "--probs",
                      "--label-names", "--chunk-rows", 10)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote 105 predictions") == 1  # process 0 reports, once
    two = pd.read_csv(tmp_path / "two.csv", keep_default_na=False)
    assert list(two.columns) == list(one.columns)
    assert two["ID"].tolist() == [f"x{i}" for i in range(105)] and two[["ID", "Label", "LabelName"]].equals(
        one[["ID", "Label", "LabelName"]])
    np.testing.assert_allclose(two.filter(like="prob_").to_numpy(), one.filter(like="prob_").to_numpy(), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.csv", "two.csv"]  # no part files left


def test_a_bad_row_in_one_shard_stops_both_processes_with_no_output(trained_run, tmp_path):
    import pandas as pd

    texts = [f"row {i} of the market" for i in range(30)]
    texts[25] = " "  # chunk 2 of 3 (rows 20-29): process 0's
    data = tmp_path / "in.csv"
    pd.DataFrame({"id": range(30), "text": texts}).to_csv(data, index=False)
    done = launch_two("predict", trained_run[0], "--data", data, "--out", tmp_path / "p.csv", "--chunk-rows", 10)
    assert done.returncode != 0
    assert done.stderr.count("budgetlora: error: 1 row(s) of") == 2  # both processes say it, one line each
    assert "first: row 25" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
