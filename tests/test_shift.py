"""`budgetlora data shift` / `shift_report`: lengths, vocabulary, over-represented words, the domain
classifier's AUC, a run's class mix and confidence on the target, and the report's Shift section."""

import json
from pathlib import Path

import pandas as pd
import pytest

from budgetlora.cli import main
from budgetlora.data.shift import shift_report
from budgetlora.evaluation.report import write_report

from .conftest import run_cli, synthetic_frame, tiny_config

QUICKSTART = Path(__file__).resolve().parents[1] / "budgetlora" / "assets" / "quickstart" / "train.csv.gz"
SPORTS_WORDS = {"season", "team", "game", "win", "cup", "league", "coach", "victory", "night", "ap", "sunday"}
BUSINESS_WORDS = {"oil", "percent", "market", "stock", "business", "company", "prices", "shares", "million",
                  "reuters", "quarter", "said"}


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    """Business rows (AG News class 2) and sports rows (class 1) of the bundled quickstart sample."""
    frame = pd.read_csv(QUICKSTART)
    folder = tmp_path_factory.mktemp("news")
    paths = {}
    for name, label in (("business", 2), ("sports", 1)):
        paths[name] = folder / f"{name}.csv"
        frame[frame["label"] == label].to_csv(paths[name], index=False)
    return paths


def test_identical_sets_show_no_shift(news, tiny_model_dir, nltk_stopwords):
    r = shift_report(str(news["business"]), str(news["business"]), model=str(tiny_model_dir), max_rows=400,
                     progress=False)
    assert r["train"]["rows"] == r["target"]["rows"] > 400 and r["domain"]["rows"] == {"train": 400, "target": 400}
    assert abs(r["domain"]["auc"] - 0.5) < 0.08 and r["domain"]["ci95"][0] < 0.55
    assert r["domain"]["verdict"] == "no detectable shift"
    v = r["vocabulary"]
    assert v["oov_rate"] == 0 and v["oov_type_rate"] == 0 and v["oov_top"] == [] and v["target_rows_in_train"] == 1
    assert r["tokens"]["ks"]["statistic"] == 0 and r["tokens"]["train"] == r["tokens"]["target"]
    assert r["words"]["target"] == [] and r["words"]["train"] == []  # nothing over-represented either way
    assert "predictions" not in r


def test_a_shifted_target_is_detected_and_its_words_are_named(news, tiny_model_dir, nltk_stopwords):
    from budgetlora.data.clean import english_stopwords

    r = shift_report(str(news["business"]), str(news["sports"]), model=str(tiny_model_dir), max_rows=400,
                     progress=False)
    d = r["domain"]
    assert d["auc"] > 0.7 and d["ci95"][0] > 0.6 and d["ci95"][0] <= d["auc"] <= d["ci95"][1]
    assert d["verdict"] != "no detectable shift" and len(d["examples"]) == 5
    v = r["vocabulary"]
    assert v["oov_rate"] > 0.1 and v["target_rows_in_train"] == 0
    assert {w for w, _ in v["oov_top"]} & SPORTS_WORDS  # target words never seen in business rows
    assert not {w for w, _ in v["oov_top"]} & english_stopwords()
    top_target = [w["word"] for w in r["words"]["target"][:10]]
    top_train = [w["word"] for w in r["words"]["train"][:10]]
    assert len(set(top_target) & SPORTS_WORDS) >= 3, top_target
    assert len(set(top_train) & BUSINESS_WORDS) >= 3, top_train
    assert not set(top_target + top_train) & english_stopwords() and r["words"]["stopwords"] == "nltk"
    assert all(w["target_count"] > w["train_count"] for w in r["words"]["target"])
    assert [w["z"] for w in r["words"]["target"]] == sorted((w["z"] for w in r["words"]["target"]), reverse=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model_dir, synthetic_csv):
    from budgetlora import train

    out = tmp_path_factory.mktemp("shift-runs") / "run"
    train(tiny_config(tiny_model_dir, synthetic_csv, "train.epochs=4"), out, log=lambda message: None)
    return out


def test_with_a_run_class_mix_confidence_saved_json_and_report(small_run, synthetic_csv, tmp_path, capsys,
                                                               nltk_stopwords):
    frame = synthetic_frame(n=200, seed=3)
    target = tmp_path / "target.csv"
    frame[frame["label"] == "sports"].drop(columns="label").to_csv(target, index=False)  # unlabelled, one topic
    out = tmp_path / "shift.json"
    assert main(["data", "shift", "--train", str(synthetic_csv), "--target", str(target), "--run", str(small_run),
                 "--save", "--out", str(out), "--max-rows", "300", "--low-confidence", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "domain classifier AUC" in text and "predicted class mix on target" in text and f"wrote {out}" in text
    r = json.loads(out.read_text())
    assert json.loads((small_run / "shift.json").read_text()) == r
    p = r["predictions"]
    mix = p["class_mix"]
    assert set(mix) == {"money", "sports", "tech", "world"}
    assert sum(m["target"] for m in mix.values()) == pytest.approx(1)
    assert sum(m["prior"] for m in mix.values()) == pytest.approx(1)
    assert all(m["prior"] == pytest.approx(0.25) for m in mix.values())  # the training file's balanced labels
    assert mix["sports"]["target"] == max(m["target"] for m in mix.values())  # the model sees the one topic
    assert p["class_mix_tvd"] > 0.25
    assert sum(m["estimated"] for m in mix.values()) == pytest.approx(1)  # EM from the run's train_label_counts
    assert mix["sports"]["estimated"] == max(m["estimated"] for m in mix.values()) and "estimated (EM)" in text
    for side in ("target", "validation"):
        assert 0 <= p[side]["low_confidence_share"] <= 1 and 0.25 <= p[side]["mean_confidence"] <= 1
    assert p["target"]["rows"] == 50 and 0 <= p["atc"]["estimated_target_accuracy"] <= 1
    assert sum(p["confidence_histogram"]["target"]) == pytest.approx(1)

    unlabelled = tmp_path / "train-unlabelled.csv"
    pd.read_csv(synthetic_csv).drop(columns="label").to_csv(unlabelled, index=False)
    r2 = shift_report(str(unlabelled), str(target), run=small_run, max_rows=100, progress=False)
    assert r2["predictions"]["prior_source"] == "true classes of val_predictions.csv"  # the stratified split's
    assert sum(m["prior"] for m in r2["predictions"]["class_mix"].values()) == pytest.approx(1)

    paths = write_report(small_run)
    md = paths["markdown"].read_text()
    assert "## Shift" in md and "domain classifier AUC" in md and "| sports |" in md
    assert {"shift_lengths.png", "shift_confidence.png"} <= {p.name for p in paths["plots"]}
    assert '<h2 id="shift">Shift</h2>' in paths["html"].read_text()


def test_bad_input_is_one_line_and_exit_2(news, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    pickled = tmp_path / "target.pkl"
    pd.read_csv(news["sports"]).to_pickle(pickled)
    cases = [
        (["--target", str(empty)], "has no rows"),
        (["--target", str(news["sports"]), "--set", "data.text_column=body"], "--set data.text_column=NAME"),
        (["--target", str(pickled)], "--trust-pickle"),
        (["--target", str(news["sports"]), "--save"], "give --run RUN"),
        (["--target", str(news["sports"]), "--run", str(tmp_path / "nope")], "does not exist"),
    ]
    for extra, needle in cases:
        assert main(["data", "shift", "--train", str(news["business"]), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, (extra, err)

    result = run_cli("data", "shift", "--train", tmp_path / "missing.csv", "--target", news["sports"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "missing.csv does not exist" in result.stderr
