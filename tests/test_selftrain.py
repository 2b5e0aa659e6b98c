"""Self-training (data.unlabelled, selftrain.*): pseudo-labelled rows join training only, the
threshold and class balance select them, a killed run resumes to the same result, bad config is refused."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from budgetlora import rundir
from budgetlora.config import load_config
from budgetlora.data import encode_labels, read_table, train_val_indices
from budgetlora.errors import UserError
from budgetlora.training.loop import train
from budgetlora.training.selftrain import select

from .conftest import synthetic_frame, tiny_config

quiet = dict(log=lambda message: None)
FAST = ["train.epochs=2", "train.eval_every=20"]


@pytest.fixture(scope="module")
def unlabelled_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("unlabelled") / "target.csv"
    synthetic_frame(n=200, seed=7)[["text"]].to_csv(path, index=False)
    return path


def _config(tiny_model_dir, synthetic_csv, unlabelled_csv, *extra):
    return tiny_config(tiny_model_dir, synthetic_csv, *FAST, f"data.unlabelled={unlabelled_csv}", *extra)


def _val_texts(cfg):
    table = read_table(cfg.data.train, cfg.data, split="train")
    labels = encode_labels(table, ["money", "sports", "tech", "world"])
    train_idx, val_idx = train_val_indices(labels, cfg.data, cfg.train.seed)
    return [table.texts[i] for i in train_idx], [table.texts[i] for i in val_idx]


@pytest.fixture(scope="module")
def selftrained(tmp_path_factory, tiny_model_dir, synthetic_csv, unlabelled_csv):
    out = tmp_path_factory.mktemp("runs") / "st"
    cfg = _config(tiny_model_dir, synthetic_csv, unlabelled_csv, "selftrain.threshold=0.5", "selftrain.rounds=2",
                  "selftrain.balance=equal", "train.baseline=probe")
    return cfg, out, train(cfg, out, **quiet)


def test_the_probe_baseline_fits_on_the_labelled_rows_only(selftrained):
    cfg, _, metrics = selftrained
    assert sum(r["added"] for r in metrics["selftrain"]) > 0
    assert metrics["baseline"]["train_rows"] == len(_val_texts(cfg)[0])  # no pseudo-labelled rows


def test_pseudo_labelled_rows_join_training_and_never_validation(selftrained):
    cfg, out, metrics = selftrained
    train_texts, val_texts = _val_texts(cfg)
    rounds = metrics["selftrain"]
    assert [r["round"] for r in rounds] == [1, 2]
    last = pd.read_csv(out / "selftrain" / "round-2.csv", keep_default_na=False)
    assert rounds[-1]["added"] == len(last) > 0
    assert metrics["train_rows"] == len(train_texts) + len(last)  # the last round's rows joined training
    assert metrics["val_rows"] == len(val_texts)
    predictions = pd.read_csv(out / "val_predictions.csv", keep_default_na=False)
    assert sorted(predictions["text"]) == sorted(val_texts)  # the validation rows are the labelled split's
    target = set(pd.read_csv(cfg.data.unlabelled)["text"])
    assert set(last["text"]) <= target and not set(last["text"]) & set(val_texts)
    assert (last["confidence"] > 0.5).all()
    assert sum(rounds[-1]["added_per_class"].values()) == len(last)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["selftrain"] == rounds
    # the steps run on across rounds, one evaluation sequence in metrics.jsonl
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == metrics["steps"]


def test_equal_balance_gives_every_class_as_many_rows(selftrained):
    _, _, metrics = selftrained
    for record in metrics["selftrain"]:
        assert len(set(record["added_per_class"].values())) == 1


def test_selection_threshold_and_balance():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(3, 0.3), size=400)
    conf, pred = probs.max(1), probs.argmax(1)
    prior = np.array([0.5, 0.25, 0.25])
    assert len(select(probs, 1.0, "none", prior)) == 0
    none = select(probs, 0.8, "none", prior)
    assert set(none) == set(np.flatnonzero(conf > 0.8))
    capped = select(probs, 0.8, "none", prior, max_rows=10)
    assert len(capped) == 10 and conf[capped].min() >= np.sort(conf[none])[-10]  # the most confident
    equal = select(probs, 0.8, "equal", prior)
    counts = np.bincount(pred[equal], minlength=3)
    assert len(set(counts)) == 1 and counts[0] == np.bincount(pred[none], minlength=3).min()
    by_prior = select(probs, 0.8, "prior", prior, max_rows=40)
    counts = np.bincount(pred[by_prior], minlength=3)
    assert (counts <= prior * 40).all() and len(by_prior) <= 40
    assert list(select(probs, 0.8, "prior", prior)) == list(select(probs.copy(), 0.8, "prior", prior))  # deterministic


def test_threshold_one_adds_nothing(tiny_model_dir, synthetic_csv, unlabelled_csv, tmp_path):
    cfg = _config(tiny_model_dir, synthetic_csv, unlabelled_csv, "selftrain.threshold=1.0", "train.epochs=1")
    metrics = train(cfg, tmp_path / "run", **quiet)
    train_texts, _ = _val_texts(cfg)
    assert metrics["selftrain"][0]["added"] == 0 and metrics["train_rows"] == len(train_texts)


def test_adjust_prior_follows_the_pools_class_mix(tiny_model_dir, synthetic_csv, tmp_path):
    """A pool that is 85% sports: balance prior caps sports at its training share (25%) of the
    confident rows unless the pool's mix is estimated (selftrain.adjust_prior), which lets it in."""
    frame = synthetic_frame(n=400, seed=11)
    pool = pd.concat([frame[frame.label == "sports"], frame[frame.label != "sports"].head(18)])
    path = tmp_path / "pool.csv"
    pool[["text"]].to_csv(path, index=False)
    added = {}
    for adjust in (False, True):
        cfg = _config(tiny_model_dir, synthetic_csv, path, "selftrain.threshold=0.5", f"selftrain.adjust_prior={adjust}")
        metrics = train(cfg, tmp_path / f"run-{adjust}", **quiet)
        record = metrics["selftrain"][0]
        added[adjust] = record["added_per_class"]["sports"], record["confident_rows"]
        assert ("estimated_pool_prior" in record) == adjust
    assert record["estimated_pool_prior"]["sports"] > 0.6
    (plain, confident), (adjusted, confident_adjusted) = added[False], added[True]
    assert plain <= 0.25 * confident and adjusted > 0.6 * confident_adjusted > 0


@pytest.mark.parametrize("kill_step", [60, 80], ids=["between-rounds", "in-round-1"])
def test_killed_run_resumes_in_its_round_with_the_same_pseudo_labels(tiny_model_dir, synthetic_csv, unlabelled_csv,
                                                                   tmp_path, monkeypatch, kill_step):
    # 480 training rows, batch 16, 2 epochs: round 0 ends at step 60; round 1 checkpoints at 80, ...
    cfg = _config(tiny_model_dir, synthetic_csv, unlabelled_csv, "selftrain.threshold=0.6")
    full = train(cfg, tmp_path / "full", **quiet)

    real_save = rundir.save_checkpoint

    def save_then_die(out, state, progress):
        real_save(out, state, progress)
        if state["step"] == kill_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", **quiet)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(rundir, "save_checkpoint", real_save)
    resumed = train(None, tmp_path / "killed", resume=True, **quiet)

    assert resumed["val"]["loss"] == full["val"]["loss"] and resumed["steps"] == full["steps"]
    assert full["selftrain"][0]["added"] > 0 and resumed["selftrain"] == full["selftrain"]
    assert ((tmp_path / "full" / "selftrain" / "round-1.csv").read_bytes()
            == (tmp_path / "killed" / "selftrain" / "round-1.csv").read_bytes())
    wa = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    history = lambda run: [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history(tmp_path / "killed") == history(tmp_path / "full")


@pytest.mark.parametrize("override, words", [
    ("selftrain.threshold=1.5", ["selftrain.threshold", "<= 1"]),
    ("selftrain.rounds=0", ["selftrain.rounds", ">= 1"]),
    ("selftrain.balance=some", ["selftrain.balance", "prior", "equal", "none"]),
    ("selftrain.max_rows=0", ["selftrain.max_rows", ">= 1"]),
    ("selftrain.ruonds=2", ["selftrain.ruonds", "rounds"]),
    ("distill.teacher=runs/teacher", ["data.unlabelled", "distill.teacher"]),
])
def test_bad_selftrain_config_is_refused_in_one_line(override, words):
    with pytest.raises(UserError) as err:
        load_config("r6-qkv-a24", ["data.unlabelled=target.csv", override])
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_unlabelled_file_is_refused_before_anything_is_written(tiny_model_dir, synthetic_csv, tmp_path):
    missing = _config(tiny_model_dir, synthetic_csv, tmp_path / "nope.csv")
    with pytest.raises(UserError, match="nope.csv"):
        train(missing, tmp_path / "a", **quiet)
    pickled = tmp_path / "target.pkl"
    synthetic_frame(n=20, seed=3)[["text"]].to_pickle(pickled)
    with pytest.raises(UserError, match="trust"):
        train(_config(tiny_model_dir, synthetic_csv, pickled), tmp_path / "b", **quiet)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_shift_benchmark_split_strips_the_tags_and_keeps_target_test_apart(tmp_path):
    """benchmarks/shift.py: train/id_test are Reuters rows, target_test/target_pool AP/AFP rows, disjoint,
    no agency tag left, the pool without labels."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("shift_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "shift.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [(f"Title {i} (Reuters) Reuters - body {i}", i % 4) for i in range(40)]
    rows += [(f"CITY (AP) - story {i}", i % 4) for i in range(30)] + [(f"Head {i} (AFP) AFP - text {i}", i % 4) for i in range(20)]
    rows += [("untagged row", 0)]
    source = tmp_path / "ag.csv.gz"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(source, index=False)
    info = bench.build_split(source, tmp_path / "split", id_test=10, target_test=25, seed=0)
    parts = {name: pd.read_csv(f["path"]) for name, f in info["files"].items()}
    assert [len(parts[n]) for n in ("train", "id_test", "target_test", "target_pool")] == [30, 10, 25, 25]
    assert list(parts["target_pool"].columns) == ["text"]
    texts = {n: set(p["text"]) for n, p in parts.items()}
    assert all(t.startswith("Title") for t in texts["train"] | texts["id_test"])
    assert not texts["target_test"] & texts["target_pool"] and not texts["train"] & texts["id_test"]
    assert not any(w in t for t in set().union(*texts.values()) for w in ("Reuters", "(AP)", "AFP"))
    assert "CITY - story 0" in texts["target_test"] | texts["target_pool"]
    assert 0 < info["tag_chars_removed_share"] < 1


def test_shift_benchmark_keeps_the_arms_an_earlier_invocation_added(tmp_path):
    """Runs of an arm added with --arm in an earlier invocation stay in the JSON's arms, so a later
    invocation without that --arm can still write its report (it raised KeyError)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("shift_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "shift.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    previous = {"arms": {"nobalance": ["selftrain.balance=none"], "base": ["stale"]}}
    arms = bench.known_arms(previous, ["wide:model.max_length=128;train.lr=1e-3"])
    assert arms["nobalance"] == ["selftrain.balance=none"]
    assert arms["base"] == [] and arms["wide"] == ["model.max_length=128", "train.lr=1e-3"]


def test_shift_benchmark_scores_as_evaluate_does(tmp_path, trained_run, synthetic_test_csv):
    """benchmarks/shift.py scores each file through the run once; its figures are exactly those of
    evaluate_run, plain and with --adjust-prior's correction (the file's own mix)."""
    import importlib.util
    from pathlib import Path

    from budgetlora.evaluation.metrics import evaluate_run

    spec = importlib.util.spec_from_file_location("shift_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "shift.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run, _ = trained_run
    test = pd.read_csv(synthetic_test_csv)
    shifted = tmp_path / "shifted.csv"
    pd.concat([test[test["label"] == test["label"].iloc[0]]] * 3 + [test]).to_csv(shifted, index=False)
    pool = tmp_path / "pool.csv"
    test[["text"]].to_csv(pool, index=False)
    files = {"id_test": {"path": str(synthetic_test_csv)}, "target_test": {"path": str(shifted)},
             "target_pool": {"path": str(pool)}}
    scores = bench.score_run(run, files)
    plain_id, plain_shift = evaluate_run(run, files["id_test"]["path"]), evaluate_run(run, str(shifted))
    adjusted_id = evaluate_run(run, files["id_test"]["path"], adjust_prior=True)
    adjusted_shift = evaluate_run(run, str(shifted), adjust_prior=True)
    assert scores["id_accuracy"] == plain_id["accuracy"] and scores["shift_accuracy"] == plain_shift["accuracy"]
    assert scores["shift_accuracy_ci95"] == plain_shift["accuracy_ci95"]
    assert scores["shift_macro_f1"] == plain_shift["macro_f1"]
    assert scores["id_accuracy_prior_from_itself"] == round(adjusted_id["accuracy"], 4)
    assert scores["shift_accuracy_prior_from_itself"] == round(adjusted_shift["accuracy"], 4)
    assert scores["source_prior_from"] == "run"
