"""Label shift: the EM estimate recovers a known class mix, the corrected predictions are the
Bayes predictions under it and beat the uncorrected ones, and `budgetlora predict --adjust-prior`
writes exactly the corrected probabilities of a run that records its training mix."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from budgetlora.cli import main
from budgetlora.evaluation.label_shift import adjust_logits, estimate_target_prior
from budgetlora.evaluation.metrics import evaluate_run, softmax
from budgetlora.evaluation.predict import stream_predictions

SOURCE = np.array([0.4, 0.3, 0.2, 0.1])
TARGET = np.array([0.05, 0.15, 0.3, 0.5])


def gaussian_rows(prior, n, seed):
    """Rows x ~ N(mean of class y, 1) in 1-D with y ~ prior; logits = exact log posteriors under SOURCE."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(prior), size=n, p=prior)
    x = rng.normal(y.astype(float), 1.0)
    log_likelihood = -0.5 * (x[:, None] - np.arange(len(prior))[None, :]) ** 2
    return log_likelihood + np.log(SOURCE), y


def test_em_recovers_the_target_mix_and_the_correction_beats_the_source_posteriors():
    logits, y = gaussian_rows(TARGET, 20_000, seed=0)
    estimate = estimate_target_prior(logits, SOURCE)
    assert np.abs(estimate - TARGET).max() < 0.03, estimate
    before = (logits.argmax(1) == y).mean()
    after = (adjust_logits(logits, SOURCE, estimate).argmax(1) == y).mean()
    assert after > before + 0.05, (before, after)
    oracle = (adjust_logits(logits, SOURCE, TARGET).argmax(1) == y).mean()
    assert abs(after - oracle) < 0.01


def test_no_shift_estimates_the_source_mix_and_leaves_predictions_alone():
    logits, _ = gaussian_rows(SOURCE, 20_000, seed=1)
    estimate = estimate_target_prior(logits, SOURCE)
    assert np.abs(estimate - SOURCE).max() < 0.02
    np.testing.assert_allclose(adjust_logits(logits, SOURCE, SOURCE), logits.astype(np.float32), rtol=0, atol=1e-5)


def test_a_class_absent_from_the_target_is_never_predicted():
    logits = np.log(np.full((3, 4), 0.25))
    adjusted = adjust_logits(logits, SOURCE, np.array([0.0, 0.2, 0.3, 0.5]))
    assert (softmax(adjusted)[:, 0] < 1e-6).all()


def test_predict_adjust_prior_writes_the_corrected_probabilities(trained_run, synthetic_test_csv, tmp_path, capsys):
    trained_run, _ = trained_run
    counts = json.loads((trained_run / "metrics.json").read_text())["train_label_counts"]
    train_rows = json.loads((trained_run / "metrics.json").read_text())["train_rows"]
    assert sum(counts.values()) == train_rows and all(v > 0 for v in counts.values())

    test = pd.read_csv(synthetic_test_csv)
    shifted = tmp_path / "shifted.csv"  # a label-shifted file: two thirds of it one class
    first = test["label"].iloc[0]
    pd.concat([test[test["label"] == first]] * 4 + [test]).to_csv(shifted, index=False)
    plain = stream_predictions(trained_run, str(shifted), tmp_path / "plain.csv", probabilities=True)
    written = stream_predictions(trained_run, str(shifted), tmp_path / "adjusted.csv", probabilities=True,
                                 adjust_prior=True, chunk_rows=64)
    names = list(counts)
    target, source = np.array([written.target_prior[n] for n in names]), np.array([counts[n] for n in names], float)
    assert written.rows == plain.rows and abs(target.sum() - 1) < 1e-3
    p = pd.read_csv(tmp_path / "plain.csv")[[f"prob_{n}" for n in names]].to_numpy()
    q = pd.read_csv(tmp_path / "adjusted.csv")[[f"prob_{n}" for n in names]].to_numpy()
    expected = p * (target / (source / source.sum()))
    np.testing.assert_allclose(q, expected / expected.sum(1, keepdims=True), atol=2e-3)

    assert main(["predict", str(trained_run), "--data", str(shifted), "--out", str(tmp_path / "cli.csv"),
                 "--adjust-prior"]) == 0
    assert "class mix estimated on the file" in capsys.readouterr().out


def test_evaluate_adjust_prior_scores_what_predict_adjust_prior_writes(trained_run, synthetic_test_csv, tmp_path, capsys):
    trained_run, _ = trained_run
    test = pd.read_csv(synthetic_test_csv)
    shifted = tmp_path / "shifted.csv"
    pd.concat([test[test["label"] == test["label"].iloc[0]]] * 4 + [test]).to_csv(shifted, index=False)
    written = stream_predictions(trained_run, str(shifted), tmp_path / "adjusted.csv", label_names_column=True,
                                 adjust_prior=True)
    truth = pd.read_csv(shifted)["label"].astype(str).to_numpy()
    predicted = pd.read_csv(tmp_path / "adjusted.csv")["LabelName"].astype(str).to_numpy()

    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(trained_run), "--data", str(shifted), "--adjust-prior", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == pytest.approx((predicted == truth).mean())
    assert result["label_shift"]["estimated_prior"] == pytest.approx(written.target_prior, abs=1e-3)
    plain = json.loads(json.dumps(evaluate_run(trained_run, str(shifted))))
    assert result["label_shift"]["accuracy_without_correction"] == pytest.approx(plain["accuracy"])
    assert "label_shift" not in plain and "corrected for label shift" in capsys.readouterr().out


def test_a_run_without_its_training_mix_is_one_line(trained_run, synthetic_test_csv, tmp_path, capsys):
    trained_run, _ = trained_run
    old = tmp_path / "old-run"
    shutil.copytree(trained_run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["train_label_counts"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    code = main(["predict", str(old), "--data", str(synthetic_test_csv), "--out", str(tmp_path / "p.csv"), "--adjust-prior"])
    err = capsys.readouterr().err
    assert code == 2 and "train_label_counts" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("bad", [np.array([0.5, 0.5, 0.0, 0.0]), np.array([-1.0, 1.0, 1.0, 1.0])])
def test_a_source_prior_with_an_empty_or_negative_class_is_refused(bad):
    with pytest.raises(ValueError):
        estimate_target_prior(np.zeros((2, 4)), bad)


def test_the_notebook_api_predict_file_takes_every_option_of_predict(trained_run, synthetic_test_csv, tmp_path):
    """budgetlora.predict_file (the Python face of `budgetlora predict`) corrects for label shift
    as --adjust-prior does (it lacked the option) and returns what the file holds."""
    from budgetlora import predict_file

    trained_run, _ = trained_run
    test = pd.read_csv(synthetic_test_csv)
    shifted = tmp_path / "shifted.csv"
    pd.concat([test[test["label"] == test["label"].iloc[0]]] * 4 + [test]).to_csv(shifted, index=False)
    frame = predict_file(trained_run, str(shifted), tmp_path / "adjusted.csv", probabilities=True, adjust_prior=True)
    streamed = stream_predictions(trained_run, str(shifted), tmp_path / "streamed.csv", probabilities=True,
                                  adjust_prior=True)
    pd.testing.assert_frame_equal(frame, pd.read_csv(streamed.out, keep_default_na=False))
    plain = predict_file(trained_run, str(shifted), tmp_path / "plain.csv", probabilities=True)
    assert len(frame) == len(plain) and not np.allclose(frame.filter(like="prob_"), plain.filter(like="prob_"))
