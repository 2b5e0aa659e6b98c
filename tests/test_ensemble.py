"""Ensembles: several runs as one predictor whose class probabilities are the mean of theirs, through
predict, evaluate (plain and --adjust-prior) and the CLI; runs of other classes, or one run named
twice, are one line and exit 2."""

import json

import numpy as np
import pandas as pd
import pytest

from budgetlora import evaluate_run, predict_file
from budgetlora.cli import main
from budgetlora.evaluation.metrics import softmax

from .conftest import tiny_config


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame.filter(like="prob_").to_numpy()


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(trained_run, second_run, synthetic_test_csv,
                                                                    tmp_path):
    first, _ = trained_run
    one = predict_file(first, str(synthetic_test_csv), tmp_path / "one.csv", probabilities=True)
    two = predict_file(second_run, str(synthetic_test_csv), tmp_path / "two.csv", probabilities=True)
    both = predict_file([first, second_run], str(synthetic_test_csv), tmp_path / "both.csv", probabilities=True,
                        label_names_column=True)
    mean = (probabilities(one) + probabilities(two)) / 2
    assert not np.allclose(probabilities(one), probabilities(two), atol=1e-3)  # two different members
    np.testing.assert_allclose(probabilities(both), mean, atol=1e-5)
    names = [c.removeprefix("prob_") for c in both.filter(like="prob_").columns]
    assert list(both["LabelName"]) == [names[i] for i in mean.argmax(axis=1)]
    assert list(both["ID"]) == list(one["ID"])


def test_evaluate_scores_the_ensemble_and_names_its_members(trained_run, second_run, synthetic_test_csv, tmp_path):
    first, _ = trained_run
    result = evaluate_run([first, second_run], str(synthetic_test_csv))
    frame = predict_file([first, second_run], str(synthetic_test_csv), tmp_path / "both.csv", label_names_column=True)
    truth = pd.read_csv(synthetic_test_csv)["label"].astype(str)
    assert result["accuracy"] == pytest.approx((frame["LabelName"].astype(str) == truth).mean())
    assert result["ensemble"] == [str(first), str(second_run)]
    assert "ensemble" not in evaluate_run(first, str(synthetic_test_csv))


def test_the_cli_ensembles_several_runs_and_corrects_their_label_shift(trained_run, second_run, synthetic_test_csv,
                                                                       tmp_path, capsys):
    first, _ = trained_run
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(first), str(second_run), "--data", str(synthetic_test_csv), "--adjust-prior",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "ensemble of 2 runs" in capsys.readouterr().out
    counts = [json.loads((run / "metrics.json").read_text())["train_label_counts"] for run in (first, second_run)]
    names = list(result["label_shift"]["training_prior"])
    expected = np.mean([[c[n] / sum(c.values()) for n in names] for c in counts], axis=0)  # the members' mean mix
    np.testing.assert_allclose(list(result["label_shift"]["training_prior"].values()), expected, atol=1e-4)
    assert main(["predict", str(first), str(second_run), "--data", str(synthetic_test_csv), "--out",
                 str(tmp_path / "p.csv"), "--probs"]) == 0
    assert "(ensemble of 2 runs: class probabilities averaged)" in capsys.readouterr().out
    written = pd.read_csv(tmp_path / "p.csv")
    assert len(written) == len(pd.read_csv(synthetic_test_csv))
    np.testing.assert_allclose(probabilities(written).sum(axis=1), 1, atol=1e-3)


def test_runs_of_other_classes_or_one_run_twice_are_one_line(trained_run, tiny_model_dir, synthetic_csv,
                                                             synthetic_test_csv, tmp_path, capsys):
    from budgetlora.training.loop import train

    first, _ = trained_run
    other_csv = tmp_path / "other.csv"
    frame = pd.read_csv(synthetic_csv)
    frame["label"] = "x-" + frame["label"].astype(str)  # the same rows, other class names
    frame.to_csv(other_csv, index=False)
    other = tmp_path / "other"
    train(tiny_config(tiny_model_dir, other_csv, "train.max_steps=2", "train.report=false", "train.tracker=none"),
          other, log=lambda message: None)
    out = tmp_path / "never.csv"
    assert main(["predict", str(first), str(other), "--data", str(synthetic_test_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "same classes in the same order" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["predict", str(first), str(first), "--data", str(synthetic_test_csv), "--out", str(out)]) == 2
    assert "named twice" in capsys.readouterr().err
    assert not out.exists()


def test_softmax_of_ensemble_logits_is_the_mean_probability():
    """The Ensemble's logits are log mean probabilities: what prob_* columns and the label-shift EM read."""
    from budgetlora.deploy.ensemble import Ensemble
    from budgetlora.deploy.predictor import Predictor

    def member(logits, name):
        return Predictor("torch", ["a", "b", "c"], 8, None, lambda ids, batch: logits, name)

    a = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]], dtype=np.float32)
    b = np.array([[-1.0, 1.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    ensemble = Ensemble([member(a, "a"), member(b, "b")])
    ensemble.members[0].encode = ensemble.members[1].encode = lambda texts: [np.zeros(2)] * len(texts)
    got = softmax(ensemble.logits(["x", "y"]))
    np.testing.assert_allclose(got, (softmax(a) + softmax(b)) / 2, atol=1e-6)


# ---------------------------------------------------------------- serving an ensemble


def test_two_seeds_are_served_as_one_ensemble(trained_run, second_run):
    """`budgetlora serve RUN RUN` (create_app on an ensemble): TEI's answers carry the members' mean
    probabilities, /info names each member (no server path), and the ensemble encodes once, so an
    over-long text with truncate=false is a 413 as for one run."""
    from fastapi.testclient import TestClient

    from budgetlora.deploy.predictor import load_predictor
    from budgetlora.deploy.server import ServeSettings, create_app

    first, _ = trained_run
    ensemble = load_predictor([first, second_run])
    members = [load_predictor(first), load_predictor(second_run)]
    texts = ["stock market shares today", "football goal coach", "new chip software release"]
    expected = sum(softmax(m.predict(texts)) for m in members) / 2
    with TestClient(create_app(ensemble, ServeSettings())) as c:
        answer = c.post("/predict", json={"inputs": texts}).json()
        info = c.get("/info").json()
        too_long = c.post("/predict", json={"inputs": "stock " * 200, "truncate": False})
        cut = c.post("/predict", json={"inputs": "stock " * 200})
    for row, probs in zip(answer, expected):
        got = {p["label"]: p["score"] for p in row}
        np.testing.assert_allclose([got[n] for n in ensemble.label_names], probs, atol=1e-5)
    assert [m["source"] for m in info["ensemble"]] == [first.name, second_run.name]
    assert info["source"] == "ensemble of 2" and info["max_input_length"] == members[0].max_length
    assert not any(str(m["model"]).startswith("/") for m in [info, *info["ensemble"]])
    assert too_long.status_code == 413 and too_long.json()["error_type"] == "Validation"
    assert cut.status_code == 200


def test_a_member_that_encoded_without_truncation_still_reads_text_alike(trained_run, second_run):
    """A tokenizer carries its last call's truncation in its serialised form (here none, after a
    truncate=false encoding); seeds of one recipe are one encoding all the same (three quickstart
    seeds were refused by `budgetlora serve` before this was ignored)."""
    from budgetlora.deploy.ensemble import Ensemble
    from budgetlora.deploy.predictor import load_predictor
    from budgetlora.deploy.server import ServeSettings, create_app

    first, _ = trained_run
    used, fresh = load_predictor(first), load_predictor(second_run)
    used.encode(["stock market shares today"], truncate=False)  # as a truncate=false request does
    ensemble = Ensemble([used, fresh])
    assert ensemble.one_encoding
    create_app(ensemble, ServeSettings())  # served, not refused


def test_members_that_read_text_differently_predict_together_but_are_not_served(
        trained_run, tiny_model_dir, synthetic_csv, synthetic_test_csv, tmp_path, capsys):
    """Another max_length: predict and evaluate take the ensemble (each member encodes), the server
    refuses it in one line before binding (its batches are bounded in one encoding's tokens)."""
    from budgetlora.training.loop import train

    first, _ = trained_run
    shorter = tmp_path / "len16"
    train(tiny_config(tiny_model_dir, synthetic_csv, "model.max_length=16", "train.max_steps=4",
                      "train.report=false", "train.tracker=none"), shorter, log=lambda message: None)
    both = predict_file([first, shorter], str(synthetic_test_csv), tmp_path / "both.csv", probabilities=True)
    one = predict_file(first, str(synthetic_test_csv), tmp_path / "one.csv", probabilities=True)
    other = predict_file(shorter, str(synthetic_test_csv), tmp_path / "other.csv", probabilities=True)
    np.testing.assert_allclose(probabilities(both), (probabilities(one) + probabilities(other)) / 2, atol=1e-5)
    assert main(["serve", str(first), str(shorter)]) == 2  # refused before anything binds
    err = capsys.readouterr().err
    assert "read text differently" in err and "max_length 32 vs 16" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_start_up_line_names_members_apart_when_their_folders_share_a_name():
    """Three quickstarts' runs are all `.../run`: named by path, else by folder name (the start-up
    line and the refusal of members that read text differently)."""
    from budgetlora.deploy.server import served_name

    assert served_name(["q1/run", "q2/run"]) == "an ensemble of 2 (q1/run, q2/run)"
    assert served_name(["runs/s1", "runs/s2"]) == "an ensemble of 2 (s1, s2)"
    assert served_name(["runs/s1"]) == "s1"
