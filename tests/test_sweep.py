"""`budgetlora sweep`: trials x seeds as ordinary runs, a sorted summary, resumable, refusals kept."""

import json

import pandas as pd
import pytest

from budgetlora.errors import UserError
from budgetlora.training.sweep import expand, load_spec, run_sweep

from .conftest import TINY_TRAIN, run_cli

SHORT = [*TINY_TRAIN, "train.max_steps=10", "train.eval_every=5", "data.max_train_samples=160"]


def _spec(tiny_model_dir, synthetic_csv, more=(), **extra):
    return load_spec(None, recipe="r6-qkv-a24", set=[f"model.name={tiny_model_dir}", f"data.train={synthetic_csv}", *SHORT, *more],
                     **extra)


def test_grid_crosses_named_trials_and_axes():
    spec = load_spec(None, trials=[{"name": "a", "set": ["adapter.r=2"]}, {"name": "b", "set": ["head.type=linear"]}],
                     grid={"train.lr": [0.001, 0.01], "adapter.targets": ["attention", "ffn"]}, seeds=[1, 2])
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 2
    assert trials[0]["name"] == "a-lr=0.001,targets=attention"
    assert trials[0]["set"] == ["adapter.r=2", "train.lr=0.001", "adapter.targets=attention"]
    assert len({t["name"] for t in trials}) == len(trials)
    assert len(expand(load_spec(None, grid={"adapter.r": [1, 2, 3, 4]}, search="random", n_trials=3))) == 3


def test_sweep_runs_sorts_refuses_and_resumes(tiny_model_dir, synthetic_csv, tmp_path):
    # tiny RoBERTa: q,k,v LoRA costs 768 per rank, the standard head 4,420 -> r=4 (7,492) is over 7,000
    spec = _spec(tiny_model_dir, synthetic_csv, grid={"adapter.r": [1, 2, 4]}, seeds=[1, 2],
                 more=["budget.max_trainable=7000"])
    out = tmp_path / "sweep"
    summary = run_sweep(spec, out, log=lambda m: None)

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6
    refused = trials[trials["trial"] == "r=4"]
    assert set(refused["status"]) == {"refused"} and refused["reason"].str.contains("over").all()
    assert not (out / "runs" / "r=4-s1" / "metrics.json").exists()

    assert set(summary["trial"]) == {"r=1", "r=2", "r=4"}
    done = summary[summary["status"] == "done"]
    assert list(done["val_accuracy_mean"]) == sorted(done["val_accuracy_mean"], reverse=True)
    assert summary["trial"].iloc[-1] == "r=4"  # refused trials sort last
    for _, row in done.iterrows():
        accs = [json.loads((out / "runs" / f"{row['trial']}-s{s}" / "metrics.json").read_text())["val"]["accuracy"]
                for s in (1, 2)]
        assert row["val_accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert row["trainable_params"] == {"r=1": 4420 + 768, "r=2": 4420 + 1536}[row["trial"]]
    import yaml

    assert yaml.safe_load((out / "runs" / "r=2-s1" / "config.yaml").read_text())["train"]["seed"] == 1
    assert "| 1 |" in (out / "summary.md").read_text()

    # rerun: finished runs are read, a run without metrics.json resumes from its checkpoint
    (out / "runs" / "r=1-s2" / "metrics.json").unlink()
    stamp = (out / "runs" / "r=2-s1" / "metrics.json").stat().st_mtime_ns
    again = run_sweep(spec, out, log=lambda m: None)
    statuses = dict(zip(pd.read_csv(out / "trials.csv")["run_dir"].map(lambda p: p.split("/")[-1]),
                        pd.read_csv(out / "trials.csv")["status"]))
    assert statuses["r=1-s2"] == "done (resumed)" and statuses["r=2-s1"] == "done (earlier)"
    assert (out / "runs" / "r=2-s1" / "metrics.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.drop(columns=["status"]), summary.drop(columns=["status"]))

    with pytest.raises(UserError, match="different sweep"):
        run_sweep(load_spec(None, grid={"adapter.r": [3]}), out, log=lambda m: None)


def test_optuna_search_uses_the_grid_as_its_space(tiny_model_dir, synthetic_csv, tmp_path):
    pytest.importorskip("optuna", reason="Optuna not installed (pip install optuna)")
    spec = _spec(tiny_model_dir, synthetic_csv, grid={"adapter.r": [1, 2]}, seeds=[1], search="optuna", n_trials=2,
                 storage=f"sqlite:///{tmp_path / 'study.db'}")
    summary = run_sweep(spec, tmp_path / "sweep", log=lambda m: None)
    assert len(summary) == 2 and (summary["seeds"] == 1).all()
    assert all(name.startswith("optuna") for name in summary["trial"])
    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 2 and study.best_value == pytest.approx(summary["val_accuracy_mean"].iloc[0])


def test_cli_bad_sweep_input_is_one_line_exit_2(tmp_path):
    result = run_cli("sweep", "--out", tmp_path / "s", "--grid", "adapter.r")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--grid" in result.stderr
    result = run_cli("sweep", tmp_path / "missing.yaml", "--out", tmp_path / "s")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "s").exists()
